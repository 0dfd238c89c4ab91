"""verify: the shards' integrity checks, called directly (DatasetBuilder's
delegates are tested in test_pipeline and test_pipeline_faults)."""

import os

import pytest

from xray_tfdata import pipeline
from xray_tfdata import verify

from records import write_dataset


@pytest.fixture()
def builder(tmp_path):
  write_dataset(str(tmp_path))
  return pipeline.DatasetBuilder(str(tmp_path))


def test_counts_every_record_and_finds_nothing_on_a_clean_dataset(builder):
  # records.write_dataset's default splits: train 5 + 9, val 2 + 3.
  assert verify.verify(builder) == 14 + 5
  assert verify.verify(builder, 'val') == builder.verify('val') == 5
  assert verify.find_damaged_shard(builder) is None


def test_a_flipped_byte_names_its_shard(builder):
  path = builder.shard_paths('train')[2]
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))
  damage = verify.find_damaged_shard(builder, ['val', 'train'])
  assert isinstance(damage, verify.DamagedShardError)
  assert isinstance(damage, pipeline.DatasetError)
  assert damage.path == path and 'CRC' in str(damage)
  assert verify.find_damaged_shard(builder, 'val') is None


def test_first_record_is_checked_against_the_given_class_names(builder):
  paths = builder.shard_paths('train')
  verify.check_first_record(builder.info, 'train', paths,
                            ('NORMAL', 'PNEUMONIA'))
  with pytest.raises(pipeline.DatasetError, match='swapped or edited'):
    verify.check_first_record(builder.info, 'train', paths,
                              ('PNEUMONIA', 'NORMAL'))


def test_shard_paths_are_checked_on_disk(builder):
  info = builder.info
  names = [s['filename'] for s in info.split('train')['shards']]
  paths = verify.checked_shard_paths(info, 'train')
  assert paths == [os.path.join(info.data_dir, name) for name in names]
  os.rename(paths[2], paths[2] + '.away')
  with pytest.raises(pipeline.DatasetError, match=f'{names[2]} is missing'):
    verify.checked_shard_paths(info, 'train')
  os.rename(paths[2] + '.away', paths[2])
  with open(paths[1], 'ab') as f:
    f.write(b'\0')
  with pytest.raises(pipeline.DatasetError,
                     match=f'{names[1]} has .* bytes, .*truncated or was '
                     'replaced'):
    verify.checked_shard_paths(info, 'train')
  assert verify.checked_shard_paths(info, 'val')  # the other split still reads
