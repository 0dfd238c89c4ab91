"""Tiny datasets and runs for the evaluation's tests: a multi-label
dataset whose quarters carry the labels, a model of quarter means, an
RSNA-like dataset with boxes, a Kermany-like dataset relabelled, and a
run directory around a given model."""

import json
import os

import numpy as np
import tensorflow as tf

from records import png_bytes
from xray_tfdata import dataset_info
from xray_tfdata import run_dir
from xray_tfdata import schema

SIZE = 16


def write_multilabel(root, label_names, split_sizes, seed, images_per_patient=3,
                     layout='csv'):
  """A tiny multi-label dataset: image i's brightness in quarter q is
  its label q's signal, so a model of per-quarter means scores it; its
  label names spelled as `layout`'s (vocabulary.py: 'nih', 'chexpert', or
  'csv', the vocabulary's own names).

  Returns:
    {split: (codes int [N, L], images uint8 [N, S, S, 1], patient ids)}.
  """
  rng = np.random.default_rng(seed)
  os.makedirs(root)
  splits, written = {}, {}
  for split, n in split_sizes.items():
    codes = rng.choice(schema.LABEL_CODES, (n, len(label_names)),
                       p=(0.35, 0.45, 0.1, 0.1))
    images = rng.integers(40, 90, (n, SIZE, SIZE)).astype(np.uint8)
    for i in range(n):
      for q in range(min(len(label_names), 4)):
        if codes[i, q] in (schema.POSITIVE, schema.UNCERTAIN):
          r, c = divmod(q, 2)
          images[i, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += np.uint8(
              rng.integers(20, 120))
    ids = [f'{split}-p{i // images_per_patient}' for i in range(n)]
    name = schema.shard_filename('tiny', split, 0, 1)
    with tf.io.TFRecordWriter(os.path.join(root, name)) as writer:
      for i in range(n):
        writer.write(schema.encode_example(
            png_bytes(images[i]), SIZE, SIZE, None, None, f'{split}/{i}.png',
            ids[i], SIZE, SIZE, labels=codes[i].tolist(),
            view='PA' if i % 2 else 'AP', sex='F' if i % 3 else 'M',
            age_years=20 + i % 60))
    splits[split] = {
        'num_examples': n,
        'class_counts': {l: int((codes[:, j] == 1).sum())
                         for j, l in enumerate(label_names)},
        'label_code_counts': {
            l: {str(c): int((codes[:, j] == c).sum())
                for c in schema.LABEL_CODES}
            for j, l in enumerate(label_names)},
        'shards': [{'filename': name, 'num_examples': n,
                    'num_bytes': os.path.getsize(os.path.join(root, name))}]}
    written[split] = (codes, images[..., None], np.array(ids))
  info = dataset_info.build_info(
      name='tiny', class_names=label_names, stored_size=(SIZE, SIZE),
      resize_filter='box', splits=splits, src_dir=root, layout=layout,
      arguments={}, split_counts=None,
      counts={'scanned': 0, 'written': 0, 'skipped': 0, 'duplicates': 0},
      skipped=[], duplicates=[], ignored=[], created='now',
      timing={'elapsed_seconds': 0, 'decode_write_seconds': 0},
      num_workers=1, label_names=label_names)
  with open(os.path.join(root, schema.INFO_FILENAME), 'w') as f:
    json.dump(info, f)
  return written


def quarter_model(num_outputs, bias=-0.3):
  """uint8 [S, S, 1] -> sigmoid(10 * (mean of quarter q / 255) + bias) for
  q < num_outputs: a 1x1 conv, so that Grad-CAM has a Conv2D."""
  import keras  # pylint: disable=g-import-not-at-top
  keras.mixed_precision.set_global_policy('float32')
  inputs = keras.Input((SIZE, SIZE, 1), dtype='uint8')
  x = keras.layers.Rescaling(1 / 255)(inputs)
  x = keras.layers.Conv2D(1, 1, kernel_initializer='ones',
                          bias_initializer='zeros')(x)
  x = keras.layers.AveragePooling2D(8)(x)  # [2, 2]: the four quarters
  x = keras.layers.Flatten()(x)
  kernel = np.zeros((4, num_outputs), np.float32)
  for q in range(num_outputs):
    kernel[q % 4, q] = 10.0
  outputs = keras.layers.Dense(
      num_outputs, activation='sigmoid', dtype='float32',
      kernel_initializer=keras.initializers.Constant(kernel),
      bias_initializer=keras.initializers.Constant(bias * 10))(x)
  return keras.Model(inputs, outputs)


def write_run(model_dir, net, data_dir, label_names=None, results=None):
  """A finished run's folder around net: config.json (flat, as tools/train
  writes it) and results.json."""
  os.makedirs(model_dir, exist_ok=True)
  net.save(os.path.join(model_dir, run_dir.MODEL_FILE))
  config = {'image_size': SIZE, 'batch_size': 8, 'data_dir': data_dir,
            'bootstrap_resamples': 50, 'seed': 0}
  if label_names:
    config.update(label_names=list(label_names), label_policy='u_ones')
  with open(os.path.join(model_dir, run_dir.CONFIG_JSON), 'w') as f:
    json.dump(config, f)
  with open(os.path.join(model_dir, run_dir.RESULTS_JSON), 'w') as f:
    json.dump(results or {}, f, default=float)


def write_boxes_dataset(root, n=24, scale=1):
  """An RSNA-like single-label dataset with boxes: positive images have a
  bright spot at a known place, inside their box for 3 in 4 of them and
  outside it for the rest; negatives have no box. scale: the stored
  size in units of SIZE (the spot is then scale x scale pixels)."""
  os.makedirs(root)
  rng = np.random.default_rng(5)
  size = SIZE * scale
  splits, hits = {}, []
  for split in ('val', 'test'):
    name = schema.shard_filename('rsna', split, 0, 1)
    labels = np.array([0, 1] * (n // 2))
    with tf.io.TFRecordWriter(os.path.join(root, name)) as writer:
      for i, label in enumerate(labels):
        image = rng.integers(40, 60, (size, size)).astype(np.uint8)
        boxes = []
        if label:
          image[2 * scale:6 * scale, 2 * scale:6 * scale] += 60  # quarter 0
          boxes = [(1.0 * scale, 1.0 * scale, 6.0 * scale, 6.0 * scale)]
          inside = (i // 2) % 4 != 3
          row, column = (3, 3) if inside else (12, 12)
          image[row * scale:(row + 1) * scale,
                column * scale:(column + 1) * scale] = 255
          if split == 'test':
            hits.append(inside)
        writer.write(schema.encode_example(
            png_bytes(image), size, size, int(label), ('NORMAL', 'PNEUMONIA')[label],
            f'{split}/{i}.dcm', f'{split}-{i // 4}', size, size,
            detailed_class='Lung Opacity' if label else 'Normal',
            boxes=boxes))
    splits[split] = {'num_examples': n,
                     'class_counts': {'NORMAL': n // 2, 'PNEUMONIA': n // 2},
                     'shards': [{'filename': name, 'num_examples': n,
                                 'num_bytes': os.path.getsize(
                                     os.path.join(root, name))}]}
  info = {'format_version': 2, 'name': 'rsna',
          'class_names': ['NORMAL', 'PNEUMONIA'],
          'image': {'height': size, 'width': size, 'channels': 1},
          'splits': splits, 'layout': 'rsna',
          'extra_features': list(schema.RSNA_FEATURES)}
  with open(os.path.join(root, schema.INFO_FILENAME), 'w') as f:
    json.dump(info, f)
  return np.array(hits)


def relabel(src_dir, dst_dir, class_names, label_of, name_of=None,
            patient_of=None, layout=None):
  """Copies a records.write_dataset dataset, with other class names, label
  ids, file names or patient ids (the same images, in the same order), and
  a layout (the spelling of its names, vocabulary.py) where given.

  label_of(old label) -> new label; name_of(split, i, label), patient_of(
  split, i, label) -> str, i the example's index in its split.
  """
  info = json.load(open(os.path.join(src_dir, schema.INFO_FILENAME)))
  os.makedirs(dst_dir)
  for split, entry in info['splits'].items():
    index = 0
    counts = dict.fromkeys(class_names, 0)
    for shard in entry['shards']:
      path = os.path.join(dst_dir, shard['filename'])
      with tf.io.TFRecordWriter(path) as writer:
        for record in tf.data.TFRecordDataset(
            os.path.join(src_dir, shard['filename'])).as_numpy_iterator():
          example = tf.train.Example.FromString(record)
          feature = example.features.feature
          old = feature[schema.LABEL].int64_list.value[0]
          new = label_of(old)
          feature[schema.LABEL].int64_list.value[:] = [new]
          feature[schema.CLASS_TEXT].bytes_list.value[:] = [
              class_names[new].encode()]
          if name_of:
            feature[schema.FILENAME].bytes_list.value[:] = [
                name_of(split, index, old).encode()]
          if patient_of:
            feature[schema.PATIENT_ID].bytes_list.value[:] = [
                patient_of(split, index, old).encode()]
          counts[class_names[new]] += 1
          writer.write(example.SerializeToString())
          index += 1
      shard['num_bytes'] = os.path.getsize(path)
    entry['class_counts'] = counts
  info['class_names'] = list(class_names)
  if layout:
    info['layout'] = layout
  with open(os.path.join(dst_dir, schema.INFO_FILENAME), 'w') as f:
    json.dump(info, f)
  return dst_dir


def kermany_name(split, i, label):
  """Kermany-like names: two images per patient, pneumonia bacterial for
  even patients, viral for odd ones."""
  patient = i // 2
  if label == 0:
    return f'{split}/NORMAL/IM-{patient:04d}-{i:04d}.jpeg'
  kind = 'bacteria' if patient % 2 == 0 else 'virus'
  return f'{split}/PNEUMONIA/person{patient}_{kind}_{i}.jpeg'


def two_per_patient(split, i, label):
  return f'{split}-{i // 2}'


def results_of(predictions, names, num_resamples, **options):
  """results.json's dict (format 2) of an evaluation of these predictions
  ({split: (targets [N, L], probs [N, L])}) as a run of its own."""
  from xray_tfdata import evaluation  # pylint: disable=g-import-not-at-top
  from xray_tfdata.evaluation import run  # pylint: disable=g-import-not-at-top
  evaluated = evaluation.evaluate_labels(predictions, names,
                                         num_resamples=num_resamples,
                                         **options)
  mapping = {'matched': {n: n for n in names}, 'unmatched_model_labels': [],
             'unmatched_data_labels': [], 'notes': []}
  return run.results_document(
      evaluated, label_names=names,
      label_policy='u_ones' if len(names) > 1 else None, views=None,
      config={}, data_dir='data', model_data='data', label_mapping=mapping,
      num_resamples=num_resamples, seed=0)
