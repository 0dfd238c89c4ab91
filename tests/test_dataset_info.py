"""dataset_info: the xray_info.json contract (layout, reading, typing)."""

import hashlib
import json
import os

import numpy as np
import pytest
from sklearn.utils import class_weight

from xray_tfdata import dataset_info
from xray_tfdata import schema

import relabel
from records import write_dataset


def _json(root, name=schema.INFO_FILENAME):
  with open(os.path.join(root, name)) as f:
    return json.load(f)


def _rewrite(root, edit, name=schema.INFO_FILENAME):
  info = _json(root, name)
  edit(info)
  with open(os.path.join(root, name), 'w') as f:
    json.dump(info, f)


def test_typed_fields_are_what_the_file_says(tmp_path):
  root = str(tmp_path)
  write_dataset(root, size=(12, 10))
  raw = _json(root)
  info = dataset_info.load_info(root)
  assert info.raw == raw
  assert info.class_names == tuple(raw['class_names'])
  assert info.image_size == (12, 10) and info.channels == 1
  assert info.name == 'tiny' and info.format_version == 2
  assert info.num_examples('train') == raw['splits']['train']['num_examples']
  # What a dataset records none of.
  assert info.dicom_voi == 'auto' and info.layout is None
  assert info.src_dir is None and info.extra_features == ()


def test_dicom_layout_source_and_extras_are_typed(tmp_path):
  root = str(tmp_path)
  write_dataset(root)

  def edit(info):
    info['dicom'] = {'voi': 'window', 'packages': {'pydicom': '3'}}
    info['layout'] = 'rsna'
    info['src_dir'] = '/data/rsna'
    info['extra_features'] = [schema.DETAILED_CLASS, *schema.BOX_KEYS]
  _rewrite(root, edit)
  info = dataset_info.load_info(root)
  assert info.dicom_voi == 'window' and info.layout == 'rsna'
  assert info.src_dir == '/data/rsna'
  assert info.extra_features == (schema.DETAILED_CLASS, *schema.BOX_KEYS)


def test_format_1_reads_from_its_dataset_info_json(tmp_path):
  root = str(tmp_path)
  write_dataset(root, format_version=1)
  assert not os.path.exists(os.path.join(root, schema.INFO_FILENAME))
  assert dataset_info.is_converted(root)
  info = dataset_info.load_info(root)
  assert info.format_version == 1
  assert info.raw == _json(root, schema.TFDS_INFO_FILENAME)


def test_class_weights_match_scikit_learn(tmp_path):
  root = str(tmp_path)
  write_dataset(root, split_sizes={'train': (3, 8)})
  weights = dataset_info.load_info(root).class_weights('train')
  labels = [0] * 3 + [1] * 8
  reference = class_weight.compute_class_weight(
      'balanced', classes=np.array([0, 1]), y=np.array(labels))
  assert [weights[0], weights[1]] == pytest.approx(list(reference))


def test_is_converted(tmp_path):
  assert not dataset_info.is_converted(str(tmp_path))
  write_dataset(str(tmp_path))
  assert dataset_info.is_converted(str(tmp_path))


@pytest.mark.parametrize('edit, message', [
    (lambda root: os.remove(os.path.join(root, schema.INFO_FILENAME)),
     'not a converted dataset.*run tools/make_tfrecords'),
    (lambda root: open(os.path.join(root, schema.INFO_FILENAME), 'w').write(
        '{"format_version": 2,'), 'not valid JSON.*--overwrite'),
    (lambda root: _rewrite(root, lambda i: i.update(format_version=9)),
     'format_version 9, this code reads 1, 2; re-run'),
    (lambda root: _rewrite(root, lambda i: i.pop('image')),
     "lacks or garbles 'image'; re-run"),
])
def test_unusable_metadata_is_one_dataset_error(tmp_path, edit, message):
  root = str(tmp_path)
  write_dataset(root)
  edit(root)
  with pytest.raises(dataset_info.DatasetError, match=message) as raised:
    dataset_info.load_info(root)
  assert '\n' not in str(raised.value)
  assert isinstance(raised.value, ValueError)  # old `except ValueError`s


def test_missing_folder_and_foreign_tfds_dataset(tmp_path):
  with pytest.raises(dataset_info.DatasetError, match='does not exist'):
    dataset_info.load_info(str(tmp_path / 'nowhere'))
  with open(tmp_path / schema.TFDS_INFO_FILENAME, 'w') as f:
    json.dump({'name': 'mnist'}, f)
  with pytest.raises(dataset_info.DatasetError,
                     match='tfds.builder_from_directory'):
    dataset_info.load_info(str(tmp_path))
  with open(tmp_path / schema.TFDS_INFO_FILENAME, 'w') as f:
    json.dump({'format_version': 2}, f)  # format 2 is never in that file
  with pytest.raises(dataset_info.DatasetError, match='format_version 2'):
    dataset_info.load_info(str(tmp_path))


def _built(**overrides):
  values = dict(
      name='kermany', class_names=('NORMAL', 'PNEUMONIA'),
      stored_size=(224, 200), resize_filter='lanczos',
      splits={'train': {'num_examples': 6,
                        'class_counts': {'NORMAL': 2, 'PNEUMONIA': 4},
                        'shards': []}},
      src_dir='relative/src', layout='kermany', arguments={'voi': 'full'},
      split_counts=None,
      counts={'scanned': 7, 'written': 6, 'skipped': 1, 'duplicates': 0},
      skipped=[{'path': 'x'}], duplicates=[], ignored=[], created='now',
      timing={'elapsed_seconds': 5.0, 'decode_write_seconds': 2.0},
      num_workers=2)
  values.update(overrides)
  return dataset_info.build_info(**values)


def test_build_info_is_what_load_info_reads(tmp_path):
  info = _built()
  assert info['format_version'] == schema.FORMAT_VERSION
  assert info['src_dir'] == os.path.abspath('relative/src')
  assert info['images_per_second'] == 6 / 2.0
  assert info['image'] == {'height': 224, 'width': 200, 'channels': 1,
                           'encoding': 'png', 'dtype': 'uint8',
                           'resize': 'squash', 'resize_filter': 'lanczos'}
  # Entries of what a conversion had none of are left out.
  assert not {'dicom', 'extra_features', 'patient_id'} & set(info)
  with open(tmp_path / schema.INFO_FILENAME, 'w') as f:
    json.dump(info, f)
  typed = dataset_info.load_info(str(tmp_path))
  assert typed.image_size == (224, 200) and typed.layout == 'kermany'
  assert typed.src_dir == os.path.abspath('relative/src')
  assert typed.class_counts('train') == [2, 4]
  assert typed.dicom_voi == dataset_info.DEFAULT_VOI


def test_build_info_records_dicom_extras_and_patient_ids(tmp_path):
  info = _built(dicom_voi='window', decoding_packages={'pydicom': '3.0'},
                extra_features=[schema.DETAILED_CLASS], patient_id='hashed')
  assert info['dicom'] == {'voi': 'window', 'packages': {'pydicom': '3.0'}}
  assert info['extra_features'] == [schema.DETAILED_CLASS]
  assert info['patient_id'] == 'hashed'
  with open(tmp_path / schema.INFO_FILENAME, 'w') as f:
    json.dump(info, f)
  typed = dataset_info.load_info(str(tmp_path))
  assert typed.dicom_voi == 'window'
  assert typed.extra_features == (schema.DETAILED_CLASS,)


@pytest.fixture(scope='module')
def relabelled(tmp_path_factory):
  """{case: DatasetInfo}: relabel's source converted as it is ('original'),
  once more as it is ('again'), and relabelled each way."""
  base = tmp_path_factory.mktemp('relabel')
  infos = {}
  for case, rows in [('original', relabel.ROWS), ('again', relabel.ROWS),
                     *relabel.CASES.items()]:
    out = str(base / case)
    relabel.convert(str(base / 'src'), out, rows)
    infos[case] = dataset_info.load_info(out)
  return infos


@pytest.mark.parametrize('case', sorted(relabel.CASES))
def test_a_relabelled_dataset_has_another_fingerprint(relabelled, case):
  """Issue 32: the same images converted with other labels keep every shard
  name, size and count, so the fingerprint of those alone stays (the bug);
  the content hash changes it."""
  original, changed = relabelled['original'], relabelled[case]
  assert relabel.legacy_fingerprint(changed) == relabel.legacy_fingerprint(
      original)  # the case really is one the old fingerprint missed
  assert changed.has_content_hash and original.has_content_hash
  assert changed.fingerprint() != original.fingerprint()
  # The same labels converted again: the same records, the same fingerprint.
  assert relabelled['again'].fingerprint() == original.fingerprint()


def test_content_hash_is_a_recount_of_the_shard_s_records(relabelled):
  """Each shard's content hash is SHA-256 over its records, each preceded by
  its 8-byte length, recomputed here from the shard read by tf.data."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  info = relabelled['original']
  for entry in info.splits.values():
    for shard in entry['shards']:
      sha = hashlib.sha256()
      for record in tf.data.TFRecordDataset(
          os.path.join(info.data_dir, shard['filename'])).as_numpy_iterator():
        sha.update(len(record).to_bytes(8, 'little') + record)
      assert shard[dataset_info.CONTENT_KEY] == sha.hexdigest()


def _old_fingerprint(info):
  """The fingerprint as it was computed before content hashes."""
  splits = {}
  for name, entry in sorted(info.splits.items()):
    shards = [[s['filename'], s['num_examples'], s['num_bytes']]
              for s in entry['shards']]
    splits[name] = {'num_examples': entry['num_examples'],
                    'num_bytes': sum(s[2] for s in shards),
                    'class_counts': entry['class_counts'], 'shards': shards}
  return hashlib.sha256(json.dumps(
      {'format_version': 2, 'class_names': list(info.class_names),
       'image_size': list(info.image_size), 'splits': splits},
      sort_keys=True).encode()).hexdigest()[:32]


def test_a_dataset_without_content_hashes_keeps_its_old_fingerprint(
    tmp_path, capsys):
  """A dataset converted before content hashes still reads, with the
  fingerprint it had then (so its runs resume), and says so once."""
  root = str(tmp_path)
  write_dataset(root)

  def strip(info):
    for entry in info['splits'].values():
      for shard in entry['shards']:
        del shard[dataset_info.CONTENT_KEY]
  _rewrite(root, strip)
  info = dataset_info.load_info(root)
  assert not info.has_content_hash
  assert info.fingerprint() == _old_fingerprint(info)
  assert dataset_info.load_info(root).fingerprint() == _old_fingerprint(info)
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1, err  # once, not per call
  assert err[0].startswith(f'warning: {root}') and 'no content hash' in err[0]
  assert 'tools/make_tfrecords --overwrite' in err[0]
