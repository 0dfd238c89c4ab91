"""The on-disk format: TFRecord feature schema, shard names, metadata files.

A converted dataset is a TFDS dataset: TFDS-named shards, TFDS' own
`dataset_info.json` and `features.json` (written by `tfds_metadata`), and
our richer metadata in `xray_info.json`, whose layout and reading
`xray_tfdata.dataset_info` owns.

Format versions:
  2 (now): feature keys 'image' (PNG) and 'label' (class id), the keys
    `as_supervised` needs (TFDS' image_folder uses the same); metadata in
    xray_info.json.
  1 (the first): keys 'image/encoded' and 'image/class/label'; our
    metadata in dataset_info.json (where TFDS expects its own), so TFDS
    cannot read it. `DatasetBuilder` still reads it; re-convert to use tfds.

Extra features (format 2; `EXTRA_FEATURES`): RSNA's detailed class and
lung-opacity boxes (`RSNA_FEATURES`), PadChest's label method
(`PADCHEST_FEATURES`); the labelled boxes of NIH and VinDr-CXR
(`LABELLED_BOX_KEYS`), VinDr-CXR's reader counts (`READER_FEATURES`) and
SIIM-ACR's pneumothorax mask (`MASK`, which `parse` returns when asked).
Their keys are listed in xray_info.json's 'extra_features' and declared in
TFDS' features.json; `parse` and `DatasetBuilder` ignore them (but the
reader policies read VinDr-CXR's reader counts), as
`tf.io.parse_single_example` ignores keys its spec does not name, so a
reader of the base schema reads an RSNA dataset unchanged. Kermany datasets
have none of them.

Defined once here and imported by the writer and the reader, so the two
cannot drift apart. Building an example needs only the protobuf classes, but
parsing needs TensorFlow; TensorFlow is imported lazily so that the
conversion worker processes (which only decode and resize with PIL) start
fast.
"""

import os
import re

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
INFO_FILENAME = 'xray_info.json'
# TFDS' metadata file; format 1 kept ours under this name.
TFDS_INFO_FILENAME = 'dataset_info.json'
DEFAULT_NAME = 'kermany'
DEFAULT_CLASS_NAMES = ('NORMAL', 'PNEUMONIA')
SPLITS = ('train', 'val', 'test')

# Feature keys, in the names TFDS (and TF Model Garden) use.
ENCODED = 'image'
FORMAT = 'image/format'
HEIGHT = 'image/height'
WIDTH = 'image/width'
LABEL = 'label'
CLASS_TEXT = 'image/class/text'
FILENAME = 'image/filename'
PATIENT_ID = 'image/patient_id'
ORIGINAL_HEIGHT = 'image/original/height'
ORIGINAL_WIDTH = 'image/original/width'

# RSNA's extras. Boxes in the stored image's pixels (x, y: top-left corner;
# see `imaging.stored_box`), one value per box in each of the four lists,
# empty for an image without boxes (RSNA's Target 0).
DETAILED_CLASS = 'image/class/detailed'
BOX_X = 'image/object/box/x'
BOX_Y = 'image/object/box/y'
BOX_WIDTH = 'image/object/box/width'
BOX_HEIGHT = 'image/object/box/height'
BOX_KEYS = (BOX_X, BOX_Y, BOX_WIDTH, BOX_HEIGHT)
# key -> documentation; the keys an RSNA dataset adds, in this order.
RSNA_FEATURES = {
    DETAILED_CLASS: "RSNA's detailed class (stage_2_detailed_class_info.csv): "
                    "'Normal', 'No Lung Opacity / Not Normal' or 'Lung "
                    "Opacity'",
    BOX_X: 'left edge of each lung-opacity box, stored-image pixels',
    BOX_Y: 'top edge of each lung-opacity box, stored-image pixels',
    BOX_WIDTH: 'width of each lung-opacity box, stored-image pixels',
    BOX_HEIGHT: 'height of each lung-opacity box, stored-image pixels',
}

# A multi-label source's boxes (NIH's BBox_List_2017.csv, VinDr-CXR's
# readers' boxes): `BOX_KEYS` (stored pixels) plus, per box, the label it
# marks (an index into xray_info.json's 'label_names') and the reader who
# drew it ('' where the source names none: NIH, VinDr's test consensus).
# An RSNA dataset keeps `BOX_KEYS` alone (every box is a lung opacity).
BOX_LABEL = 'image/object/box/label'
BOX_READER = 'image/object/box/reader'
LABELLED_BOX_KEYS = BOX_KEYS + (BOX_LABEL, BOX_READER)
# VinDr-CXR keeps every reader: per image how many radiologists read it
# (1 for a consensus), and per label how many of them marked it. `LABELS`
# then holds 1 where at least one reader marked the label, else 0 (the
# union torchxrayvision takes); a reader policy (`labels.READER_POLICIES`)
# chooses at read time.
NUM_READERS = 'image/readers'
MARKED_BY = 'labels/marked_by'
READER_FEATURES = (NUM_READERS, MARKED_BY)
# PadChest's extra: how an image's labels were made (its MethodLabel), so
# that a test split can keep the physician-labelled images. Listed in
# extra_features like RSNA's; the reader's spec does not name it.
LABEL_METHOD = 'image/label_method'
PADCHEST_FEATURES = {
    LABEL_METHOD: "how the labels were made, as the source says (PadChest's "
                  "MethodLabel: 'Physician' or 'RNN_model')",
}

# SIIM-ACR's extra: the union of an image's pneumothorax regions at the
# stored size, a PNG like the image (uint8 [height, width], each pixel the
# share of its area in the regions times 255; inside: >= MASK_INSIDE; see
# `sources.rle`). Every record of a SIIM dataset has one (all zero for an
# image without pneumothorax); other datasets have none.
MASK = 'image/mask'
MASK_INSIDE = 128

# key -> documentation of every extra feature (xray_info.json's
# 'extra_features' lists those a dataset's records carry).
EXTRA_FEATURES = {
    **RSNA_FEATURES,
    **PADCHEST_FEATURES,
    BOX_LABEL: 'label of each box: index into label_names',
    BOX_READER: "reader (radiologist id) of each box; '' where the source "
                'names none',
    NUM_READERS: 'readers who read the image (1: a consensus)',
    MARKED_BY: 'per label, the readers who marked it, in the order of '
               'label_names',
    MASK: 'union of the pneumothorax regions at the stored size, PNG, '
          'uint8: the share of each pixel in them times 255 (inside: >= '
          f'{MASK_INSIDE}); all zero without pneumothorax',
}

# Multi-label datasets (NIH ChestX-ray14, CheXpert, MIMIC-CXR-JPG, a
# user's labelled CSV): `LABELS` holds the source's raw code per label, in
# the order of xray_info.json's 'label_names', never a policy applied to it
# (`xray_tfdata.labels` maps codes to training targets at read time). Such
# a record has no LABEL or CLASS_TEXT; it has the `MULTILABEL_FEATURES`
# where the source gives them ('' or -1 where it does not).
LABELS = 'labels'
POSITIVE, NEGATIVE, UNCERTAIN, NOT_MENTIONED = 1, 0, -1, -2
LABEL_CODES = (POSITIVE, NEGATIVE, UNCERTAIN, NOT_MENTIONED)
VIEW = 'image/view'
SEX = 'image/sex'
AGE_YEARS = 'image/age_years'
STUDY_ID = 'image/study_id'
MULTILABEL_FEATURES = {
    VIEW: "view position as the source spells it ('PA', 'AP', 'LL', "
          "'LATERAL', ...); '' when unknown",
    SEX: "'F', 'M', or '' when unknown",
    AGE_YEARS: 'age in whole years at the study; -1 when unknown',
    STUDY_ID: 'study key (a salted hash where it identifies a person); '
              "'' when the source has none",
}

_BYTES_KEYS = (ENCODED, FORMAT, CLASS_TEXT, FILENAME, PATIENT_ID)
_INT_KEYS = (HEIGHT, WIDTH, LABEL, ORIGINAL_HEIGHT, ORIGINAL_WIDTH)
# Format 1's names of the two keys that changed.
_V1_KEYS = {ENCODED: 'image/encoded', LABEL: 'image/class/label'}


def key(name, format_version=FORMAT_VERSION):
  """The record key of feature `name` (a key of the current format) in a
  dataset of `format_version`."""
  return _V1_KEYS.get(name, name) if format_version == 1 else name


def encode_example(png, height, width, label, class_text, filename,
                   patient_id, original_height, original_width,
                   detailed_class=None, boxes=None, *, labels=None,
                   view=None, sex=None, age_years=None, study_id=None,
                   label_method=None, box_labels=None,
                   box_readers=None, num_readers=None, marked_by=None,
                   mask=None):
  """Serializes one image and its metadata as a `tf.train.Example`.

  Args:
    png: PNG bytes of the stored image (single channel, uint8).
    height, width: stored image size in pixels.
    label: integer class id.
    class_text: class name, e.g. 'PNEUMONIA'.
    filename: source path relative to the source folder (RSNA: the
      patientId in it replaced by its hash).
    patient_id: best-effort patient grouping key parsed from the file name
      (RSNA: a salted hash, see `writer.hashed_patient_id`).
    original_height, original_width: size of the source image.
    detailed_class: RSNA's detailed class, or None (not stored).
    boxes: [(x, y, width, height)] in stored-image pixels, or None (not
      stored; an empty list stores four empty lists).
    labels: a multi-label record's raw codes (`LABEL_CODES`), one per
      label name; then label and class_text are None (not stored) and the
      `MULTILABEL_FEATURES` are stored, '' or -1 where given as None.
    view, sex, age_years, study_id: see `MULTILABEL_FEATURES`.
    label_method: `LABEL_METHOD`, or None (not stored).
    box_labels, box_readers: per box its label index and reader
      (`BOX_LABEL`, `BOX_READER`), or None (not stored).
    num_readers, marked_by: `READER_FEATURES` (int, and one int per
      label), or None (not stored).
    mask: PNG bytes of the stored mask (`MASK`), or None (not stored).

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
  if labels is None:
    put_int(LABEL, label)
    put_bytes(CLASS_TEXT, class_text)
  else:
    bad = [code for code in labels if code not in LABEL_CODES]
    if bad:
      raise ValueError(f'label codes {bad} are not in {LABEL_CODES}')
    feature[LABELS].int64_list.value.extend(int(code) for code in labels)
    put_bytes(VIEW, view or '')
    put_bytes(SEX, sex or '')
    put_int(AGE_YEARS, -1 if age_years is None else age_years)
    put_bytes(STUDY_ID, study_id or '')
  put_bytes(FILENAME, filename)
  put_bytes(PATIENT_ID, patient_id)
  put_int(ORIGINAL_HEIGHT, original_height)
  put_int(ORIGINAL_WIDTH, original_width)
  if detailed_class is not None:
    put_bytes(DETAILED_CLASS, detailed_class)
  if label_method is not None:
    put_bytes(LABEL_METHOD, label_method)
  if boxes is not None:
    for index, box_key in enumerate(BOX_KEYS):
      # Created even when empty, so every RSNA example has the same keys.
      feature[box_key].float_list.value.extend(
          float(box[index]) for box in boxes)
  if box_labels is not None:
    feature[BOX_LABEL].int64_list.value.extend(int(i) for i in box_labels)
    feature[BOX_READER].bytes_list.value.extend(
        r.encode('utf-8') for r in box_readers)
  if num_readers is not None:
    put_int(NUM_READERS, num_readers)
    feature[MARKED_BY].int64_list.value.extend(int(k) for k in marked_by)
  if mask is not None:
    put_bytes(MASK, mask)
  # deterministic: map fields in sorted order, so the same inputs give the
  # same bytes in every process (protobuf map order is hash-seeded).
  return example.SerializeToString(deterministic=True)


def feature_spec(format_version=FORMAT_VERSION, num_labels=0, mask=False,
                 texts=()):
  """Returns the `tf.io.parse_example` spec for the schema.

  Keyed by the current format's names (`ENCODED`, `LABEL`, ...) whatever
  the version, so readers need not care which one a dataset has.

  Args:
    format_version: the dataset's format version.
    num_labels: a multi-label dataset's number of label names (adds
      `LABELS` as a fixed-length [num_labels] int64 and the
      `MULTILABEL_FEATURES`); 0 for a single-label dataset.
    mask: add `MASK` (a dataset whose 'extra_features' list it).
    texts: text extra features to add ('' where a record has none), e.g.
      `DETAILED_CLASS`, `LABEL_METHOD`.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  spec = {k: tf.io.FixedLenFeature([], tf.string, default_value='')
          for k in _BYTES_KEYS + tuple(texts)}
  spec.update({k: tf.io.FixedLenFeature([], tf.int64, default_value=-1)
               for k in _INT_KEYS})
  if num_labels:
    spec[LABELS] = tf.io.FixedLenFeature([num_labels], tf.int64)
    spec.update({k: tf.io.FixedLenFeature([], tf.string, default_value='')
                 for k in (VIEW, SEX, STUDY_ID)})
    spec[AGE_YEARS] = tf.io.FixedLenFeature([], tf.int64, default_value=-1)
  if mask:
    spec[MASK] = tf.io.FixedLenFeature([], tf.string)
  return {key(k, format_version): v for k, v in spec.items()}


def reader_spec(num_labels):
  """The `tf.io.parse_example` spec of `READER_FEATURES` (VinDr-CXR's
  readers and marks) for a dataset of `num_labels` labels."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  return {NUM_READERS: tf.io.FixedLenFeature([], tf.int64),
          MARKED_BY: tf.io.FixedLenFeature([num_labels], tf.int64)}


def parse(record, format_version=FORMAT_VERSION, num_labels=0, mask=False,
          texts=()):
  """Parses one serialized example into a dict under the current names
  (with `LABELS` and the `MULTILABEL_FEATURES` when num_labels > 0, `MASK`
  with mask, the text extra features `texts`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  parsed = tf.io.parse_single_example(
      record, feature_spec(format_version, num_labels, mask, texts))
  names = _BYTES_KEYS + tuple(texts) + _INT_KEYS
  if num_labels:
    names += (LABELS,) + tuple(MULTILABEL_FEATURES)
  if mask:
    names += (MASK,)
  return {name: parsed[key(name, format_version)] for name in names}


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


# TFDS' default shard template, which shard_filename follows.
TFDS_FILENAME_TEMPLATE = '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'


def tfds_features(class_names, height, width, extra_features=(),
                  label_names=None):
  """The schema as a `tfds.features.FeaturesDict` (imports TFDS).

  Args:
    class_names: the dataset's classes.
    height, width: stored image size.
    extra_features: keys of `EXTRA_FEATURES` the records carry.
    label_names: a multi-label dataset's labels: then `LABELS` (int64 [L]
      raw codes) and the `MULTILABEL_FEATURES` replace `LABEL` and
      `CLASS_TEXT`; None for a single-label dataset.

  Raises:
    ValueError: an unknown extra feature.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets import features  # pylint: disable=g-import-not-at-top

  def text(doc):
    return features.Text(doc=doc)

  def scalar(doc):
    return features.Scalar(dtype=np.int64, doc=doc)

  def boxes(doc):
    # Variable length: TFDS parses it as a FixedLenSequenceFeature, which
    # reads the float list the writer stores, empty or not.
    return features.Tensor(shape=(None,), dtype=np.float32, doc=doc)

  unknown = sorted(set(extra_features) - set(EXTRA_FEATURES))
  if unknown:
    raise ValueError(f'unknown extra features {unknown}')
  kinds = {DETAILED_CLASS: text, LABEL_METHOD: text, NUM_READERS: scalar, BOX_READER: lambda doc:
           features.Tensor(shape=(None,), dtype=np.str_, doc=doc),
           BOX_LABEL: lambda doc: features.Tensor(shape=(None,),
                                                  dtype=np.int64, doc=doc),
           MARKED_BY: lambda doc: features.Tensor(
               shape=(len(label_names or ()),), dtype=np.int64, doc=doc),
           MASK: lambda doc: features.Image(
               shape=(height, width, 1), dtype=np.uint8,
               encoding_format='png', doc=doc)}
  extras = {k: kinds.get(k, boxes)(EXTRA_FEATURES[k]) for k in extra_features}
  if label_names:
    target = {
        LABELS: features.Tensor(
            shape=(len(label_names),), dtype=np.int64,
            doc='raw code per label (1 positive, 0 negative, -1 uncertain, '
                '-2 not mentioned), in the order: ' + ', '.join(label_names)),
        AGE_YEARS: scalar(MULTILABEL_FEATURES[AGE_YEARS]),
        **{k: text(MULTILABEL_FEATURES[k]) for k in (VIEW, SEX, STUDY_ID)}}
  else:
    target = {LABEL: features.ClassLabel(names=list(class_names)),
              CLASS_TEXT: text('class name')}
  return features.FeaturesDict({
      ENCODED: features.Image(shape=(height, width, 1), dtype=np.uint8,
                              encoding_format='png',
                              doc='grayscale, squashed to the stored size'),
      **target,
      FORMAT: text('encoding of the image: png'),
      HEIGHT: scalar('stored height in pixels'),
      WIDTH: scalar('stored width in pixels'),
      FILENAME: text('source path relative to the source folder'),
      PATIENT_ID: text('patient grouping key: parsed from the file name, '
                       'or (RSNA, the multi-label sets) a salted hash of the '
                       "source's patient id"),
      ORIGINAL_HEIGHT: scalar('height of the source image'),
      ORIGINAL_WIDTH: scalar('width of the source image'),
      **extras,
  })


def write_tfds_metadata(data_dir, info):
  """Writes TFDS' `dataset_info.json`, `features.json` and the class names
  (`label.labels.txt`) with TFDS' own classes, so that
  `tfds.builder_from_directory(data_dir)` reads the dataset.

  Imports TensorFlow Datasets: call it in the converting process only, never
  in its workers.

  Args:
    data_dir: the folder holding the shards (local).
    info: our metadata (what goes into xray_info.json).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  split_infos = [
      tfds.core.SplitInfo(
          name=split,
          shard_lengths=[s['num_examples'] for s in entry['shards']],
          num_bytes=sum(s['num_bytes'] for s in entry['shards']))
      for split, entry in info['splits'].items()]
  image = info['image']
  counts = ', '.join(f'{split} {entry["num_examples"]}'
                     for split, entry in info['splits'].items())
  tfds.folder_dataset.write_metadata(
      data_dir=data_dir,
      features=tfds_features(info['class_names'], image['height'],
                             image['width'],
                             info.get('extra_features', ()),
                             info.get('label_names')),
      split_infos=split_infos,
      filename_template=TFDS_FILENAME_TEMPLATE,
      check_data=False,  # the tests read it with TFDS; this saves seconds
      description=(
          f'Chest X-rays ({", ".join(info["class_names"])}), '
          f'{image["height"]}x{image["width"]} grayscale PNG, converted by '
          f'xray_tfdata (examples: {counts}). The converter\'s full record '
          f'(sources, duplicates, skipped files) is in {INFO_FILENAME}.'),
      supervised_keys=(ENCODED, LABELS if info.get('label_names') else LABEL))
