"""The contract of a converted dataset's metadata, `xray_info.json`.

One module declares the file's layout (`build_info`, which the writer fills
in with what it counted), reads and checks it (`load_info`: format version,
any `tf.io.gfile` path such as gs://), and types it (`DatasetInfo`), so the
writer, the reader, serving, training and the demo cannot drift apart.

TensorFlow-free at import time: reading goes through `tf.io.gfile` (for
gs:// paths), imported when `load_info` runs.
"""

import dataclasses
import hashlib
import json
import os
import sys
from typing import Optional

from xray_tfdata import errors
from xray_tfdata import schema

# The DICOM VOI policy a dataset without one was converted with (the
# converter's default; a dataset of PNGs and JPEGs records none).
DEFAULT_VOI = 'auto'

# A shard entry's content hash in xray_info.json (`ShardContentHash`).
CONTENT_KEY = 'content_sha256'

# data_dirs whose missing content hash this process has already reported.
_said_no_content_hash = set()


class ShardContentHash:
  """The content hash of one shard: SHA-256 over its serialized records,
  in order, each preceded by its length.

  The records hold the stored codes (or class), the PNG bytes and the
  metadata, so a relabelling that keeps every count and byte size (0 and
  1 swapped between two images, a blank code turned into -1) changes it,
  where shard names, sizes and counts do not. The writer folds it per shard
  as it writes (`update` for each record), so reading never hashes.
  """

  def __init__(self):
    self._sha = hashlib.sha256()

  def update(self, record):
    """Folds in one serialized record (bytes)."""
    # The length keeps record boundaries: two records cannot fold like one.
    self._sha.update(len(record).to_bytes(8, 'little'))
    self._sha.update(record)

  def hexdigest(self):
    return self._sha.hexdigest()


class DatasetError(errors.XrayError):
  """A user-caused problem with a converted dataset or a request for it:
  among them a data_dir that holds no usable xray_info.json (or format 1's
  dataset_info.json)."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What `xray_info.json` says, plus what is derived from it.

  Attributes:
    data_dir: the dataset's folder.
    name: the dataset's name (shard file prefix).
    class_names: class names in label order.
    image_height, image_width, channels: the stored images.
    splits: split -> {'num_examples', 'class_counts', 'shards'}.
    raw: the whole metadata dict, as read.
    layout: the source layout the writer read ('kermany', 'rsna', ...), or
      None when not recorded.
    src_dir: the source folder converted (absolute), or None.
    extra_features: keys of `schema.EXTRA_FEATURES` the records carry.
    dicom_voi: the DICOM VOI policy the DICOM sources were converted with
      (`DEFAULT_VOI` when the dataset records none).
    label_names: a multi-label dataset's labels in the source's spelling,
      the order of the records' `schema.LABELS`; () for a class dataset,
      whose records store a class id instead.
  """
  data_dir: str
  name: str
  class_names: tuple
  image_height: int
  image_width: int
  channels: int
  splits: dict
  raw: dict
  layout: Optional[str] = None
  src_dir: Optional[str] = None
  extra_features: tuple = ()
  dicom_voi: str = DEFAULT_VOI
  label_names: tuple = ()

  @property
  def is_multilabel(self):
    """Whether the records store a raw code per label (`schema.LABELS`)
    rather than a class id (`schema.LABEL`): the stored format, which the
    record parser and the view filter need; the reader yields targets
    [B, L] either way (see `target_names`)."""
    return bool(self.label_names)

  @property
  def target_names(self):
    """The names of the targets the reader yields, in order: a multi-label
    dataset's labels, or a class dataset's one label, its positive class
    (the second of its two classes, PNEUMONIA unless the reader's
    positive_class names the other)."""
    return self.label_names or self.class_names[-1:]

  def label_code_counts(self, split):
    """{label name: {code: count}} of a multi-label split's raw codes
    (`schema.LABEL_CODES`, as ints), every code present (0 when absent)."""
    counts = self.split(split).get('label_code_counts', {})
    return {name: {code: int(counts.get(name, {}).get(str(code), 0))
                   for code in schema.LABEL_CODES}
            for name in self.label_names}

  @property
  def format_version(self):
    return int(self.raw['format_version'])

  @property
  def image_size(self):
    return (self.image_height, self.image_width)

  def num_examples(self, split):
    return int(self.split(split)['num_examples'])

  def class_counts(self, split):
    counts = self.split(split)['class_counts']
    return [int(counts.get(c, 0)) for c in self.class_names]

  def class_weights(self, split='train'):
    """Class weights as the reference notebook computes them ('balanced').

    weight_c = num_examples / (num_classes * count_c), the formula of
    `sklearn.utils.class_weight.compute_class_weight('balanced')` and of the
    TensorFlow pneumonia tutorial the notebook follows.

    Returns:
      dict class id -> float weight, as `Model.fit(class_weight=...)` takes.
    Raises:
      DatasetError: a class has no examples in the split.
    """
    counts = self.class_counts(split)
    total = sum(counts)
    weights = {}
    for class_id, count in enumerate(counts):
      if count == 0:
        raise DatasetError(
            f'class {self.class_names[class_id]} has no examples in split '
            f'{split!r}: class weights are undefined; re-split the dataset')
      weights[class_id] = total / (len(counts) * count)
    return weights

  def check_has_examples(self, split):
    """Raises DatasetError when the split is listed but holds no example.

    tf.data cannot even build a dataset of no shard files, and an empty
    validation or test split has no metric to report.
    """
    if not int(self.split(split).get('num_examples', 0)):
      raise DatasetError(
          f'split {split!r} of {self.data_dir} has no examples '
          f'({schema.INFO_FILENAME} lists it with none); re-convert with '
          'tools/make_tfrecords --overwrite (with --resplit and '
          f'--{split}_counts for val or test)')

  @property
  def has_content_hash(self):
    """Whether every shard's entry holds its content hash (datasets
    converted before the writer folded one do not)."""
    return all(CONTENT_KEY in shard for entry in self.splits.values()
               for shard in entry.get('shards', []))

  def fingerprint(self):
    """A digest of what the shards hold: the key of the disk cache
    (`cache.cache_key`) and of a resume (`resume.prepare_model_dir`), and
    the one to key any other cache of what a dataset holds.

    From xray_info.json alone, without reading the shards: the classes, the
    stored image, and each split's shards with their example counts, byte
    sizes (`DatasetBuilder.shard_paths` checks the sizes on disk) and
    content hashes (`ShardContentHash`, folded by the writer over every
    record's codes, image bytes and metadata). A conversion with other
    labels or images gives another; converting the same images again with
    the same arguments gives the same shards (the writer is deterministic),
    so the same fingerprint. The time of the conversion and the source path
    are left out for that reason. A dataset with random-salted patient ids
    (DICOM, multi-label) converted again without --patient_id_salt holds
    other ids, so gets another fingerprint.

    A dataset converted before content hashes has a fingerprint of the
    shard names, sizes and counts alone (the same value as then, so runs
    recorded then still resume); that is said once per process on stderr,
    since a relabelling that keeps them goes unnoticed.

    Returns:
      A hex string.
    """
    if not self.has_content_hash and self.data_dir not in (
        _said_no_content_hash):
      _said_no_content_hash.add(self.data_dir)
      print(f'warning: {os.path.join(self.data_dir, schema.INFO_FILENAME)} '
            'has no content hash (converted by an earlier version), so its '
            'fingerprint covers shard names, sizes and counts only and a '
            'relabelling that keeps them goes unnoticed by the disk cache and '
            'a resume; re-convert with tools/make_tfrecords --overwrite to '
            'add one', file=sys.stderr, flush=True)
    return hashlib.sha256(json.dumps(
        self.summary(), sort_keys=True).encode()).hexdigest()[:32]

  def summary(self):
    """What `fingerprint` digests, readable: {'class_names', 'image_size',
    'splits': {split: {'num_examples', 'num_bytes', 'class_counts',
    'shards', and, where every shard has one, 'content_sha256' (of the
    split's shard hashes)}}}."""
    splits = {}
    with_content = self.has_content_hash
    for name, entry in sorted(self.splits.items()):
      shards = [[s.get('filename'), s.get('num_examples'), s.get('num_bytes')]
                + ([s[CONTENT_KEY]] if with_content else [])
                for s in entry.get('shards', [])]
      splits[name] = {
          'num_examples': int(entry.get('num_examples', 0)),
          'num_bytes': sum(s[2] or 0 for s in shards),
          'class_counts': dict(entry.get('class_counts', {})),
          'shards': shards}
      if with_content:
        splits[name][CONTENT_KEY] = hashlib.sha256(
            ''.join(s[3] for s in shards).encode()).hexdigest()
    return {'format_version': self.format_version,
            'class_names': list(self.raw['class_names']),
            'image_size': list(self.image_size), 'splits': splits}

  def split(self, split):
    """The split's entry: {'num_examples', 'class_counts', 'shards'}.

    Raises:
      DatasetError: the dataset has no such split.
    """
    if split not in self.splits:
      raise DatasetError(
          f'split {split!r} is not in {self.data_dir} (it has '
          f'{", ".join(sorted(self.splits))}); pick one of those or '
          're-convert with tools/make_tfrecords')
    return self.splits[split]


def is_converted(data_dir):
  """Whether data_dir (a local path) holds a finished conversion, of any
  readable format."""
  return any(os.path.exists(os.path.join(data_dir, name))
             for name in (schema.INFO_FILENAME, schema.TFDS_INFO_FILENAME))


def load_info(data_dir):
  """Reads and checks the metadata of a converted dataset.

  `xray_info.json`, or, in a dataset converted before format 2, the
  `dataset_info.json` that held it. `data_dir` may be any `tf.io.gfile`
  path (local, gs://, ...).

  Returns:
    A `DatasetInfo`; its format_version says which keys the records use
    (see `schema.key`).
  Raises:
    DatasetError: the folder or file is missing, unreadable, not ours, of a
      format version this code does not read, or lacks the image entry.
  """
  raw = _read_json(data_dir)
  try:
    image = raw['image']
    return DatasetInfo(
        data_dir=data_dir,
        name=raw.get('name', schema.DEFAULT_NAME),
        class_names=tuple(raw['class_names']),
        image_height=int(image['height']),
        image_width=int(image['width']),
        channels=int(image.get('channels', 1)),
        splits=raw['splits'],
        raw=raw,
        layout=raw.get('layout'),
        src_dir=raw.get('src_dir'),
        extra_features=tuple(raw.get('extra_features', ())),
        dicom_voi=(raw.get('dicom') or {}).get('voi', DEFAULT_VOI),
        label_names=tuple(raw.get('label_names', ())))
  except (KeyError, TypeError, ValueError) as e:
    raise DatasetError(
        f'{os.path.join(data_dir, schema.INFO_FILENAME)} lacks or garbles '
        f'{e}; re-run tools/make_tfrecords --overwrite') from e


def _read_json(data_dir):
  """The checked metadata dict of data_dir (see `load_info`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  if not tf.io.gfile.exists(data_dir):
    raise DatasetError(
        f'data_dir {data_dir} does not exist: convert images first with '
        'tools/make_tfrecords --src_dir=... --out_dir=...')
  path = os.path.join(data_dir, schema.INFO_FILENAME)
  legacy = not tf.io.gfile.exists(path)
  if legacy:
    path = os.path.join(data_dir, schema.TFDS_INFO_FILENAME)
    if not tf.io.gfile.exists(path):
      raise DatasetError(
          f'{os.path.join(data_dir, schema.INFO_FILENAME)} not found: '
          f'{data_dir} is not a converted dataset (or its conversion did not '
          'finish); run tools/make_tfrecords first')
  try:
    with tf.io.gfile.GFile(path, 'r') as f:
      info = json.load(f)
  except ValueError as e:
    raise DatasetError(f'{path} is not valid JSON ({e}); '
                       're-run tools/make_tfrecords --overwrite') from e
  version = info.get('format_version') if isinstance(info, dict) else None
  if legacy and version is None:
    raise DatasetError(
        f'{data_dir} is a TFDS dataset that tools/make_tfrecords did not '
        f'write (it has no {schema.INFO_FILENAME}); read it with '
        'tfds.builder_from_directory, or convert the images with '
        'tools/make_tfrecords')
  if version not in schema.READABLE_VERSIONS or (legacy and version != 1):
    raise DatasetError(
        f'{path} has format_version {version}, this code reads '
        f'{", ".join(map(str, schema.READABLE_VERSIONS))}; re-run '
        'tools/make_tfrecords --overwrite')
  return info


def build_info(*, name, class_names, stored_size, resize_filter, splits,
               src_dir, layout, arguments, split_counts, counts, skipped,
               duplicates, ignored, created, timing, num_workers,
               extra_features=(), dicom_voi=None, decoding_packages=None,
               patient_id=None, label_names=None, unlabelled=None,
               split_info=None):
  """The xray_info.json dict of format `schema.FORMAT_VERSION`, from what the
  writer counted.

  Args:
    name: the dataset's name.
    class_names: class names in label order.
    stored_size: (height, width) of the stored images.
    resize_filter: the resize filter's name (`imaging.RESIZE_FILTER`).
    splits: split -> {'num_examples', 'class_counts', 'shards': [
      {'filename', 'num_examples', 'num_bytes'}]}.
    src_dir: the source folder (stored absolute).
    layout: the source layout's name.
    arguments: the conversion's arguments.
    split_counts: the drawn split's requested/actual counts, or None.
    counts: {'scanned', 'written', 'skipped', 'duplicates'}.
    skipped, duplicates, ignored: the writer's lists of files.
    created: the conversion's time stamp.
    timing: {'elapsed_seconds', 'decode_write_seconds'}; images_per_second
      is counts['written'] over the decode-and-write stage.
    num_workers: the conversion's worker processes.
    extra_features: keys of `schema.EXTRA_FEATURES` the records carry;
      stored only when there are some.
    dicom_voi: the VOI policy DICOM sources were converted with; None: no
      DICOM source, no 'dicom' entry.
    decoding_packages: {package: version} that decoded the DICOM sources.
    patient_id: how patient ids were made, in words (hashed ones), or None.
    label_names: a multi-label dataset's labels (then each split entry also
      holds 'label_code_counts': {label: {str(code): n}}), or None.
    unlabelled: a multi-label dataset's image files no label row names
      ([{'path', 'reason'}]), stored as 'unlabelled'; None: not stored.
    split_info: a multi-label dataset's split method and what it did
      ({'method', 'val_fraction', 'test_fraction', 'source_overlap',
      'patient_overlap'}): stored as 'split', its 'patient_overlap'
      ({'checked', 'patients_in_more_than_one_split'}) also at the top
      level; None: neither stored.

  Returns:
    The dict to write as xray_info.json.
  """
  info = {
      'format_version': schema.FORMAT_VERSION,
      'name': name,
      'class_names': list(class_names),
      'image': {'height': stored_size[0], 'width': stored_size[1],
                'channels': 1, 'encoding': 'png', 'dtype': 'uint8',
                'resize': 'squash', 'resize_filter': resize_filter},
      'splits': splits,
      'src_dir': os.path.abspath(src_dir),
      'layout': layout,
      'arguments': arguments,
      'split_counts': split_counts,
      'counts': counts,
      'skipped': skipped,
      'duplicates': duplicates,
      'ignored': ignored,
      'created': created,
      'elapsed_seconds': timing['elapsed_seconds'],
      'decode_write_seconds': timing['decode_write_seconds'],
      'images_per_second': round(
          counts['written'] / max(timing['decode_write_seconds'], 1e-3), 1),
      'num_workers': num_workers,
  }
  if extra_features:
    info['extra_features'] = list(extra_features)
  if dicom_voi is not None:
    info['dicom'] = {'voi': dicom_voi, 'packages': decoding_packages}
  if patient_id is not None:
    info['patient_id'] = patient_id
  if label_names is not None:
    info['label_names'] = list(label_names)
  if unlabelled is not None:
    info['unlabelled'] = unlabelled
  if split_info is not None:
    info['split'] = {k: v for k, v in split_info.items()
                     if k != 'patient_overlap'}
    info['patient_overlap'] = split_info['patient_overlap']
  return info
