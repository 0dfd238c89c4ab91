"""The RSNA Pneumonia Detection layout: labels from its CSV, one example per
image, unmatched rows and images reported; and one run of the real tools on
a synthetic RSNA tree of DICOMs."""

import csv
import json
import os

import numpy as np
import pydicom
import pytest

from conftest import REPO_ROOT  # pylint: disable=unused-import
from test_end_to_end import run_tool
from xray_tfdata import sources
from xray_tfdata.sources import rsna
from xray_tfdata.synthetic import kermany as synthetic


@pytest.fixture(scope='module')
def rsna_tree(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('rsna') / 'src')
  synthetic.make_synthetic_kermany(root, num_images=40, layout='rsna',
                                   size_scale=1 / 32, num_workers=1)
  return root


def _label_rows(root):
  with open(os.path.join(root, rsna.LABELS), newline='') as f:
    return list(csv.DictReader(f))


def test_synthetic_tree_looks_like_rsna(rsna_tree):
  rows = _label_rows(rsna_tree)
  images = os.listdir(os.path.join(rsna_tree, rsna.IMAGES))
  by_patient = {}
  for row in rows:
    by_patient.setdefault(row['patientId'], []).append(row)

  assert len(images) == 40 and all(i.endswith('.dcm') for i in images)
  assert {os.path.splitext(i)[0] for i in images} == set(by_patient)
  assert any(len(r) > 1 for r in by_patient.values())  # several boxes
  for patient_rows in by_patient.values():
    if patient_rows[0]['Target'] == '0':
      assert len(patient_rows) == 1 and patient_rows[0]['x'] == ''
    else:
      assert all(float(r['width']) > 0 for r in patient_rows)
  photometric = {str(pydicom.dcmread(
      os.path.join(rsna_tree, rsna.IMAGES, i),
      stop_before_pixels=True).PhotometricInterpretation) for i in images}
  assert photometric == {'MONOCHROME1', 'MONOCHROME2'}


def test_scan_labels_each_image_once_and_detects_the_layout(rsna_tree):
  rows = _label_rows(rsna_tree)
  targets = {r['patientId']: int(r['Target']) for r in rows}

  assert sources.detect(rsna_tree) == 'rsna'
  found = rsna.scan(rsna_tree)

  assert found.layout == 'rsna'
  assert found.class_names == ('NORMAL', 'PNEUMONIA')
  assert len(found.files) == 40 < len(rows)  # box rows deduplicated
  for f in found.files:
    assert f.label == targets[f.patient_id]
    assert f.class_name == ('NORMAL', 'PNEUMONIA')[f.label]
    assert f.path == f'{rsna.IMAGES}/{f.patient_id}.dcm'
  assert not found.skipped and not found.ignored


def test_unmatched_images_and_rows_are_reported(rsna_tree, tmp_path):
  root = str(tmp_path / 'src')
  os.makedirs(os.path.join(root, rsna.IMAGES))
  rows = _label_rows(rsna_tree)
  first, second = rows[0]['patientId'], rows[-1]['patientId']
  for name in os.listdir(os.path.join(rsna_tree, rsna.IMAGES)):
    if not name.startswith(second):  # an image gone: its rows are unmatched
      os.link(os.path.join(rsna_tree, rsna.IMAGES, name),
              os.path.join(root, rsna.IMAGES, name))
  with open(os.path.join(root, rsna.LABELS), 'w') as f:
    f.write('patientId,x,y,width,height,Target\n')
    f.writelines(f'{r["patientId"]},{r["x"]},{r["y"]},{r["width"]},'
                 f'{r["height"]},{r["Target"]}\n'
                 for r in rows if r['patientId'] != first)  # a row gone

  found = rsna.scan(root)

  assert [s['path'] for s in found.skipped] == [
      f'{rsna.IMAGES}/{first}.dcm']
  assert 'no row in stage_2_train_labels.csv' in found.skipped[0]['reason']
  assert len(found.ignored) == 1 and second in found.ignored[0]
  assert '1 label row(s) without an image' in found.ignored[0]
  plan = rsna.plan(root, rsna.Options(
      resplit=True, val_counts={'NORMAL': 1, 'PNEUMONIA': 2},
      test_counts={'NORMAL': 1, 'PNEUMONIA': 2}))
  assert plan.num_scanned == 39  # 38 labelled + 1 skipped


@pytest.mark.parametrize('content, message', [
    ('patientId,Target\na,2\n', 'Target must be 0 or 1'),
    ('patientId,Target\na,0\na,1\n', 'rows with Target 0 and 1'),
    ('id,label\na,0\n', "has no column 'patientId', 'Target'"),
])
def test_bad_label_files_are_refused(tmp_path, content, message):
  os.makedirs(tmp_path / rsna.IMAGES)
  (tmp_path / rsna.LABELS).write_text(content)
  with pytest.raises(sources.SourceError, match=message):
    rsna.scan(str(tmp_path))


def test_rsna_needs_a_resplit(rsna_tree):
  with pytest.raises(sources.SourceError, match='add --resplit'):
    rsna.plan(rsna_tree, rsna.Options())


@pytest.mark.slow
def test_rsna_dicoms_convert_train_and_predict_through_the_tools(tmp_path):
  src, data = str(tmp_path / 'rsna'), str(tmp_path / 'data')
  model_dir = str(tmp_path / 'model')
  made = run_tool('make_synthetic', f'--out_dir={src}', '--num_images=48',
                  '--layout=rsna', '--size_scale=0.0625', '--seed=2')
  assert made.returncode == 0, made.stderr
  converted = run_tool(
      'make_tfrecords', f'--src_dir={src}', f'--out_dir={data}',
      '--image_size=32', '--resplit', '--val_counts=NORMAL:3,PNEUMONIA:6',
      '--test_counts=NORMAL:3,PNEUMONIA:6', '--num_shards=2', '--noprogress',
      '--voi=full', '--patient_id_salt=tool-secret')
  assert converted.returncode == 0, converted.stderr
  with open(os.path.join(data, 'xray_info.json')) as f:
    info = json.load(f)
  assert info['layout'] == 'rsna' and info['dicom']['voi'] == 'full'
  assert info['arguments']['patient_id_salt'] == 'given'
  for name in os.listdir(data):
    with open(os.path.join(data, name), 'rb') as f:
      assert b'tool-secret' not in f.read()
  trained = run_tool(
      'train', f'--data_dir={data}', f'--model_dir={model_dir}',
      '--image_size=32', '--batch_size=8', '--epochs=1', '--weights=none',
      '--backbone=mini_vgg', '--dense_units=8', '--augmentation=none',
      '--bootstrap_resamples=100', '--verbose=0', '--policy=float32')
  assert trained.returncode == 0, trained.stderr[-3000:]
  with open(os.path.join(model_dir, 'results.json')) as f:
    test = json.load(f)['labels']['PNEUMONIA']['splits']['test']
  point = test['operating_points']['fixed_0.5']
  assert point['tp'] + point['fn'] == test['positives']

  images = sorted(os.path.join(src, rsna.IMAGES, n)
                  for n in os.listdir(os.path.join(src, rsna.IMAGES)))
  predicted = run_tool('predict', f'--model_dir={model_dir}', *images[:3])
  assert predicted.returncode == 0, predicted.stderr
  header, *lines = predicted.stdout.strip().splitlines()
  assert header.split('\t')[:2] == ['path', 'PNEUMONIA']
  probabilities = [float(l.split('\t')[1]) for l in lines]
  assert len(probabilities) == 3
  assert np.all((0 <= np.array(probabilities)) & (np.array(probabilities) <= 1))


def test_scan_keeps_every_box_and_the_detailed_class(rsna_tree):
  boxes, classes = {}, {}
  for row in _label_rows(rsna_tree):
    if row['Target'] == '1':
      boxes.setdefault(row['patientId'], []).append(
          tuple(float(row[k]) for k in ('x', 'y', 'width', 'height')))
  with open(os.path.join(rsna_tree, rsna.CLASS_INFO),
            newline='') as f:
    for row in csv.DictReader(f):
      classes[row['patientId']] = row['class']

  found = rsna.scan(rsna_tree)

  for f in found.files:
    assert f.boxes == tuple(boxes.get(f.patient_id, ()))
    assert f.detailed_class == classes[f.patient_id]
    assert (f.detailed_class == 'Lung Opacity') == (f.label == 1)


def test_a_target_1_row_without_a_box_is_refused(tmp_path):
  os.makedirs(tmp_path / rsna.IMAGES)
  (tmp_path / rsna.LABELS).write_text(
      'patientId,x,y,width,height,Target\na,1,2,,4,1\n')
  with pytest.raises(sources.SourceError, match='Target 1 needs a box'):
    rsna.scan(str(tmp_path))


@pytest.fixture(scope='module')
def rsna_converted(rsna_tree, tmp_path_factory):
  from xray_tfdata import writer  # pylint: disable=g-import-not-at-top
  out = str(tmp_path_factory.mktemp('rsna_out') / 'rsna')
  counts = {'NORMAL': 2, 'PNEUMONIA': 2}
  # Not square, and not the source's aspect: boxes scale per axis.
  info = writer.convert(rsna_tree, out, image_size=(8, 12), resplit=True,
                        val_counts=counts, test_counts=counts, num_shards=1,
                        num_workers=1, progress=False, name='rsna',
                        voi='window', patient_id_salt='test-salt')
  return out, info


def _examples(out, info):
  """Every record of every split as {key: list of values}."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  examples = []
  for entry in info['splits'].values():
    for shard in entry['shards']:
      for record in tf.data.TFRecordDataset(
          os.path.join(out, shard['filename'])):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        examples.append({
            k: list(v.bytes_list.value or v.float_list.value or
                    v.int64_list.value) for k, v in feature.items()})
  return examples


def test_rsna_records_carry_boxes_in_stored_pixels_and_hashed_ids(
    rsna_tree, rsna_converted):
  from xray_tfdata import schema  # pylint: disable=g-import-not-at-top
  from xray_tfdata import writer  # pylint: disable=g-import-not-at-top
  out, info = rsna_converted
  found = {writer.hashed_patient_id(f.patient_id, 'test-salt'): f
           for f in rsna.scan(rsna_tree).files}

  examples = _examples(out, info)

  # make_synthetic's two duplicates are re-encoded copies: found by pixels.
  assert [d['same'] for d in info['duplicates']] == ['pixels', 'pixels']
  assert len(examples) == 40 - 2
  assert info['extra_features'] == [schema.DETAILED_CLASS, *schema.BOX_KEYS]
  assert info['dicom']['voi'] == 'window'
  assert info['dicom']['packages']['pydicom'] == pydicom.__version__
  assert 'test-salt' not in json.dumps(info)
  for example in examples:
    key = example[schema.PATIENT_ID][0].decode()
    source = found[key]  # the key is the salted hash of the patientId
    assert example[schema.FILENAME] == [
        f'{rsna.IMAGES}/{key}.dcm'.encode()]
    assert example[schema.DETAILED_CLASS] == [source.detailed_class.encode()]
    # The stored image is the 32 x 32 source squashed to 8 x 12.
    assert example[schema.ORIGINAL_HEIGHT] == [32]
    assert example[schema.ORIGINAL_WIDTH] == [32]
    stored = np.array([example[k] for k in schema.BOX_KEYS]).T.reshape(-1, 4)
    expected = np.array(source.boxes).reshape(-1, 4) * [12 / 32, 8 / 32,
                                                         12 / 32, 8 / 32]
    np.testing.assert_allclose(stored, expected, rtol=1e-6)
  # No patientId anywhere in the shards.
  shards = b''.join(open(os.path.join(out, s['filename']), 'rb').read()
                    for entry in info['splits'].values()
                    for s in entry['shards'])
  assert not any(f.patient_id.encode() in shards for f in found.values())


def test_rsna_dataset_reads_with_our_reader_and_tfds(rsna_converted):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  from xray_tfdata import schema  # pylint: disable=g-import-not-at-top
  out, info = rsna_converted

  reader = pipeline.DatasetBuilder(out)
  assert reader.verify() == info['counts']['written']  # extras parse too
  ours = list(reader.as_dataset('train').as_numpy_iterator())
  builder = tfds.builder_from_directory(out)
  theirs = list(tfds.as_numpy(builder.as_dataset(split='train',
                                                 shuffle_files=False)))

  assert len(ours) == len(theirs) == info['splits']['train']['num_examples']
  np.testing.assert_array_equal(np.stack([x for x, _ in ours]),
                                np.stack([t['image'] for t in theirs]))
  for example in theirs:
    boxes = [example[k] for k in schema.BOX_KEYS]
    assert len({len(b) for b in boxes}) == 1
    assert (len(boxes[0]) > 0) == (example['label'] == 1)  # none for Target 0
    assert example[schema.DETAILED_CLASS] in (
        b'Normal', b'No Lung Opacity / Not Normal', b'Lung Opacity')


def test_random_salt_is_discarded_and_differs_per_conversion(rsna_tree,
                                                             tmp_path):
  from xray_tfdata import schema  # pylint: disable=g-import-not-at-top
  from xray_tfdata import writer  # pylint: disable=g-import-not-at-top
  counts = {'NORMAL': 2, 'PNEUMONIA': 2}
  keys = []
  for run in range(2):
    out = str(tmp_path / f'out{run}')
    info = writer.convert(rsna_tree, out, image_size=4, resplit=True,
                          val_counts=counts, test_counts=counts,
                          num_shards=1, num_workers=1, progress=False)
    assert 'random' in info['patient_id']
    assert sorted(os.listdir(out)) == sorted(
        [s['filename'] for e in info['splits'].values() for s in e['shards']]
        + ['dataset_info.json', 'features.json', 'label.labels.txt',
           schema.INFO_FILENAME])
    keys.append({e[schema.PATIENT_ID][0] for e in _examples(out, info)})
  assert len(keys[0]) == 40 - 2 and not keys[0] & keys[1]
