"""Damaged shards and metadata that disagrees with them, on tiny hand-written
records: each is named in one line (issue 12)."""

import json
import os
import shutil

import pytest
import tensorflow as tf

from xray_tfdata import pipeline
from xray_tfdata import schema

from records import write_dataset


@pytest.fixture()
def tiny(tmp_path):
  write_dataset(str(tmp_path))
  return str(tmp_path)


def _flip_byte(path, offset):
  """Same size, bad CRC: what shard_paths' size check cannot see."""
  with open(path, 'r+b') as f:
    f.seek(offset)
    byte = f.read(1)
    f.seek(offset)
    f.write(bytes([byte[0] ^ 0xFF]))


def _edit_info(root, edit):
  path = os.path.join(root, schema.INFO_FILENAME)
  with open(path) as f:
    info = json.load(f)
  edit(info)
  with open(path, 'w') as f:
    json.dump(info, f)


def _one_line(error):
  message = str(error)
  assert '\n' not in message and 're-' in message, message
  return message


def test_flipped_byte_mid_training_is_named(tiny):
  builder = pipeline.DatasetBuilder(tiny)
  path = builder.shard_paths('train')[1]
  _flip_byte(path, os.path.getsize(path) // 2)
  ds = builder.as_dataset('train', 4, training=True, seed=0)
  # What fit() meets: an error that names no file.
  with pytest.raises(tf.errors.DataLossError) as raised:
    for _ in ds:
      pass
  assert os.path.basename(path) not in str(raised.value)
  damage = pipeline.find_damaged_shard(builder, 'train')
  assert isinstance(damage, pipeline.DamagedShardError)
  assert damage.path == path
  assert 'CRC' in _one_line(damage) and path in str(damage)
  assert pipeline.find_damaged_shard(builder, 'val') is None


@pytest.mark.parametrize('damage', ['length', 'png'])
def test_damaged_first_record_is_named_by_as_dataset(tiny, damage):
  builder = pipeline.DatasetBuilder(tiny)
  path = builder.shard_paths('val')[0]
  if damage == 'length':
    _flip_byte(path, 5)  # the first record's length: now longer than the file
  else:
    with open(path, 'rb') as f:
      _flip_byte(path, f.read().index(b'PNG'))  # not "the images are not PNGs"
  with pytest.raises(pipeline.DamagedShardError) as raised:
    builder.as_dataset('val')
  assert raised.value.path == path
  _one_line(raised.value)


def test_verify_counts_every_split_by_default(tiny):
  builder = pipeline.DatasetBuilder(tiny)
  assert builder.verify() == 14 + 5
  assert builder.verify(['val', 'train']) == 19


def test_shard_count_other_than_metadata_is_named(tiny):
  def move_one(info):  # the split's total stays right
    shards = info['splits']['train']['shards']
    shards[0]['num_examples'] += 1
    shards[1]['num_examples'] -= 1
  _edit_info(tiny, move_one)
  builder = pipeline.DatasetBuilder(tiny)
  path = builder.shard_paths('train')[0]
  with pytest.raises(pipeline.DamagedShardError,
                     match=f'{os.path.basename(path)} holds 4 records, '
                     'xray_info.json says 5') as raised:
    builder.verify('train')
  _one_line(raised.value)


def test_count_error_mid_training_is_named(tiny):
  def add_one(info):  # consistent with itself, not with the shards
    info['splits']['val']['shards'][1]['num_examples'] += 1
    info['splits']['val']['num_examples'] += 1
  _edit_info(tiny, add_one)
  builder = pipeline.DatasetBuilder(tiny)
  # What fit() meets at the end of the first pass: no file named.
  with pytest.raises(tf.errors.FailedPreconditionError,
                     match='expected to contain 6'):
    list(builder.as_dataset('val', 2))
  damage = pipeline.find_damaged_shard(builder, 'val')
  assert damage.path == builder.shard_paths('val')[1]
  assert 'holds 2 records, xray_info.json says 3' in _one_line(damage)


def test_split_count_other_than_its_shards_is_one_line(tiny):
  def miscount(info):
    info['splits']['val']['num_examples'] = 7
  _edit_info(tiny, miscount)
  builder = pipeline.DatasetBuilder(tiny)
  # Before, assert_cardinality failed at the end of the first pass.
  for check in (lambda: builder.as_dataset('val'),
                lambda: builder.verify('val')):
    with pytest.raises(pipeline.DatasetError,
                       match="split 'val' has 7 examples, but its shards 5"
                       ) as raised:
      check()
    _one_line(raised.value)


def test_image_size_other_than_metadata_is_one_line(tiny):
  def resize(info):
    info['image']['height'] = 24
  _edit_info(tiny, resize)
  builder = pipeline.DatasetBuilder(tiny)
  with pytest.raises(pipeline.DatasetError,
                     match='are 12x10, xray_info.json says 24x10') as raised:
    builder.as_dataset('train')
  _one_line(raised.value)
  with pytest.raises(pipeline.DamagedShardError,
                     match='record 0 is 12x10, xray_info.json says 24x10'):
    builder.verify('train')


def test_shard_of_another_image_size_is_named(tiny, tmp_path_factory):
  """One shard copied from a conversion at another size."""
  other = str(tmp_path_factory.mktemp('other'))
  write_dataset(other, size=(16, 10))
  builder = pipeline.DatasetBuilder(tiny)
  name = builder.info.split('train')['shards'][2]['filename']
  shutil.copy(os.path.join(other, name), os.path.join(tiny, name))
  with open(os.path.join(other, schema.INFO_FILENAME)) as f:
    other_shard = json.load(f)['splits']['train']['shards'][2]

  def take_shard(info):
    info['splits']['train']['shards'][2] = other_shard
  _edit_info(tiny, take_shard)
  builder = pipeline.DatasetBuilder(tiny)
  assert builder.verify('val') == 5
  with pytest.raises(pipeline.DamagedShardError,
                     match=f'{name}: the image of record 0 is 16x10') as raised:
    builder.verify('train')
  _one_line(raised.value)


@pytest.mark.parametrize('empty', ['no shards', 'empty shards'])
def test_split_with_no_examples_is_named(tmp_path, empty):
  """Before, verify failed with "filenames must contain tf.string"."""
  root = str(tmp_path)
  write_dataset(root, {'train': (5, 9), 'val': (0, 0)},
                num_shards=1 if empty == 'no shards' else 2)
  if empty == 'no shards':
    _edit_info(root, lambda info: info['splits']['val'].update(shards=[]))
  builder = pipeline.DatasetBuilder(root)
  for check in (lambda: builder.verify(), lambda: builder.as_dataset('val'),
                lambda: builder.shard_paths('val')):
    with pytest.raises(pipeline.DatasetError,
                       match="split 'val' of .* has no examples") as raised:
      check()
    _one_line(raised.value)
  assert builder.verify('train') == 14  # the other split still reads


def test_class_names_swapped_against_the_records_are_named(tiny):
  """The records say label 0 is NORMAL (image/class/text); xray_info.json
  swapped says PNEUMONIA. Before, accepted: class weights printed under
  the wrong names."""
  _edit_info(tiny, lambda info: info['class_names'].reverse())
  builder = pipeline.DatasetBuilder(tiny)
  for check in (lambda: builder.verify('val'),
                lambda: builder.as_dataset('train')):
    with pytest.raises(pipeline.DatasetError,
                       match=r"is class '(NORMAL|PNEUMONIA)' with label [01], "
                       r"but .*xray_info.json says its class_names\[[01]\] "
                       "is '(PNEUMONIA|NORMAL)'") as raised:
      check()
    _one_line(raised.value)


def test_class_names_edited_against_the_records_are_named(tiny):
  _edit_info(tiny, lambda info: info.update(class_names=['NORMAL']))
  with pytest.raises(pipeline.DatasetError,
                     match=r"is class 'PNEUMONIA' with label 1, but .* says "
                     r'its class_names \(NORMAL\) have no id 1'):
    pipeline.DatasetBuilder(tiny).verify()
