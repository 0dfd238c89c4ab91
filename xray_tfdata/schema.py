"""The on-disk format: TFRecord feature schema, shard names, dataset_info.json.

Defined once here and imported by the writer and the reader, so the two
cannot drift apart. Building an example needs only the protobuf classes, but
parsing needs TensorFlow; TensorFlow is imported lazily so that the
conversion worker processes (which only decode and resize with PIL) start
fast.
"""

import json
import os
import re

FORMAT_VERSION = 1
INFO_FILENAME = 'dataset_info.json'
DEFAULT_NAME = 'kermany'
DEFAULT_CLASS_NAMES = ('NORMAL', 'PNEUMONIA')
SPLITS = ('train', 'val', 'test')

# Feature keys, in the names TF Model Garden and TFDS use.
ENCODED = 'image/encoded'
FORMAT = 'image/format'
HEIGHT = 'image/height'
WIDTH = 'image/width'
LABEL = 'image/class/label'
CLASS_TEXT = 'image/class/text'
FILENAME = 'image/filename'
PATIENT_ID = 'image/patient_id'
ORIGINAL_HEIGHT = 'image/original/height'
ORIGINAL_WIDTH = 'image/original/width'

_BYTES_KEYS = (ENCODED, FORMAT, CLASS_TEXT, FILENAME, PATIENT_ID)
_INT_KEYS = (HEIGHT, WIDTH, LABEL, ORIGINAL_HEIGHT, ORIGINAL_WIDTH)


def encode_example(png, height, width, label, class_text, filename,
                   patient_id, original_height, original_width):
  """Serializes one image and its metadata as a `tf.train.Example`.

  Args:
    png: PNG bytes of the stored image (single channel, uint8).
    height, width: stored image size in pixels.
    label: integer class id.
    class_text: class name, e.g. 'PNEUMONIA'.
    filename: source path relative to the source folder.
    patient_id: best-effort patient grouping key parsed from the file name.
    original_height, original_width: size of the source image.

  Returns:
    The serialized example, bytes.
  """
  from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top

  example = example_pb2.Example()
  feature = example.features.feature

  def put_bytes(key, value):
    if isinstance(value, str):
      value = value.encode('utf-8')
    feature[key].bytes_list.value.append(value)

  def put_int(key, value):
    feature[key].int64_list.value.append(int(value))

  put_bytes(ENCODED, png)
  put_bytes(FORMAT, b'png')
  put_int(HEIGHT, height)
  put_int(WIDTH, width)
  put_int(LABEL, label)
  put_bytes(CLASS_TEXT, class_text)
  put_bytes(FILENAME, filename)
  put_bytes(PATIENT_ID, patient_id)
  put_int(ORIGINAL_HEIGHT, original_height)
  put_int(ORIGINAL_WIDTH, original_width)
  # deterministic: map fields in sorted order, so the same inputs give the
  # same bytes in every process (protobuf map order is hash-seeded).
  return example.SerializeToString(deterministic=True)


def feature_spec():
  """Returns the `tf.io.parse_example` spec for the schema."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  spec = {k: tf.io.FixedLenFeature([], tf.string, default_value='')
          for k in _BYTES_KEYS}
  spec.update({k: tf.io.FixedLenFeature([], tf.int64, default_value=-1)
               for k in _INT_KEYS})
  return spec


def shard_filename(name, split, index, num_shards):
  """TFDS shard naming: `name-split.tfrecord-00000-of-00016`."""
  return f'{name}-{split}.tfrecord-{index:05d}-of-{num_shards:05d}'


_SHARD_RE = re.compile(r'^(?P<name>.+)-(?P<split>[^-]+)\.tfrecord-'
                       r'(?P<index>\d{5})-of-(?P<num>\d{5})$')


def parse_shard_filename(filename):
  """Inverse of `shard_filename`; returns (name, split, index, num) or None."""
  m = _SHARD_RE.match(os.path.basename(filename))
  if not m:
    return None
  return m['name'], m['split'], int(m['index']), int(m['num'])


class DatasetInfoError(ValueError):
  """The data_dir holds no usable dataset_info.json."""


def read_info(data_dir):
  """Reads and checks `dataset_info.json` from `data_dir` (any gfile path).

  Raises:
    DatasetInfoError: the folder or file is missing, unreadable, or of a
      format version this code does not read.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  path = os.path.join(data_dir, INFO_FILENAME)
  if not tf.io.gfile.exists(data_dir):
    raise DatasetInfoError(
        f'data_dir {data_dir} does not exist: convert images first with '
        'tools/make_tfrecords --src_dir=... --out_dir=...')
  if not tf.io.gfile.exists(path):
    raise DatasetInfoError(
        f'{path} not found: {data_dir} is not a converted dataset (or its '
        'conversion did not finish); run tools/make_tfrecords first')
  try:
    with tf.io.gfile.GFile(path, 'r') as f:
      info = json.load(f)
  except ValueError as e:
    raise DatasetInfoError(f'{path} is not valid JSON ({e}); '
                           're-run tools/make_tfrecords --overwrite') from e
  version = info.get('format_version')
  if version != FORMAT_VERSION:
    raise DatasetInfoError(
        f'{path} has format_version {version}, this code reads '
        f'{FORMAT_VERSION}; re-run tools/make_tfrecords --overwrite')
  return info
