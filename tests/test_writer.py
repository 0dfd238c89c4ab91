"""writer.convert: shards, dataset_info.json, bad files, safety, determinism."""

import collections
import functools
import io
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from records import shard_bytes
from xray_tfdata import atomic
from xray_tfdata import dataset_info
from xray_tfdata import imaging
from xray_tfdata import schema
from xray_tfdata import sources
from xray_tfdata.synthetic import kermany as synthetic
from xray_tfdata import writer

STORED = (16, 12)  # (height, width): not square, to catch swapped axes
BAD_FILES = {  # path -> expected words in the reason
    'train/NORMAL/empty.jpeg': 'empty file',
    'train/NORMAL/notes.txt': 'not an image',
    'train/PNEUMONIA/truncated.jpeg': 'truncated',
    'test/NORMAL/corrupt.png': 'broken data stream',
}


def _write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)


def _save(path, image, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path, **kwargs)


def _gradient16(height=48, width=40):
  y, x = np.mgrid[0:height, 0:width]
  return ((x * 1600 + y * 60) % 65536).astype(np.uint16)


def _make_tree(root):
  """A 40-image synthetic Kaggle tree plus odd modes, bad files and litter."""
  synthetic.make_synthetic_kermany(root, num_images=40, size_scale=0.05,
                                   num_workers=1)
  rng = np.random.default_rng(0)
  _save(os.path.join(root, 'val/NORMAL/IM-0900-0001.png'),
        Image.fromarray(_gradient16()))  # 16-bit PNG
  _save(os.path.join(root, 'test/NORMAL/IM-0901-0001.png'),
        Image.fromarray(rng.integers(0, 256, (30, 36), np.uint8)).convert('P'))
  rgba = rng.integers(0, 256, (30, 36, 4), np.uint8)
  _save(os.path.join(root, 'test/PNEUMONIA/person900_virus_1.png'),
        Image.fromarray(rgba, 'RGBA'))
  _write(os.path.join(root, 'train/NORMAL/empty.jpeg'), b'')
  _write(os.path.join(root, 'train/NORMAL/notes.txt'), b'not an image\n')
  pneumonia = os.path.join(root, 'train/PNEUMONIA')
  with open(os.path.join(pneumonia, sorted(os.listdir(pneumonia))[0]),
            'rb') as f:
    jpeg = f.read()
  _write(os.path.join(root, 'train/PNEUMONIA/truncated.jpeg'),
         jpeg[:len(jpeg) // 2])
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (30, 36), np.uint8)).save(buffer, 'PNG')
  png = buffer.getvalue()
  _write(os.path.join(root, 'test/NORMAL/corrupt.png'),
         png[:100] + b'\0\0\0\0' + png[104:])
  _write(os.path.join(root, '__MACOSX/train/._x.jpeg'), b'\0\5\x16\7')
  _write(os.path.join(root, 'train/NORMAL/.DS_Store'), b'litter')
  _write(os.path.join(root, 'train/NORMAL/._IM-0001-0001.jpeg'), b'\0\5')


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('src') / 'chest_xray')
  _make_tree(root)
  return root


@pytest.fixture(scope='module')
def converted(tree, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('out') / 'kermany')
  info = writer.convert(tree, out, image_size=STORED, num_workers=1,
                        progress=False)
  return out, info


def _records(out_dir, info, split):
  """Parsed records of a split, in shard order, checked against the info."""
  records = []
  for shard in info['splits'][split]['shards']:
    path = os.path.join(out_dir, shard['filename'])
    assert os.path.getsize(path) == shard['num_bytes']
    parsed = [schema.parse(r) for r in tf.data.TFRecordDataset(path)]
    assert len(parsed) == shard['num_examples']
    records += parsed
  return records


def _reference(path, size):
  """What the source decodes to, by PIL at full resolution (no draft)."""
  with Image.open(path) as image:
    if image.mode in ('I;16', 'I'):
      eight = (np.asarray(image).astype(np.float64) / 257).round()
      image = Image.fromarray(eight.astype(np.uint8))
    return np.asarray(image.convert('L').resize(size[::-1], Image.BILINEAR),
                      np.float64)


def test_round_trip(tree, converted):
  out, info = converted
  assert info['image'] == {'height': 16, 'width': 12, 'channels': 1,
                           'encoding': 'png', 'dtype': 'uint8',
                           'resize': 'squash', 'resize_filter': 'bilinear'}
  assert info['class_names'] == ['NORMAL', 'PNEUMONIA']
  seen = set()
  for split in ('train', 'val', 'test'):
    records = _records(out, info, split)
    labels = []
    for r in records:
      filename = r[schema.FILENAME].numpy().decode()
      source = os.path.join(tree, filename)
      assert filename.startswith(f'{split}/') and os.path.isfile(source)
      class_name = filename.split('/')[1]
      label = int(r[schema.LABEL])
      assert label == ['NORMAL', 'PNEUMONIA'].index(class_name)
      assert r[schema.CLASS_TEXT].numpy().decode() == class_name
      assert r[schema.PATIENT_ID].numpy().decode() == sources.patient_id(
          filename)
      assert r[schema.FORMAT].numpy() == b'png'
      assert (int(r[schema.HEIGHT]), int(r[schema.WIDTH])) == STORED
      with Image.open(source) as image:
        assert (int(r[schema.ORIGINAL_WIDTH]),
                int(r[schema.ORIGINAL_HEIGHT])) == image.size
      pixels = tf.io.decode_png(r[schema.ENCODED]).numpy()
      assert pixels.shape == STORED + (1,) and pixels.dtype == np.uint8
      difference = np.abs(pixels[..., 0] - _reference(source, STORED))
      # JPEGs decode at half scale (draft) before the resize: close, not equal.
      assert difference.mean() < 3 and difference.max() < 48, filename
      labels.append(label)
      seen.add(filename)
    counts = info['splits'][split]['class_counts']
    assert counts == {'NORMAL': labels.count(0), 'PNEUMONIA': labels.count(1)}
    assert info['splits'][split]['num_examples'] == len(records)
  assert len(seen) == info['counts']['written']


def test_every_scanned_file_is_accounted_for(tree, converted):
  _, info = converted
  counts = info['counts']
  assert counts['scanned'] == 40 + 3 + len(BAD_FILES)
  assert counts['written'] + counts['skipped'] + counts['duplicates'] == (
      counts['scanned'])
  assert counts['duplicates'] == len(info['duplicates']) == 2
  assert any(d['kept'].startswith('test/') and d['dropped'].startswith('train/')
             for d in info['duplicates'])  # evaluation sets stay whole
  skipped = {s['path']: s['reason'] for s in info['skipped']}
  assert set(skipped) == set(BAD_FILES)
  for path, words in BAD_FILES.items():
    assert words in skipped[path], skipped[path]
  assert '__MACOSX/' in info['ignored']
  assert 'train/NORMAL/.DS_Store' in info['ignored']
  assert sum(s['num_examples'] for s in info['splits'].values()) == (
      counts['written'])
  assert info['layout'] == 'kaggle'
  assert info['arguments']['seed'] == 0
  assert info['arguments']['image_size'] == [16, 12]
  assert info['format_version'] == schema.FORMAT_VERSION
  with open(os.path.join(converted[0], schema.INFO_FILENAME)) as f:
    assert json.load(f) == info


def test_shards_are_named_even_and_mixed(converted):
  out, info = converted
  assert sorted(os.listdir(out)) == sorted(
      [schema.INFO_FILENAME, 'dataset_info.json', 'features.json',
       'label.labels.txt'] +
      [s['filename'] for split in info['splits'].values()
       for s in split['shards']])
  train = info['splits']['train']['shards']
  assert len(train) == 8
  for i, shard in enumerate(train):
    assert shard['filename'] == schema.shard_filename('chest_xray', 'train', i, 8)
  # Planned slices are even; a skipped file leaves its shard one short.
  sizes = [s['num_examples'] for s in train]
  assert max(sizes) - min(sizes) <= 1 + len(BAD_FILES)
  filenames = [r[schema.FILENAME].numpy().decode()
               for r in _records(out, info, 'train')]
  assert filenames != sorted(filenames)  # shuffled within the split


def test_tfds_reads_the_converted_dataset(converted):
  """TFDS' own client: builder_from_directory, split slicing, as_supervised."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  out, info = converted
  builder = tfds.builder_from_directory(out)
  assert builder.info.features['label'].names == info['class_names']
  # Kermany keeps the base schema: RSNA's extras are not declared.
  assert 'extra_features' not in info and 'dicom' not in info
  assert not set(schema.RSNA_FEATURES) & set(builder.info.features)
  assert builder.info.supervised_keys == ('image', 'label')
  assert {split: builder.info.splits[split].num_examples
          for split in info['splits']} == {
              split: entry['num_examples']
              for split, entry in info['splits'].items()}
  n = info['splits']['train']['num_examples']
  ds = builder.as_dataset(split='train[:80%]', as_supervised=True,
                          batch_size=4, shuffle_files=False)
  images, labels = (np.concatenate(x) for x in zip(*tfds.as_numpy(ds)))
  assert len(labels) == round(n * 0.8)
  assert images.shape[1:] == (16, 12, 1) and images.dtype == np.uint8
  # The same examples, in the same order, as our own reader gives.
  ours = list(pipeline.DatasetBuilder(out).as_dataset('train')
              .take(len(labels)).as_numpy_iterator())
  np.testing.assert_array_equal(images, np.stack([x for x, _ in ours]))
  # TFDS' `label` key is the class id; ours is the one target [1] of it.
  np.testing.assert_array_equal(labels, [y[0] for _, y in ours])


def test_plan_shards_counts_and_boundaries():
  files = [sources.SourceFile(f'train/A/{i}.png', 'train', 'A', 0, str(i), 1)
           for i in range(30001)]
  plan = sources.Plan('/src', 'pool', ('A',), {'train': files[:5000],
                                               'val': files[:5],
                                               'test': files}, [], [], 0)
  shards = writer.plan_shards(plan, 'x', None, 0, (224, 224))
  per_split = {}
  for split, _, chunk in shards:
    per_split.setdefault(split, []).append(len(chunk))
  assert len(per_split['train']) == 8  # at least 8
  assert len(per_split['val']) == 5  # never an empty shard
  # 30001 * 224 * 224 bytes is 11.2 x 128 MiB.
  assert len(per_split['test']) == 12
  for sizes in per_split.values():
    assert max(sizes) - min(sizes) <= 1
  test_paths = [f.path for split, _, chunk in shards if split == 'test'
                for f in chunk]
  assert sorted(test_paths) == sorted(f.path for f in files)
  fixed = writer.plan_shards(plan, 'x', 3, 0, (224, 224))
  assert [name for _, name, _ in fixed][:3] == [
      'x-train.tfrecord-00000-of-00003', 'x-train.tfrecord-00001-of-00003',
      'x-train.tfrecord-00002-of-00003']


def test_deterministic_across_runs_and_worker_counts(tree, converted,
                                                      tmp_path):
  out, info = converted
  again = writer.convert(tree, str(tmp_path / 'again'), image_size=STORED,
                         num_workers=2, progress=False)
  assert (shard_bytes(str(tmp_path / 'again'), metadata=True) ==
          shard_bytes(out, metadata=True))
  varying = ('created', 'elapsed_seconds', 'decode_write_seconds',
             'images_per_second', 'num_workers')
  assert ({k: v for k, v in again.items() if k not in varying} ==
          {k: v for k, v in info.items() if k not in varying})
  other_seed = writer.convert(tree, str(tmp_path / 'seed1'), seed=1,
                              image_size=STORED, num_workers=1, progress=False)
  assert other_seed['counts'] == info['counts']
  assert (shard_bytes(str(tmp_path / 'seed1'), metadata=True) !=
          shard_bytes(out, metadata=True))


def test_refuses_to_overwrite_without_flag(tree, tmp_path):
  out = str(tmp_path / 'data')
  writer.convert(tree, out, image_size=8, num_workers=1, progress=False)
  before = shard_bytes(out, metadata=True)
  with pytest.raises(writer.OutputError, match='--overwrite'):
    writer.convert(tree, out, image_size=10, num_workers=1, progress=False)
  assert shard_bytes(out, metadata=True) == before
  info = writer.convert(tree, out, image_size=10, num_workers=1,
                        overwrite=True, progress=False)
  assert info['image']['height'] == 10
  assert dataset_info.load_info(out).raw['image']['height'] == 10
  assert sorted(os.listdir(tmp_path)) == ['data']  # no .partial, no .old


def test_never_deletes_a_folder_it_did_not_write(tree, tmp_path):
  out = tmp_path / 'mine'
  out.mkdir()
  (out / 'thesis.tex').write_text('precious')
  with pytest.raises(writer.OutputError, match='not empty'):
    writer.convert(tree, str(out), overwrite=True, num_workers=1,
                   progress=False)
  assert os.listdir(out) == ['thesis.tex']
  empty = tmp_path / 'empty'
  empty.mkdir()
  writer.convert(tree, str(empty), image_size=8, num_workers=1, progress=False)
  assert (empty / schema.INFO_FILENAME).exists()


_HOLD_LOCK = """
import sys, time
from xray_tfdata import atomic
with atomic.exclusive(sys.argv[1], 'a test'):
  print('locked', flush=True)
  time.sleep(600)
"""


def test_a_second_converter_on_one_out_dir_fails_at_once(tree, tmp_path):
  """A converter that holds out_dir (a real process) makes another fail at
  once, writing nothing; killed with SIGKILL, it blocks no rerun."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / 'data')
  holder = subprocess.Popen(
      [sys.executable, '-c', _HOLD_LOCK, out + writer.LOCK_SUFFIX],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    with pytest.raises(atomic.LockedError,
                       match=rf'another run \(pid {holder.pid}\) is writing '
                       rf'out_dir {out}; wait'):
      writer.convert(tree, out, image_size=8, num_workers=1, progress=False)
    assert sorted(os.listdir(tmp_path)) == ['data.lock']  # the holder's
  finally:
    holder.kill()
    holder.wait()
  writer.convert(tree, out, image_size=8, num_workers=1, progress=False)
  assert sorted(os.listdir(tmp_path)) == ['data']


def test_workers_are_limited_to_the_free_memory(tree, tmp_path, monkeypatch,
                                                capsys):
  per_worker = writer.worker_memory_bytes((8, 8))
  monkeypatch.setattr(writer, '_available_memory_bytes',
                      lambda: int(1.5 * per_worker))
  info = writer.convert(tree, str(tmp_path / 'data'), image_size=8,
                        num_workers=4, progress=True)
  assert info['num_workers'] == 1
  assert 'using 1 decoding workers, not 4' in capsys.readouterr().out
  monkeypatch.setattr(writer, '_available_memory_bytes',
                      lambda: per_worker // 2)
  with pytest.raises(writer.OutputError, match='choose a smaller --image_size'):
    writer.convert(tree, str(tmp_path / 'other'), image_size=8,
                   progress=False)
  assert not os.path.exists(tmp_path / 'other')


class _Interrupter:
  """Stands in for imaging.decode_and_resize; Ctrl-C after `limit` calls."""

  def __init__(self, decode):
    self.decode = decode
    self.calls = 0
    self.limit = None

  def __call__(self, task):
    self.calls += 1
    if self.limit is not None and self.calls > self.limit:
      raise KeyboardInterrupt
    return self.decode(task)


def test_interrupted_run_resumes_to_the_same_bytes(tree, converted, tmp_path,
                                                    monkeypatch):
  reference, reference_info = converted
  decode = _Interrupter(imaging.decode_and_resize)
  monkeypatch.setattr(imaging, 'decode_and_resize', decode)
  out = str(tmp_path / 'data')
  partial = out + writer.PARTIAL_SUFFIX
  decode.limit = 20
  with pytest.raises(KeyboardInterrupt):
    writer.convert(tree, out, image_size=STORED, num_workers=1, progress=False)
  assert not os.path.exists(out)
  assert schema.INFO_FILENAME not in os.listdir(partial)
  finished = [n for n in os.listdir(partial) if n.startswith('chest_xray-') and
              not n.endswith('.tmp')]
  assert 2 <= len(finished) < 8

  decode.calls, decode.limit = 0, None
  info = writer.convert(tree, out, image_size=STORED, num_workers=1,
                        progress=False)
  total = reference_info['counts']['scanned'] - len(info['duplicates'])
  assert 0 < decode.calls <= total - 2 * len(finished)  # finished shards kept
  assert (shard_bytes(out, metadata=True) ==
          shard_bytes(reference, metadata=True))
  assert info['splits'] == reference_info['splits']
  assert info['skipped'] == reference_info['skipped']
  assert not os.path.exists(partial)


def test_half_written_progress_record_is_converted_again(
    tree, converted, tmp_path, monkeypatch):
  """A kill -9 just after a shard's rename can leave its progress record
  empty; the rerun converts that shard again instead of crashing."""
  reference, _ = converted
  decode = _Interrupter(imaging.decode_and_resize)
  monkeypatch.setattr(imaging, 'decode_and_resize', decode)
  out = str(tmp_path / 'data')
  decode.limit = 20
  with pytest.raises(KeyboardInterrupt):
    writer.convert(tree, out, image_size=STORED, num_workers=1, progress=False)
  progress = os.path.join(out + writer.PARTIAL_SUFFIX, '_progress')
  records = sorted(n for n in os.listdir(progress) if n.endswith('.json'))
  assert len(records) >= 2
  with open(os.path.join(progress, records[0]), 'w'):
    pass  # empty, as a kill between open() and json.dump() leaves it
  decode.calls, decode.limit = 0, None
  writer.convert(tree, out, image_size=STORED, num_workers=1, progress=False)
  assert (shard_bytes(out, metadata=True) ==
          shard_bytes(reference, metadata=True))


def test_interrupted_run_with_other_arguments_starts_over(tree, tmp_path,
                                                          monkeypatch):
  decode = _Interrupter(imaging.decode_and_resize)
  monkeypatch.setattr(imaging, 'decode_and_resize', decode)
  out = str(tmp_path / 'data')
  decode.limit = 20
  with pytest.raises(KeyboardInterrupt):
    writer.convert(tree, out, image_size=8, num_workers=1, progress=False)
  decode.calls, decode.limit = 0, None
  info = writer.convert(tree, out, image_size=10, num_workers=1,
                        progress=False)
  assert decode.calls == info['counts']['scanned'] - len(info['duplicates'])
  assert sorted(os.listdir(tmp_path)) == ['data']


def test_interrupted_overwrite_keeps_the_old_dataset(tree, tmp_path,
                                                     monkeypatch):
  out = str(tmp_path / 'data')
  writer.convert(tree, out, image_size=8, num_workers=1, progress=False)
  before = shard_bytes(out, metadata=True)
  decode = _Interrupter(imaging.decode_and_resize)
  decode.limit = 20
  monkeypatch.setattr(imaging, 'decode_and_resize', decode)
  with pytest.raises(KeyboardInterrupt):
    writer.convert(tree, out, image_size=10, num_workers=1, overwrite=True,
                   resume=False, progress=False)
  assert shard_bytes(out, metadata=True) == before
  assert sorted(os.listdir(tmp_path)) == ['data']  # resume=False cleans up


def test_resplit_keeps_patients_together(tree, tmp_path, capsys):
  out = str(tmp_path / 'resplit')
  val = {'NORMAL': 2, 'PNEUMONIA': 4}
  test = {'NORMAL': 3, 'PNEUMONIA': 5}
  info = writer.convert(tree, out, image_size=8, resplit=True, val_counts=val,
                        test_counts=test, num_workers=1, progress=False)
  assert info['split_counts']['requested'] == {'val': val, 'test': test}
  split_of = {}
  for split in ('train', 'val', 'test'):
    for r in _records(out, info, split):
      patient = r[schema.PATIENT_ID].numpy().decode()
      assert split_of.setdefault(patient, split) == split, patient
  # Bad files are drawn like the others and then skipped: split_counts'
  # 'actual' is what the shards hold (counted here from the records), and
  # 'short' says by how much a drawn split fell below the request.
  for split in ('train', 'val', 'test'):
    held = collections.Counter(r[schema.CLASS_TEXT].numpy().decode()
                               for r in _records(out, info, split))
    assert info['split_counts']['actual'][split] == {
        c: held[c] for c in ('NORMAL', 'PNEUMONIA')}
  short = info['split_counts'].get('short', {})
  for split, requested in (('val', val), ('test', test)):
    actual = info['split_counts']['actual'][split]
    gaps = {c: requested[c] - actual[c] for c in requested}
    assert all(gap >= 0 for gap in gaps.values())
    assert short.get(split, dict.fromkeys(requested, 0)) == gaps
  assert short  # this tree's bad files are drawn into val (seed 0)
  writer.print_summary(info, out)
  warnings = [l for l in capsys.readouterr().out.splitlines()
              if 'warning:' in l]
  assert len(warnings) == len(short)
  assert all(f'{c} {actual} of {asked}' in ' '.join(warnings)
             for split in short
             for c, asked in info['split_counts']['requested'][split].items()
             for actual in [info['split_counts']['actual'][split][c]]
             if short[split][c])
  assert info['counts']['written'] + info['counts']['skipped'] + (
      info['counts']['duplicates']) == info['counts']['scanned']


def test_sixteen_bit_png_uses_the_full_range(tmp_path):
  path = str(tmp_path / 'gray16.png')
  values = _gradient16(64, 64)
  Image.fromarray(values).save(path)
  png, height, width = imaging.decode_and_resize((path, (16, 16)))
  stored = np.asarray(Image.open(io.BytesIO(png)), np.float64)
  assert (height, width) == (64, 64)
  # Independent reference: to 8 bits first, then resize.
  eight = Image.fromarray((values / 257).round().astype(np.uint8))
  expected = np.asarray(eight.resize((16, 16), Image.BILINEAR), np.float64)
  assert np.abs(stored - expected).max() <= 1
  assert 0 < stored.mean() < 255 and stored.std() > 20  # not clipped to white


def test_draft_decode_matches_a_full_decode(tmp_path):
  """At realistic size the reduced-scale JPEG decode changes almost nothing."""
  path = str(tmp_path / 'IM-0001-0001.jpeg')
  synthetic.render_image((path, 0, 1690, 1380, False, 92, (0, 0, 0)))
  png, height, width = imaging.decode_and_resize((path, (224, 224)))
  assert (height, width) == (1380, 1690)
  stored = np.asarray(Image.open(io.BytesIO(png)), np.float64)
  difference = np.abs(stored - _reference(path, (224, 224)))
  assert difference.mean() < 1 and np.percentile(difference, 99) < 5


def test_bilinear_does_not_alias_like_nearest(tmp_path):
  """One-pixel stripes average to gray; nearest neighbour keeps false
  stripes."""
  path = str(tmp_path / 'stripes.png')
  stripes = np.zeros((240, 240), np.uint8)
  stripes[:, ::2] = 255
  Image.fromarray(stripes).save(path)
  png, _, _ = imaging.decode_and_resize((path, (24, 24)))
  stored = np.asarray(Image.open(io.BytesIO(png)), np.float64)
  assert np.abs(stored - 127.5).max() < 16
  nearest = np.asarray(Image.fromarray(stripes).resize((24, 24), Image.NEAREST))
  assert np.abs(nearest - 127.5).min() > 100


def test_reader_reads_what_the_writer_wrote(converted):
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  out, info = converted
  builder = pipeline.DatasetBuilder(out)
  assert builder.verify() == info['counts']['written']
  labels = [int(target[0]) for _, target in builder.as_dataset('test')]
  assert labels.count(0) == info['splits']['test']['class_counts']['NORMAL']


@pytest.mark.parametrize('kwargs, error, message', [
    ({'image_size': 0}, writer.OutputError, 'image_size'),
    ({'image_size': 5000}, writer.OutputError, 'over 4096'),
    ({'num_shards': 0}, writer.OutputError, 'num_shards'),
    ({'name': 'a/b'}, writer.OutputError, 'name'),
    ({'voi': 'linear'}, writer.OutputError, 'voi must be one of'),
    ({'patient_id_salt': ''}, writer.OutputError, 'patient_id_salt'),
    ({'resplit': True}, sources.SourceError, 'needs val counts'),
])
def test_bad_arguments(tree, tmp_path, kwargs, error, message):
  with pytest.raises(error, match=message):
    writer.convert(tree, str(tmp_path / 'out'), num_workers=1, progress=False,
                   **kwargs)
  assert not os.listdir(tmp_path)


def test_out_dir_inside_src_dir_is_refused(tree):
  with pytest.raises(sources.SourceError, match='inside src_dir'):
    writer.convert(tree, os.path.join(tree, 'tfrecords'), progress=False)
  assert not os.path.exists(os.path.join(tree, 'tfrecords'))


@pytest.mark.parametrize('folder, expected', [
    ('chest_xray', 'chest_xray'), ('My X-rays (2024)', 'my_x_rays_2024'),
    ('Röntgen', 'rontgen'), ('2024-scans', 'd2024_scans'), ('---', 'dataset'),
    ('ChestXRay2017/', 'chestxray2017')])
def test_dataset_name_comes_from_the_source_folder(tmp_path, folder,
                                                   expected):
  name = writer.dataset_name(os.path.join(str(tmp_path), folder))
  assert name == expected
  # TFDS' rule for dataset names (tfds.core.naming): snake case from a letter.
  assert re.fullmatch(r'[a-z][a-z0-9_]*', name)


def test_decoding_reports_progress_lines_that_count_every_file(
    tree, tmp_path, monkeypatch, capsys):
  # Recount: each distinct file content outside the OS litter is decoded
  # once (byte-identical duplicates are dropped before decoding).
  contents = set()
  for folder, folders, names in os.walk(tree):
    folders[:] = [f for f in folders if f != '__MACOSX']
    for name in names:
      if not name.startswith('.'):
        with open(os.path.join(folder, name), 'rb') as f:
          contents.add(f.read())
  total = len(contents)
  stream = io.StringIO()
  monkeypatch.setattr(writer.sources, 'Progress', functools.partial(
      sources.Progress, interval=0, stream=stream))
  writer.convert(tree, str(tmp_path / 'data'), image_size=8, num_workers=1,
                 progress=True)
  lines = [l for l in stream.getvalue().splitlines()
           if l.startswith('decoding and writing: ')]
  counts = [int(re.match(rf'decoding and writing: (\d+) of {total} images',
                         l).group(1)) for l in lines]
  assert counts == list(range(1, total + 1)) + [total]
  assert lines[-1].endswith(' s) done')
  # The default interval (10 s) keeps a small conversion quiet on stderr.
  monkeypatch.undo()
  writer.convert(tree, str(tmp_path / 'quiet'), image_size=8, num_workers=1,
                 progress=True)
  captured = capsys.readouterr()
  assert 'decoding and writing' not in captured.err
  assert 'converted ' in captured.out  # the summary, on stdout
