"""Tiny hand-written datasets in the on-disk format (independent of the writer)."""

import io
import json
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from xray_tfdata import dataset_info
from xray_tfdata import schema

H, W = 12, 10


def png_bytes(pixels):
  """One grey image (uint8 [H, W] or [H, W, 1]) as PNG bytes."""
  pixels = np.asarray(pixels, np.uint8)
  if pixels.ndim == 3:
    pixels = pixels[..., 0]
  buf = io.BytesIO()
  Image.fromarray(pixels, mode='L').save(buf, format='PNG')
  return buf.getvalue()


def shard_bytes(out_dir, metadata=False):
  """{file name: bytes} of a converted dataset's shards; with metadata,
  also its TFDS files (every file but xray_info.json, which records the
  conversion's time)."""
  out = {}
  for name in sorted(os.listdir(out_dir)):
    if schema.parse_shard_filename(name) or (
        metadata and name != schema.INFO_FILENAME and
        os.path.isfile(os.path.join(out_dir, name))):
      with open(os.path.join(out_dir, name), 'rb') as f:
        out[name] = f.read()
  return out


# Format 1's keys of the image and the label, as the converter wrote them
# before issue 13: written out here, not taken from schema, so that a reader
# that lost the old keys fails against them (issue 24).
FORMAT_1_KEYS = {'image': 'image/encoded', 'label': 'image/class/label'}


def _as_format_1(record):
  """The same example under format 1's keys (before issue 13)."""
  from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top
  example = example_pb2.Example.FromString(record)
  feature = example.features.feature
  for name, old_name in FORMAT_1_KEYS.items():
    feature[old_name].CopyFrom(feature[name])
    del feature[name]
  return example.SerializeToString(deterministic=True)


def write_dataset(root, split_sizes=None, num_shards=3, size=(H, W),
                  learnable=False, format_version=schema.FORMAT_VERSION):
  """Writes `split -> (num_normal, num_pneumonia)` with known pixels.

  Image i of a split is filled with the value i (so order and content can be
  checked), label = class id. With `learnable`, images are noise with a
  bright square for PNEUMONIA instead, something a tiny model can learn.

  format_version 1 writes what versions before issue 13 wrote: the old keys
  and our metadata in dataset_info.json.

  Returns:
    {split: [(pixels, label, filename)]} in the order written.
  """
  split_sizes = split_sizes or {'train': (5, 9), 'val': (2, 3)}
  height, width = size
  rng = np.random.default_rng(0)
  info = {'format_version': format_version, 'name': 'tiny',
          'class_names': list(schema.DEFAULT_CLASS_NAMES),
          'image': {'height': height, 'width': width, 'channels': 1,
                    'encoding': 'png', 'dtype': 'uint8'},
          'splits': {}}
  expected = {}
  for split, (n0, n1) in split_sizes.items():
    labels = [0] * n0 + [1] * n1
    rng.shuffle(labels)
    examples = []
    for i, label in enumerate(labels):
      if learnable:
        pixels = rng.integers(0, 120, (height, width)).astype(np.uint8)
        if label:
          pixels[height // 4:height // 2, width // 4:width // 2] = 220
      else:
        pixels = np.full((height, width), i, np.uint8)
        pixels[0, 0] = 255  # not a constant image
      examples.append((pixels, label, f'{split}/{i}.jpeg'))
    expected[split] = examples
    shards = []
    bounds = np.linspace(0, len(examples), num_shards + 1).astype(int)
    for s in range(num_shards):
      fname = schema.shard_filename('tiny', split, s, num_shards)
      content = dataset_info.ShardContentHash()
      with tf.io.TFRecordWriter(os.path.join(root, fname)) as w:
        for pixels, label, name in examples[bounds[s]:bounds[s + 1]]:
          record = schema.encode_example(
              png_bytes(pixels), height, width, label,
              schema.DEFAULT_CLASS_NAMES[label], name, f'patient{label}', 100,
              80)
          if format_version == 1:
            record = _as_format_1(record)
          w.write(record)
          content.update(record)
      shards.append({'filename': fname,
                     'num_examples': int(bounds[s + 1] - bounds[s]),
                     'num_bytes': os.path.getsize(os.path.join(root, fname)),
                     # As the writer folds it (xray_info.json, format 2).
                     **({dataset_info.CONTENT_KEY: content.hexdigest()}
                        if format_version != 1 else {})})
    info['splits'][split] = {
        'num_examples': len(examples),
        'class_counts': {'NORMAL': n0, 'PNEUMONIA': n1},
        'shards': shards}
  info_file = (schema.TFDS_INFO_FILENAME if format_version == 1 else
               schema.INFO_FILENAME)
  with open(os.path.join(root, info_file), 'w') as f:
    json.dump(info, f)
  return expected




def _split_entry(root, name, split, records, num_shards):
  """Writes a split's serialized records into num_shards TFDS-named shards;
  returns their xray_info.json entries."""
  shards = []
  bounds = np.linspace(0, len(records), num_shards + 1).astype(int)
  for s in range(num_shards):
    fname = schema.shard_filename(name, split, s, num_shards)
    content = dataset_info.ShardContentHash()
    with tf.io.TFRecordWriter(os.path.join(root, fname)) as w:
      for record in records[bounds[s]:bounds[s + 1]]:
        w.write(record)
        content.update(record)
    shards.append({'filename': fname,
                   'num_examples': int(bounds[s + 1] - bounds[s]),
                   'num_bytes': os.path.getsize(os.path.join(root, fname)),
                   dataset_info.CONTENT_KEY: content.hexdigest()})
  return shards


def write_multilabel_dataset(root, label_names, rows, num_shards=2,
                             size=(H, W), learnable=False, seed=0,
                             images=None, label_methods=None):
  """Writes a multi-label dataset: `rows` = {split: [(codes, view)]}, codes
  one raw code (schema.LABEL_CODES) per label name.

  Image i of a split is filled with the value i (pixel [0, 0] 255), as
  write_dataset's; with `learnable`, noise with a bright band for each
  label whose code is positive (or uncertain), something a tiny model can
  learn; `images` = {split: [uint8 [H, W]]}, one per row, are stored as
  given instead. Sex, age and study id are drawn from i; `label_methods` =
  {split: [str]}, one per row, are stored as PadChest's MethodLabel
  (schema.LABEL_METHOD, listed in extra_features). The metadata comes
  from dataset_info.build_info with the code counts of the rows.

  Returns:
    {split: [{'pixels', 'codes', 'view', 'filename', 'patient_id', 'sex',
    'age_years', 'study_id'}]} in the order written.
  """
  from xray_tfdata import dataset_info  # pylint: disable=g-import-not-at-top
  height, width = size
  rng = np.random.default_rng(seed)
  band = max(1, height // (2 * len(label_names)))
  splits, expected = {}, {}
  for split, split_rows in rows.items():
    examples, records = [], []
    for i, (codes, view) in enumerate(split_rows):
      if images is not None:
        pixels = images[split][i]
      elif learnable:
        pixels = rng.integers(0, 100, (height, width)).astype(np.uint8)
        for index, code in enumerate(codes):
          if code in (schema.POSITIVE, schema.UNCERTAIN):
            pixels[2 * index * band:(2 * index + 1) * band] = 230
      else:
        pixels = np.full((height, width), i % 256, np.uint8)
        pixels[0, 0] = 255
      example = {'pixels': pixels, 'codes': list(codes), 'view': view,
                 'filename': f'{split}/p{i}/view{i}.png',
                 'patient_id': f'patient{split}{i // 2}',
                 'sex': 'FM'[i % 2], 'age_years': 20 + i,
                 'study_id': f'study{split}{i}'}
      examples.append(example)
      records.append(schema.encode_example(
          png_bytes(pixels), height, width, None, None, example['filename'],
          example['patient_id'], 100, 80, labels=example['codes'],
          view=view, sex=example['sex'], age_years=example['age_years'],
          study_id=example['study_id'],
          label_method=label_methods[split][i] if label_methods else None))
    expected[split] = examples
    codes = np.array([e['codes'] for e in examples], np.int64).reshape(
        len(examples), len(label_names))
    splits[split] = {
        'num_examples': len(examples),
        'class_counts': {name: int((codes[:, l] == schema.POSITIVE).sum())
                         for l, name in enumerate(label_names)},
        'label_code_counts': {
            name: {str(code): int((codes[:, l] == code).sum())
                   for code in schema.LABEL_CODES}
            for l, name in enumerate(label_names)},
        'shards': _split_entry(root, 'tinyml', split, records, num_shards)}
  total = sum(len(e) for e in expected.values())
  info = dataset_info.build_info(
      name='tinyml', class_names=label_names, stored_size=size,
      resize_filter='lanczos', splits=splits, src_dir=root,
      layout='multilabel_test', arguments={}, split_counts=None,
      counts={'scanned': total, 'written': total, 'skipped': 0,
              'duplicates': 0},
      skipped=[], duplicates=[], ignored=[], created='2026-01-01T00:00:00',
      timing={'elapsed_seconds': 1.0, 'decode_write_seconds': 1.0},
      num_workers=1, label_names=label_names,
      extra_features=(schema.LABEL_METHOD,) if label_methods else ())
  with open(os.path.join(root, schema.INFO_FILENAME), 'w') as f:
    json.dump(info, f)
  return expected
