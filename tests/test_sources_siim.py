"""The SIIM-ACR Pneumothorax layout (xray_tfdata/sources/siim.py) and the
challenge's run-length decoding (xray_tfdata/sources/rle.py).

The references here are written independently of the library: a decoder
that numbers the pixels column by column by hand (index -> row, column),
a downscaling of masks by bincount over the source pixels' centres, and the
stand-in's own recount (xray_tfdata/synthetic/siim.py: rows, positives,
mask pixels per ImageId)."""

import collections
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from test_end_to_end import run_tool, run_tools
from xray_tfdata import sources
from xray_tfdata import writer
from xray_tfdata.sources import rle
from xray_tfdata.sources import siim
from xray_tfdata.synthetic import siim as synthetic_siim

pydicom = pytest.importorskip('pydicom')

NUM_IMAGES = 40
SALT = 'siim-test-salt'
SIDE = 64  # size_scale 1/16 of SIIM's 1024 px
STORED = 40  # 64 -> 40: a non-integer ratio


def reference_decode(code, height, width):
  """The challenge's decoding by hand: each run's pixels, numbered column
  by column, put at (index % height, index // height)."""
  mask = np.zeros((height, width), bool)
  if code.strip() == '-1':
    return mask
  numbers = [int(n) for n in code.split()]
  end = 0
  for start, length in zip(numbers[0::2], numbers[1::2]):
    first = end + start
    index = np.arange(first, first + length)
    mask[index % height, index // height] = True
    end = first + length
  return mask


def _source_pixels(source, stored):
  """Per stored pixel along one axis, the source pixels it averages: those
  whose centres fall inside it when shrinking; when enlarging, the one
  under its centre."""
  if stored <= source:
    owner = np.floor((np.arange(source) + 0.5) * stored / source)
    return [np.flatnonzero(owner == i) for i in range(stored)]
  return [np.array([int((i + 0.5) * source / stored)]) for i in range(stored)]


def reference_stored(mask, stored_size):
  """Each stored pixel's share of its source pixels in the mask, times
  255, rounded (the rule rle.stored_mask documents)."""
  rows = _source_pixels(mask.shape[0], stored_size[0])
  columns = _source_pixels(mask.shape[1], stored_size[1])
  return np.array([[np.rint(mask[np.ix_(r, c)].mean() * 255) for c in columns]
                   for r in rows])


def test_decoder_matches_a_hand_decoding():
  # Columns (top to bottom): (0,0,0), (1,1,0), (0,0,1): pixels 3-4 and 8.
  expected = np.array([[0, 1, 0], [0, 1, 0], [0, 0, 1]], bool)
  np.testing.assert_array_equal(rle.union(['3 2 3 1'], 3, 3), expected)
  np.testing.assert_array_equal(rle.union(['-1'], 4, 2), np.zeros((4, 2)))
  rng = np.random.default_rng(0)
  for height, width in [(1, 1), (5, 7), (7, 5), (16, 16), (33, 20)]:
    for density in (0.0, 0.05, 0.5, 0.95, 1.0):
      mask = rng.random((height, width)) < density
      code = synthetic_siim.encode_rle(mask)
      decoded = rle.union([code], height, width)
      np.testing.assert_array_equal(decoded, mask)  # round trip
      np.testing.assert_array_equal(
          decoded, reference_decode(code, height, width))


def test_union_of_several_regions_is_their_or():
  rng = np.random.default_rng(1)
  regions = [rng.random((12, 9)) < 0.2 for _ in range(3)]
  codes = [synthetic_siim.encode_rle(r) for r in regions]
  np.testing.assert_array_equal(rle.union(codes, 12, 9),
                                regions[0] | regions[1] | regions[2])


@pytest.mark.parametrize('code, problem', [
    ('3 2 5', 'not pairs'), ('3 x', "'x'"), ('3 -2', "'-2'"), ('', 'blank'),
    ('4 0', 'length 0'), ('1.5 2', "'1.5'")])
def test_malformed_encoded_pixels_are_named(code, problem):
  with pytest.raises(rle.RleError, match=problem):
    rle.parse(code)


def test_runs_past_the_image_are_refused():
  rle.union(['0 12'], 3, 4)  # exactly the image
  with pytest.raises(rle.RleError, match='runs to pixel 13, past the 3x4'):
    rle.union(['10 3'], 3, 4)
  with pytest.raises(rle.RleError, match='past'):
    rle.union(['0 5 5 3'], 3, 4)  # the second run starts after the first


@pytest.mark.parametrize('source, stored', [((64, 64), (40, 40)),
                                            ((64, 64), (16, 16)),
                                            ((64, 30), (24, 40)),
                                            # centres on the edges
                                            ((61, 64), (32, 40))])
def test_stored_mask_is_each_pixels_share(source, stored):
  rng = np.random.default_rng(2)
  mask = np.zeros(source, bool)
  mask[5:30, 3:20] = True
  mask |= rng.random(source) < 0.1
  np.testing.assert_allclose(rle.stored_mask(mask, stored),
                             reference_stored(mask, stored), atol=1)
  assert not rle.stored_mask(np.zeros(source, bool), stored).any()
  # Small regions anywhere, the corners too (only their box is computed).
  height, width = source
  for top, left, size in [(0, 0, 1), (height - 1, width - 1, 1), (0, 0, 5),
                          (height - 4, 3, 4), (7, width - 6, 6),
                          (11, 13, 9)]:
    small = np.zeros(source, bool)
    small[top:top + size, left:left + size] = True
    np.testing.assert_allclose(rle.stored_mask(small, stored),
                               reference_stored(small, stored), atol=1)


@pytest.fixture(scope='module')
def siim_tree(tmp_path_factory):
  root = tmp_path_factory.mktemp('siim')
  src = str(root / 'src')
  summary = synthetic_siim.make_synthetic_siim(
      src, num_images=NUM_IMAGES, seed=3, size_scale=SIDE / 1024,
      num_workers=1)
  return root, src, summary


@pytest.fixture(scope='module')
def siim_dataset(siim_tree):
  root, src, summary = siim_tree
  data = str(root / 'data')
  info = writer.convert(src, data, resplit=True, image_size=STORED,
                        num_workers=1, progress=False, patient_id_salt=SALT)
  return src, data, summary, info


def _csv_rows(src):
  with open(os.path.join(src, siim.CSV_NAME), encoding='utf-8') as f:
    lines = f.read().splitlines()
  return [line.split(',') for line in lines[1:]]


def _records(data):
  """{hashed ImageId: (image, Pneumothorax target, mask)} of every split,
  through the reader."""
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  builder = pipeline.DatasetBuilder(data)
  out = {}
  for split in ('train', 'val', 'test'):
    for image, label, metadata in builder.as_dataset(
        split, with_metadata=True, with_mask=True,
        cache=False).as_numpy_iterator():
      stem = os.path.basename(metadata['filename'].decode())[:-len('.dcm')]
      out[stem] = (image[..., 0], label, metadata['mask'], split)
  return out


def test_detected_and_refused_without_resplit(siim_tree):
  _, src, _ = siim_tree
  assert sources.detect(src) == 'siim'
  with pytest.raises(sources.SourceError, match='no official split'):
    sources.plan(src, sources.options(src))


def test_conversion_writes_one_example_per_image_with_its_union(siim_dataset):
  src, data, summary, info = siim_dataset
  rows = _csv_rows(src)
  per_image = collections.Counter(image_id for image_id, _ in rows)
  assert summary['rows'] == len(rows) > len(per_image) == NUM_IMAGES
  # Every row and file accounted for: one example per image, none lost.
  assert info['counts'] == {'scanned': NUM_IMAGES, 'written': NUM_IMAGES,
                            'skipped': 0, 'duplicates': 0, 'unlabelled': 0}
  assert (f'{siim.CSV_NAME}: {len(rows)} row(s) for {NUM_IMAGES} image(s)'
          in ' '.join(info['ignored']))
  assert info['label_names'] == ['Pneumothorax']
  assert info['patient_overlap']['patients_in_more_than_one_split'] == 0
  assert sum(s['class_counts']['Pneumothorax'] for s in info['splits'].values()
             ) == summary['positive_images']
  assert info['extra_features'] == ['image/mask']

  records = _records(data)
  assert len(records) == NUM_IMAGES
  codes = collections.defaultdict(list)
  for image_id, code in rows:
    codes[image_id].append(code)
  inside, outside = [], []
  for image_id, image_codes in codes.items():
    image, label, mask, _ = records[writer.hashed_patient_id(image_id, SALT)]
    union = np.zeros((SIDE, SIDE), bool)
    for code in image_codes:
      union |= reference_decode(code, SIDE, SIDE)
    positive = image_codes != ['-1']
    assert label.tolist() == [float(positive)]
    assert int(union.sum()) == summary['mask_pixels'].get(image_id, 0)
    assert mask.shape == (STORED, STORED) and mask.dtype == np.uint8
    np.testing.assert_allclose(mask, reference_stored(union, (STORED, STORED)),
                               atol=1)
    assert mask.any() == positive
    if positive:
      # The stored mask points at the pneumothorax the stand-in drew (dark,
      # flat air) in the stored image.
      inside.append(image[mask >= rle.INSIDE].mean())
      outside.append(image[mask == 0].mean())
  assert max(inside) < 30 < min(outside)


def test_the_mask_is_read_only_when_asked(siim_dataset):
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  _, data, _, _ = siim_dataset
  builder = pipeline.DatasetBuilder(data)
  _, _, metadata = next(iter(builder.as_dataset('test', with_metadata=True)))
  assert 'mask' not in metadata
  with pytest.raises(pipeline.DatasetError, match='with_metadata=True'):
    builder.as_dataset('test', with_mask=True)
  # The same records, read as a dataset whose metadata lists no masks.
  other = pipeline.DatasetBuilder(data)
  other.info = dataclasses.replace(other.info, extra_features=())
  with pytest.raises(pipeline.DatasetError, match='stores no masks'):
    other.as_dataset('test', with_metadata=True, with_mask=True)


def test_nothing_identifies_the_source_in_the_records(siim_dataset):
  src, data, _, _ = siim_dataset
  ids = {image_id for image_id, _ in _csv_rows(src)}
  for path in sorted(os.listdir(os.path.join(src, siim.IMAGES))):
    ids.add(path)  # the study UIDs
  for name in os.listdir(data):
    if '.tfrecord-' in name:
      with open(os.path.join(data, name), 'rb') as f:
        content = f.read()
      assert not [i for i in ids if i.encode() in content]


def _darkness_model():
  """uint8 [STORED, STORED, 1] -> sigmoid(10 * mean darkness - 3), through
  a 1x1 conv of the darkness 1 - x / 255: its Grad-CAM heatmap peaks at the
  image's darkest pixel (the first, row by row, among equals)."""
  import keras  # pylint: disable=g-import-not-at-top
  keras.mixed_precision.set_global_policy('float32')
  inputs = keras.Input((STORED, STORED, 1), dtype='uint8')
  x = keras.layers.Rescaling(-1 / 255, offset=1.0)(inputs)
  x = keras.layers.Conv2D(1, 1, kernel_initializer='ones',
                          bias_initializer='zeros')(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  outputs = keras.layers.Dense(
      1, activation='sigmoid', kernel_initializer=keras.initializers.Constant(
          10.0), bias_initializer=keras.initializers.Constant(-3.0))(x)
  return keras.Model(inputs, outputs)


@pytest.mark.slow  # Grad-CAM through the run evaluator (about 10 s)
def test_pointing_game_on_the_masks(siim_dataset, tmp_path):
  """tools/evaluate's run evaluator plays the pointing game inside the
  stored masks: a model looking at the darkest pixel hits exactly where a
  recount from the records (its darkest pixel inside the mask) says."""
  from xray_tfdata import run_dir  # pylint: disable=g-import-not-at-top
  from xray_tfdata.evaluation import run  # pylint: disable=g-import-not-at-top
  _, data, _, _ = siim_dataset
  model_dir = str(tmp_path / 'run')
  os.makedirs(model_dir)
  _darkness_model().save(os.path.join(model_dir, run_dir.MODEL_FILE))
  with open(os.path.join(model_dir, run_dir.CONFIG_JSON), 'w') as f:
    json.dump({'image_size': STORED, 'batch_size': 8, 'data_dir': data,
               'bootstrap_resamples': 50, 'seed': 0,
               'label_names': ['Pneumothorax'], 'label_policy': 'u_ones'}, f)
  with open(os.path.join(model_dir, run_dir.RESULTS_JSON), 'w') as f:
    json.dump({}, f)
  results = run.evaluate_run(model_dir, data, split='train',
                             out_dir=str(tmp_path / 'out'),
                             num_resamples=50, localization=True)
  found = results['localization']['labels']['Pneumothorax']
  # The recount: each positive's darkest stored pixel, inside its mask?
  expected = [
      mask[np.unravel_index(np.argmin(image), image.shape)] >= rle.INSIDE
      for image, label, mask, split in _records(data).values()
      if split == 'train' and label[0] == 1 and (mask >= rle.INSIDE).any()]
  assert (found['n'], found['hits']) == (len(expected), sum(expected))
  assert found['flat_heatmaps'] == 0 and len(expected) >= 10
  # Both outcomes occur: the probe's darkest pixel is the pneumothorax (12)
  # on some images and the darker edge of the stand-in's film on others.
  assert 0 < found['hits'] < found['n']
  assert results['localization']['regions'] == 'masks'
  assert 'mask' in results['localization']['rule']


REAL_ROWS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data',
                         'siim_train_rle_rows.csv')


def test_real_rows_convert_to_one_example_per_image(tmp_path):
  """20 real rows of the challenge's train-rle.csv (8 images: one with 10
  regions, one with 3, one with 2, three with 1, two without; tests/data/
  README.md), over 1024 px DICOMs drawn here, each region darkened: one
  example per image, its stored mask the union of its rows as the hand
  decoder reads them, and where the drawing is dark."""
  from xray_tfdata.synthetic import tree  # pylint: disable=g-import-not-at-top
  src = str(tmp_path / 'src')
  with open(REAL_ROWS, encoding='utf-8') as f:
    rows = [line.split(',') for line in f.read().splitlines()[1:]]
  codes = collections.defaultdict(list)
  for image_id, code in rows:
    codes[image_id].append(code)
  unions = {}
  for index, (image_id, image_codes) in enumerate(codes.items()):
    union = np.zeros((1024, 1024), bool)
    for code in image_codes:
      union |= reference_decode(code, 1024, 1024)
    unions[image_id] = union
    # A grey of its own: identical pixels would be duplicates.
    pixels = np.full((1024, 1024), 140 + index, np.uint8)
    pixels[union] = 12
    path = os.path.join(src, siim.IMAGES, f'study{index}', f'series{index}',
                        f'{image_id}.dcm')
    os.makedirs(os.path.dirname(path))
    tree.write_dicom(path, pixels, (index,), instance_uid=image_id)
  shutil.copy(REAL_ROWS, os.path.join(src, siim.CSV_NAME))
  data = str(tmp_path / 'data')
  info = writer.convert(src, data, resplit=True, image_size=32,
                        num_workers=1, progress=False, patient_id_salt=SALT,
                        val_fraction=0.25, test_fraction=0.25)
  assert len(rows) == 20 and len(codes) == 8
  assert info['counts']['written'] == info['counts']['scanned'] == 8
  assert sum(s['class_counts']['Pneumothorax']
             for s in info['splits'].values()) == 6
  records = _records(data)
  for image_id, union in unions.items():
    image, label, mask, _ = records[writer.hashed_patient_id(image_id, SALT)]
    assert label.tolist() == [float(union.any())]
    np.testing.assert_allclose(mask, reference_stored(union, (32, 32)),
                               atol=1)
    if union.any():
      assert image[mask >= rle.INSIDE].max() < image[mask == 0].min()


def _copy(siim_tree, tmp_path):
  _, src, _ = siim_tree
  copy = str(tmp_path / 'src')
  shutil.copytree(src, copy)
  return copy


def _write_csv(src, rows):
  with open(os.path.join(src, siim.CSV_NAME), 'w', encoding='utf-8') as f:
    f.write('ImageId, EncodedPixels\n')
    f.writelines(','.join(row) + '\n' for row in rows)


@pytest.mark.parametrize('change, message', [
    (lambda rows: rows + [[rows[0][0] + 'x', '5 abc']],
     r"line {line}: EncodedPixels holds 'abc'"),
    (lambda rows: rows + [[rows[0][0], '0']],
     r'line {line}: EncodedPixels has 1 numbers'),
    (lambda rows: rows + [[rows[0][0]]], r'line {line}: no EncodedPixels'),
    (lambda rows: rows + [['', '-1']], r'line {line}: blank ImageId'),
])
def test_malformed_rows_are_refused_and_nothing_is_written(
    siim_tree, tmp_path, change, message):
  src = _copy(siim_tree, tmp_path)
  rows = change(_csv_rows(src))
  _write_csv(src, rows)
  out = str(tmp_path / 'out')
  # The changed row is the last: its line is the rows' count + the header.
  with pytest.raises(sources.SourceError,
                     match=message.format(line=len(rows) + 1)):
    writer.convert(src, out, resplit=True, image_size=16, num_workers=1,
                   progress=False)
  assert not [n for n in os.listdir(tmp_path) if n.startswith('out')]


def test_rle_past_the_image_and_contradictions_are_refused(siim_tree,
                                                          tmp_path):
  src = _copy(siim_tree, tmp_path)
  rows = _csv_rows(src)
  negative = next(i for i, code in rows if code == '-1')
  positive = next(i for i, code in rows if code != '-1')
  past = rows + [[positive, f'{SIDE * SIDE - 3} 4']]
  _write_csv(src, past)
  options = sources.options(src, resplit=True)
  with pytest.raises(sources.SourceError, match=(
      rf'line {len(past) + 1}: ImageId {positive}: EncodedPixels runs to '
      rf'pixel {SIDE * SIDE + 1:,}, past the {SIDE}x{SIDE} image')):
    sources.plan(src, options)
  _write_csv(src, rows + [[negative, '3 4']])
  with pytest.raises(sources.SourceError, match=(
      f'ImageId {negative} has both -1 .* and a region')):
    sources.plan(src, options)
  with open(os.path.join(src, siim.CSV_NAME), 'w', encoding='utf-8') as f:
    f.write('ImageId,Pixels\n1,-1\n')
  with pytest.raises(sources.SourceError, match="no column 'EncodedPixels'"):
    sources.plan(src, options)


def test_missing_and_unlisted_images_are_accounted(siim_tree, tmp_path):
  src = _copy(siim_tree, tmp_path)
  rows = _csv_rows(src)
  dicoms = sorted(
      os.path.join(root, name) for root, _, names in
      os.walk(os.path.join(src, siim.IMAGES)) for name in names)
  gone = dicoms[0]
  gone_id = os.path.basename(gone)[:-len('.dcm')]
  os.remove(gone)
  stray = os.path.join(os.path.dirname(dicoms[1]), '1.2.3.dcm')
  shutil.copy(dicoms[1], stray)
  twin = os.path.join(src, siim.IMAGES, 'copy',
                      os.path.basename(dicoms[2]))
  os.makedirs(os.path.dirname(twin))
  shutil.copy(dicoms[2], twin)
  plan = sources.plan(src, sources.options(src, resplit=True))
  written = sum(len(files) for files in plan.splits.values())
  assert plan.num_scanned == NUM_IMAGES + 1  # the twin's row
  assert written == NUM_IMAGES - 1
  assert [s['reason'] for s in plan.skipped] == ['missing image']
  assert gone_id in plan.skipped[0]['path']
  assert [d['same'] for d in plan.duplicates] == ['file name']
  assert [u['path'].rsplit('/', 1)[1] for u in plan.unlabelled] == [
      '1.2.3.dcm']
  assert written + len(plan.skipped) + len(plan.duplicates) == (
      plan.num_scanned)
  assert len({i for i, _ in rows}) == NUM_IMAGES


@pytest.mark.slow  # trains
def test_tools_convert_and_train_on_siim(tmp_path):
  src, data = str(tmp_path / 'siim'), str(tmp_path / 'data')
  model_dir = str(tmp_path / 'model')
  # make_synthetic runs as a tool in test_end_to_end.
  synthetic_siim.make_synthetic_siim(src, num_images=64, size_scale=0.0625,
                                     seed=2, num_workers=1)
  converted = run_tool('make_tfrecords', f'--src_dir={src}',
                       f'--out_dir={data}', '--image_size=32', '--resplit',
                       '--num_shards=2', '--noprogress')
  assert converted.returncode == 0, converted.stderr
  with open(os.path.join(data, 'xray_info.json')) as f:
    info = json.load(f)
  assert info['layout'] == 'siim' and info['counts']['written'] == 64
  trained = run_tool(
      'train', f'--data_dir={data}', f'--model_dir={model_dir}',
      '--image_size=32', '--batch_size=8', '--epochs=1', '--weights=none',
      '--backbone=mini_vgg', '--dense_units=8', '--augmentation=none',
      '--bootstrap_resamples=100', '--verbose=0', '--policy=float32')
  assert trained.returncode == 0, trained.stderr[-3000:]
  with open(os.path.join(model_dir, 'config.json')) as f:
    assert json.load(f)['label_names'] == ['Pneumothorax']
  with open(os.path.join(model_dir, 'results.json')) as f:
    assert 'Pneumothorax' in f.read()
  dicoms = sorted(os.path.join(root, name) for root, _, names in os.walk(
      os.path.join(src, siim.IMAGES)) for name in names)[:3]
  # Both read the finished run: at once.
  done = run_tools({
      'predict': ('predict', f'--model_dir={model_dir}', *dicoms),
      'evaluate': ('evaluate', f'--model_dir={model_dir}',
                   f'--data_dir={data}', '--localization',
                   '--bootstrap_resamples=50')})
  predicted, evaluated = done['predict'], done['evaluate']
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert 'localization (Pneumothorax): pointing-game hit rate' in (
      evaluated.stdout)
  assert 'positive images with masks' in evaluated.stdout
  header, *lines = predicted.stdout.strip().splitlines()
  assert header.split('\t')[:2] == ['path', 'Pneumothorax']
  probabilities = [float(line.split('\t')[1]) for line in lines]
  assert len(probabilities) == 3
  assert all(0 <= p <= 1 for p in probabilities)
