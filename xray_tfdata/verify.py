"""Integrity checks of a converted dataset's shards against its metadata.

Each shard's presence and size on disk, each record's TFRecord CRCs, that
it parses as an example of the schema, its image's size from the PNG header
(without decoding), each shard's record count, and the first record's class
against `class_names`.
`DatasetBuilder.verify` and `DatasetBuilder.as_dataset` call these;
`find_damaged_shard` names the shard behind a read error mid-training.
"""

import os
import struct

import numpy as np
import tensorflow as tf

from xray_tfdata import schema
from xray_tfdata.dataset_info import DatasetError

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_RECONVERT = 're-convert with tools/make_tfrecords --overwrite'


class DamagedShardError(DatasetError):
  """A shard file whose records disagree with their CRCs or the metadata.

  Attributes:
    path: the shard file.
  """

  def __init__(self, path, message):
    super().__init__(message)
    self.path = path


def find_damaged_shard(builder, splits=None):
  """Names the shard behind a read error that surfaced mid-training.

  tf.data's DataLossError (a flipped byte) and assert_cardinality's error (a
  shard holding another number of records than the metadata says) name no
  file. Catch them around `fit` and call this to get the one line to show:

    try:
      net.fit(...)
    except (tf.errors.DataLossError, tf.errors.FailedPreconditionError,
            tf.errors.InvalidArgumentError) as e:
      damage = pipeline.find_damaged_shard(builder, 'train')
      if damage is None:
        raise
      raise damage from e

  Args:
    builder: the `DatasetBuilder` the dataset came from.
    splits: a split name, a list of them, or None for all.

  Returns:
    The `DatasetError` (a `DamagedShardError` when one shard is at fault)
    naming the shard and the fix, or None when every shard checks out.
  """
  try:
    builder.verify(splits)
  except DatasetError as e:
    return e
  return None


def checked_shard_paths(info, split):
  """The split's shard paths, checked on disk (a stat per shard, no read).

  Args:
    info: the dataset's `DatasetInfo`.
    split: one of its splits.

  Returns:
    The shard paths, in index order.

  Raises:
    DatasetError: the split is unknown or has no examples, its shard
      counts do not add up to its example count, or a shard is missing or
      has a size other than the writer recorded (truncated or replaced).
  """
  entry = info.split(split)
  info.check_has_examples(split)
  shard_counts = [shard.get('num_examples') for shard in entry['shards']]
  # Cheap, and it turns assert_cardinality's failure at the end of the
  # first epoch into one line before it.
  if None not in shard_counts and sum(shard_counts) != int(
      entry['num_examples']):
    raise DatasetError(
        f'{os.path.join(info.data_dir, schema.INFO_FILENAME)} says split '
        f'{split!r} has {entry["num_examples"]} examples, but its shards '
        f'{sum(shard_counts)}: the metadata was edited or mixed up; re-run '
        'tools/make_tfrecords --overwrite')
  paths = []
  for shard in entry['shards']:
    path = os.path.join(info.data_dir, shard['filename'])
    if not tf.io.gfile.exists(path):
      raise DatasetError(f'shard {path} is missing; re-run '
                         'tools/make_tfrecords --overwrite')
    expected = shard.get('num_bytes')
    if expected is not None:
      actual = tf.io.gfile.stat(path).length
      if actual != expected:
        raise DatasetError(
            f'shard {path} has {actual} bytes, {schema.INFO_FILENAME} says '
            f'{expected}: it is truncated or was replaced; re-run '
            'tools/make_tfrecords --overwrite')
    paths.append(path)
  return paths


def verify(builder, splits=None):
  """Reads every record of every shard and checks it against its CRCs and
  the metadata.

  tf.data's DataLossError names no file; this names the shard. Checked:
  each record's length and data CRC (TFRecord framing), that it parses as
  an example of the schema, that its image is a PNG of the stored size
  (from the PNG header, without decoding), and that each shard holds as
  many records as `xray_info.json` says. The CRCs and the parsing run in
  TensorFlow's C++, a batch at a time (BUILD_NOTES.md has its speed).

  Args:
    builder: a `DatasetBuilder` (its info, shard_paths and
      stored_class_names).
    splits: a split name, a list of them, or None for all.

  Returns:
    number of records read.

  Raises:
    DamagedShardError: naming the first damaged shard.
    DatasetError: an unknown or empty split, a missing or truncated
      shard, or class names that disagree with the records'.
  """
  info = builder.info
  if splits is None:
    splits = sorted(info.splits)
  elif isinstance(splits, str):
    splits = [splits]
  total = 0
  for split in splits:
    paths = builder.shard_paths(split)
    counts = [s.get('num_examples') for s in info.split(split)['shards']]
    total += _verify_shards(info, paths, counts)
    # After the CRCs, so a flipped byte is named as one.
    check_first_record(info, split, paths, builder.stored_class_names)
  return total


def check_first_record(info, split, paths, stored_class_names):
  """Checks the split's first record against the metadata: its PNG
  header's size, and its class text against the class name of its label.

  One record, read now: a metadata file of another conversion fails here,
  in one line, instead of in ensure_shape in the middle of `fit`; class
  names swapped or edited in xray_info.json fail here instead of training
  under the wrong names.

  Args:
    info: the dataset's `DatasetInfo`.
    split: the split the paths belong to.
    paths: its shard paths, in index order.
    stored_class_names: the class names in stored label order.

  Raises:
    DatasetError: the stored images have another size than the metadata,
      or the record's class is another than its label's in class_names.
    DamagedShardError: the first record is damaged.
  """
  counts = [s.get('num_examples') for s in info.split(split)['shards']]
  for path, count in zip(paths, counts):
    if count == 0:
      continue
    first = _first_record(info, path)
    if first is None:
      continue  # an empty shard the metadata miscounts: verify names it
    size, label, class_text = first
    if size != info.image_size:
      stored = 'not PNGs' if size[0] < 0 else f'{size[0]}x{size[1]}'
      raise DatasetError(
          f'the images in {path} are {stored}, {schema.INFO_FILENAME} says '
          f'{info.image_height}x{info.image_width}: the metadata '
          'belongs to another conversion; re-run tools/make_tfrecords '
          '--overwrite')
    _check_class_text(info, path, label, class_text, stored_class_names)
    return


def _check_class_text(info, path, label, class_text, names):
  """Raises DatasetError unless names[label] is the record's class text
  (records without one, or without a label, are not checked)."""
  if not class_text or label < 0:
    return
  named = names[label] if label < len(names) else None
  if named == class_text:
    return
  where = os.path.join(info.data_dir, schema.INFO_FILENAME)
  said = (f'its class_names[{label}] is {named!r}' if named is not None
          else f'its class_names ({", ".join(names)}) have no id {label}')
  raise DatasetError(
      f'the first record of {path} is class {class_text!r} with label '
      f'{label}, but {where} says {said}: its class names are swapped or '
      'edited; re-run tools/make_tfrecords --overwrite')


def _first_record(info, path):
  """((height, width), label, class text) of the first record: the size
  from the PNG header, (-1, -1) if not a PNG; None for an empty shard.

  Read with the TFRecord framing by hand, without its CRCs: a tf.data
  dataset for one record costs more than the rest of as_dataset. Whatever
  does not parse is handed to `_verify_shard`.
  """
  from google.protobuf import message  # pylint: disable=g-import-not-at-top
  from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top
  file_size = tf.io.gfile.stat(path).length
  with tf.io.gfile.GFile(path, 'rb') as f:
    # uint64 length, uint32 masked CRC of the length, data, CRC of data.
    header = f.read(12)
    length = struct.unpack('<Q', header[:8])[0] if len(header) == 12 else 0
    record = f.read(length) if 0 < length <= file_size - 16 else b''
  if not header:
    return None
  version = info.format_version
  try:
    feature = example_pb2.Example.FromString(record).features.feature
    png = feature[schema.key(schema.ENCODED, version)].bytes_list.value[0]
  except (message.DecodeError, IndexError):
    _verify_shard(info, path)  # names the damage
    raise
  labels = feature[schema.key(schema.LABEL, version)].int64_list.value
  texts = feature[schema.CLASS_TEXT].bytes_list.value
  label = int(labels[0]) if labels else -1
  class_text = texts[0].decode('utf-8', 'replace') if texts else ''
  if png[:8] != _PNG_SIGNATURE or len(png) < 24:
    _verify_shard(info, path)  # a flipped byte, if it is one
    return (-1, -1), label, class_text
  # IHDR: width, then height, big-endian, at bytes 16..24.
  width, height = struct.unpack('>II', png[16:24])
  return (height, width), label, class_text


def _verify_shards(info, paths, expected_counts):
  """Reads the shards; returns the total record count.

  One dataset over all of them: a dataset per shard costs more to set up
  than reading a 20 MB shard.

  Raises:
    DamagedShardError: a CRC mismatch, a record that is not an example of
      the schema, an image of another size, or another record count than
      `expected_counts` says.
  """
  counts = [0] * len(paths)
  current = 0
  try:
    for current, sizes in _image_sizes(info, paths).as_numpy_iterator():
      _check_sizes(info, paths[current], sizes, counts[current])
      counts[current] += len(sizes)
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
    # TensorFlow's error names no file: read the shards one at a time,
    # from the one being read, to name it.
    for path in paths[current:]:
      _verify_shard(info, path)
    raise
  for path, count, expected in zip(paths, counts, expected_counts):
    if expected is not None and count != expected:
      raise DamagedShardError(
          path, f'shard {path} holds {count} records, '
          f'{schema.INFO_FILENAME} says {expected}: the shard or the '
          f'metadata was replaced; {_RECONVERT}')
  return sum(counts)


def _verify_shard(info, path):
  """Reads one shard; returns its record count.

  Raises:
    DamagedShardError: as `_verify_shards`, but counts are not checked.
  """
  count = 0
  try:
    for _, sizes in _image_sizes(info, [path]).as_numpy_iterator():
      _check_sizes(info, path, sizes, count)
      count += len(sizes)
  except tf.errors.DataLossError as e:
    raise DamagedShardError(
        path, f'shard {path} is corrupt: a record after the first {count} '
        f'fails its CRC check (flipped or overwritten bytes); '
        f'{_RECONVERT}') from e
  except tf.errors.InvalidArgumentError as e:
    raise DamagedShardError(
        path, f'shard {path}: a record after the first {count} is not an '
        f'example of this dataset\'s schema; {_RECONVERT}') from e
  return count


def _check_sizes(info, path, sizes, first_record):
  """Raises DamagedShardError for an image of another size than stored."""
  height, width = info.image_size
  wrong = np.flatnonzero((sizes[:, 0] != height) | (sizes[:, 1] != width))
  if wrong.size:
    got = sizes[wrong[0]]
    what = ('is not a PNG' if got[0] < 0 else
            f'is {got[0]}x{got[1]}, {schema.INFO_FILENAME} says '
            f'{height}x{width}')
    raise DamagedShardError(
        path, f'shard {path}: the image of record {first_record + wrong[0]} '
        f'{what}; {_RECONVERT}')


def _image_sizes(info, paths, batch=256):
  """The image sizes in the shards' records, read from the PNG headers.

  Batched and parsed in TensorFlow: Python sees one small array per batch,
  so the read runs at about the speed of the CRC checks.

  Returns:
    A dataset of (shard index, int32 [n, 2] (height, width)), in shard
    order, a batch never spanning two shards; (-1, -1) for an image that
    is not a PNG.
  """
  # The whole schema, so that a record the decoder cannot parse fails here.
  # A multi-label dataset's too: every record holds one code per label.
  spec = schema.feature_spec(info.format_version, len(info.label_names))
  image_key = schema.key(schema.ENCODED, info.format_version)

  def sizes(records):
    png = tf.io.parse_example(records, spec)[image_key]
    # Cut before padding (a copy of 24 bytes, not of the image), so that
    # a short or empty image still has a 24-byte header.
    header = tf.strings.substr(tf.strings.join(
        [tf.strings.substr(png, 0, 24), tf.constant(b'\0' * 24)]), 0, 24)
    is_png = tf.equal(tf.strings.substr(header, 0, 8), _PNG_SIGNATURE)
    # IHDR: width, then height, big-endian, at bytes 16..24.
    width_height = tf.io.decode_raw(tf.strings.substr(header, 16, 8),
                                    tf.int32, little_endian=False)
    height_width = tf.reverse(width_height, axis=[1])
    return tf.where(is_png[:, None], height_width, -1)

  def shard(index, path):
    return (tf.data.TFRecordDataset(path, buffer_size=8 * 1024**2)
            .batch(batch).map(lambda records: (index, sizes(records))))

  return tf.data.Dataset.from_tensor_slices(
      (tf.range(len(paths)), paths)).flat_map(shard)
