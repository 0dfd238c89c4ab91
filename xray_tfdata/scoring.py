"""Scores a trained model on a converted dataset: its own, or another one.

  scoring.evaluate_run('runs/demo', 'data/rsna_224', split='test')

is tools/evaluate: it loads the run's model.keras, maps the model's labels
onto the dataset's by name (saying which could not be matched), predicts
the split, reads each example's patient id and the subgroup fields the
dataset stores, and writes results.json, results.md and the pictures
(`report`) into model_dir/evaluation/<dataset>-<split>/. The operating
points are the ones the run chose on its own validation split, so an
external dataset is judged at the thresholds a user of the model would
apply.

`evaluate_dataset` is the part tools/train calls at the end of a run, with
the predictions it has made: the numbers of `evaluation.evaluate_label` on
every split, with patients and subgroups from the records.

Subgroup fields, where the dataset stores them (the converter keeps no sex,
age or view: Kermany's and RSNA's sources give none for the images it reads):
  detailed_class   RSNA's detailed class (an extra feature of the records);
  kermany_subtype  bacteria / virus / normal, from Kermany's file names;
  source_folder    the source tree's split folder (Kaggle's train/val/test)
                   when the dataset was converted from the split layout.
"""

import json
import os
import re

import numpy as np

from xray_tfdata import atomic
from xray_tfdata import errors
from xray_tfdata import evaluation
from xray_tfdata import schema

EVALUATION_DIR = 'evaluation'
CONFIG_JSON = 'config.json'
RESULTS_JSON = 'results.json'
RESULTS_MD = 'results.md'
MODEL_FILE = 'model.keras'
# Subgroups smaller than this are listed with their count only: an AUC or
# a sensitivity of a handful of images says nothing.
MIN_SUBGROUP = 10
_KERMANY_SUBTYPE = re.compile(r'_(bacteria|virus)_', re.IGNORECASE)


class ScoringError(errors.XrayError):
  """A run or a dataset that cannot be evaluated as asked."""


def model_labels(class_names):
  """The labels a binary model scores: its positive class.

  A binary model outputs P(class 1) of the dataset it was trained on;
  class 0 is the negative. A multi-label model would list every output.
  """
  return [class_names[1]]


def map_labels(model_class_names, data_class_names):
  """Matches the model's labels to the dataset's classes by name.

  Names are compared ignoring case and surrounding spaces. For a binary
  model the positive label must be one of the dataset's classes; the
  dataset's other classes are negatives.

  Returns:
    {'matched': {model label: dataset class}, 'unmatched_model_labels',
     'unmatched_data_labels', 'notes', 'positive_class_id': {model label:
     dataset class id}}.

  Raises:
    ScoringError: no label of the model is in the dataset.
  """
  def norm(name):
    return str(name).strip().lower()

  by_name = {norm(name): (index, name)
             for index, name in enumerate(data_class_names)}
  matched, positive_index, unmatched = {}, {}, []
  for label in model_labels(model_class_names):
    if norm(label) in by_name:
      index, name = by_name[norm(label)]
      matched[label] = name
      positive_index[label] = index
    else:
      unmatched.append(label)
  if not matched:
    raise ScoringError(
        f'no label of the model ({", ".join(unmatched)}) is among the '
        f'dataset\'s classes ({", ".join(data_class_names)}): nothing to '
        'score; evaluate on a dataset with that class, or rename its class '
        'folder and re-convert')
  used = {norm(name) for name in matched.values()}
  negatives = [name for name in data_class_names if norm(name) not in used]
  notes = []
  model_negatives = [n for n in model_class_names
                     if n not in model_labels(model_class_names)]
  if negatives and {norm(n) for n in negatives} != {
      norm(n) for n in model_negatives}:
    notes.append(f'dataset classes {", ".join(negatives)} taken as '
                 f'negatives (the model\'s negative class is '
                 f'{", ".join(model_negatives)})')
  return {'matched': matched, 'unmatched_model_labels': unmatched,
          'positive_class_id': positive_index,
          # A binary model has no output for the dataset's other classes,
          # but they are scored as its negatives, so none is unmatched.
          'unmatched_data_labels': [],
                  'notes': notes}


def read_metadata(builder, split):
  """Each example's label, patient id, file name and stored subgroup
  fields, in disk order (the order `as_dataset` evaluates in).

  Returns:
    {'label': int array, 'patient_id': str array, 'filename': str array,
     and 'detailed_class' where the records store it}.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  version = builder.info.format_version
  keys = {'label': (schema.LABEL, tf.int64),
          'patient_id': (schema.PATIENT_ID, tf.string),
          'filename': (schema.FILENAME, tf.string)}
  if schema.DETAILED_CLASS in builder.info.extra_features:
    keys['detailed_class'] = (schema.DETAILED_CLASS, tf.string)
  spec = {schema.key(name, version): tf.io.FixedLenFeature(
      [], dtype, default_value=-1 if dtype == tf.int64 else '')
          for name, dtype in keys.values()}
  records = tf.data.TFRecordDataset(builder.shard_paths(split))
  columns = {field: [] for field in keys}
  for batch in records.batch(1024).map(
      lambda r: tf.io.parse_example(r, spec)).as_numpy_iterator():
    for field, (name, _) in keys.items():
      columns[field].append(batch[schema.key(name, version)])
  out = {}
  for field, parts in columns.items():
    values = np.concatenate(parts) if parts else np.array([])
    if values.dtype == object:
      values = np.array([v.decode('utf-8', 'replace') for v in values])
    out[field] = values
  out['label'] = out['label'].astype(np.int64)
  return out


def subgroup_fields(info, metadata):
  """{field: values} of the subgroups this dataset can be cut into."""
  fields = {}
  if 'detailed_class' in metadata:
    fields['detailed_class'] = np.where(metadata['detailed_class'] == '',
                                        'unknown', metadata['detailed_class'])
  names = metadata['filename']
  subtypes = [(_KERMANY_SUBTYPE.search(os.path.basename(n)) or [None, None])[1]
              for n in names]
  if any(subtypes):
    labels = metadata['label']
    fields['kermany_subtype'] = np.array([
        s.lower() if s else ('normal' if label == 0 else 'unknown')
        for s, label in zip(subtypes, labels)])
  if info.layout == 'split':
    fields['source_folder'] = np.array([n.split('/', 1)[0] for n in names])
  return fields


def patient_ids(metadata):
  """Patient ids; an image without one is its own patient."""
  ids = metadata['patient_id']
  return np.where(ids == '', np.char.add('file:', metadata['filename']), ids)


def evaluate_dataset(builder, predictions, class_names, thresholds=None,
                     threshold_split='val', num_resamples=2000, seed=0,
                     level=0.95, model_data=None, temperatures=None):
  """The clinical evaluation of predictions on a converted dataset.

  Args:
    builder: the dataset's `pipeline.DatasetBuilder`.
    predictions: {split: (labels, probs)} in disk order, probs the model's
      P(positive label); labels in the dataset's class ids.
    class_names: the classes of the dataset the model was trained on.
    thresholds: {label: {operating point: threshold}} chosen before (the
      run's own validation split), or None to choose them on
      threshold_split here.
    threshold_split, num_resamples, seed, level: see
      `evaluation.evaluate_label`.
    model_data: where the model was trained, for the report.
    temperatures: {label: temperature} fitted before (with thresholds), or
      None: fitted on threshold_split when the thresholds are chosen here.

  Returns:
    results['evaluation']: {'class_names' (the model's), 'model_labels',
    'label_mapping', 'bootstrap', 'labels': {label: evaluate_label's
    dict}}.

  Raises:
    ScoringError: no label matches, or the records disagree with the
      predictions' labels.
  """
  mapping = map_labels(class_names, builder.info.class_names)
  mapping['model_data'] = model_data or builder.data_dir
  mapping['data'] = builder.data_dir
  positive_index = mapping['positive_class_id']
  per_split = {}
  for split, (labels, _) in predictions.items():
    metadata = read_metadata(builder, split)
    if not np.array_equal(metadata['label'], np.asarray(labels, np.int64)):
      raise ScoringError(
          f'the records of split {split!r} in {builder.data_dir} list other '
          'labels than were predicted: the shards changed while evaluating; '
          'rerun')
    per_split[split] = metadata
  out = {'class_names': list(class_names),
         'model_labels': model_labels(class_names),
         'label_mapping': mapping,
         'bootstrap': {'unit': 'patient', 'num_resamples': num_resamples,
                       'level': level, 'seed': seed},
         'labels': {}}
  for label, index in positive_index.items():
    binary = {split: ((np.asarray(y) == index).astype(np.int64), p)
              for split, (y, p) in predictions.items()}
    out['labels'][label] = evaluation.evaluate_label(
        binary, threshold_split=threshold_split,
        thresholds=None if thresholds is None else thresholds[label],
        patient_ids={s: patient_ids(m) for s, m in per_split.items()},
        subgroups={s: subgroup_fields(builder.info, m)
                   for s, m in per_split.items()},
        num_resamples=num_resamples, level=level, seed=seed,
        min_subgroup=MIN_SUBGROUP,
        temperature=(temperatures or {}).get(label))
    if thresholds is not None:
      for entry in out['labels'][label]['thresholds'].values():
        entry['chosen_on'] = f'val of {mapping["model_data"]}'
  return out


def stored_thresholds(results):
  """{label: {operating point: threshold}} from a run's results.json, or
  None when it has none (a run trained by an older version)."""
  labels = results.get('evaluation', {}).get('labels')
  if not labels:
    return None
  return {label: {op: entry['threshold']
                  for op, entry in result['thresholds'].items()}
          for label, result in labels.items()}


def stored_temperatures(results):
  """{label: temperature} from a run's results.json (empty when none)."""
  labels = results.get('evaluation', {}).get('labels', {})
  return {label: result['calibration']['temperature']
          for label, result in labels.items() if result.get('calibration')}


def _read_run(model_dir):
  """config.json and results.json of a finished run."""
  for name in (MODEL_FILE, CONFIG_JSON, RESULTS_JSON):
    if not os.path.exists(os.path.join(model_dir, name)):
      raise ScoringError(
          f'{os.path.join(model_dir, name)} not found: --model_dir must be '
          'a finished tools/train run')
  with open(os.path.join(model_dir, CONFIG_JSON)) as f:
    config = json.load(f)
  with open(os.path.join(model_dir, RESULTS_JSON)) as f:
    results = json.load(f)
  return config.get('config', config), results


def _run_class_names(config, results):
  """The classes of the dataset the run was trained on."""
  evaluation_results = results.get('evaluation', {})
  if evaluation_results.get('class_names'):
    return list(evaluation_results['class_names'])
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  try:
    return list(pipeline.load_info(config['data_dir']).class_names)
  except (KeyError, pipeline.DatasetError) as e:
    raise ScoringError(
        'the run records no class names and its training data is gone '
        f'({e}); evaluate a run trained after issue 21') from e


def default_out_dir(model_dir, data_dir, split):
  name = os.path.basename(os.path.normpath(data_dir))
  return os.path.join(model_dir, EVALUATION_DIR, f'{name}-{split}')


def evaluate_run(model_dir, data_dir, split='test', out_dir=None,
                 num_resamples=None, batch_size=None):
  """Evaluates a finished run on a split of any converted dataset.

  Args:
    model_dir: a finished tools/train run.
    data_dir: a converted dataset: the run's own or another (external
      validation); images of another stored size are resized to the
      model's.
    split: the split to score.
    out_dir: where results.json, results.md and the pictures go; None:
      model_dir/evaluation/<dataset folder>-<split>.
    num_resamples: bootstrap resamples; None: the run's setting.
    batch_size: prediction batch size; None: the run's.

  Returns:
    The results dict written to out_dir/results.json.

  Raises:
    ScoringError: not a finished run, no label in common, or no thresholds
      (a run trained by an older version, on a dataset without a val
      split).
    pipeline.DatasetError: data_dir is not a converted dataset, or has no
      such split.
  """
  config, run_results = _read_run(model_dir)
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  builder = pipeline.DatasetBuilder(data_dir)
  builder.info.split(split)  # a missing split fails before the model loads
  class_names = _run_class_names(config, run_results)
  map_labels(class_names, builder.info.class_names)  # fails early
  thresholds = stored_thresholds(run_results)
  splits = [split]
  if thresholds is None:
    if 'val' not in builder.info.splits:
      raise ScoringError(
          f'{model_dir} records no operating points (trained before issue '
          f'21) and {data_dir} has no val split to choose them on')
    splits = ['val'] + [s for s in splits if s != 'val']
  image_size = int(config.get('image_size', builder.info.image_height))
  net = _load_model(os.path.join(model_dir, MODEL_FILE))
  predictions = {
      s: predict(net, builder, s, batch_size or config.get('batch_size', 32),
                 image_size)
      for s in splits}
  evaluation_results = evaluate_dataset(
      builder, predictions, class_names, thresholds=thresholds,
      num_resamples=(config.get('bootstrap_resamples', 2000)
                     if num_resamples is None else num_resamples),
      seed=config.get('seed', 0), model_data=config.get('data_dir'),
      temperatures=stored_temperatures(run_results) if thresholds else None)
  if builder.info.image_size != (image_size, image_size):
    evaluation_results['label_mapping']['notes'].append(
        f'images resized from {builder.info.image_height}x'
        f'{builder.info.image_width} to the model\'s {image_size}x'
        f'{image_size}')
  results = {'model_dir': model_dir, 'data_dir': data_dir,
             'evaluation': evaluation_results}
  out_dir = out_dir or default_out_dir(model_dir, data_dir, split)
  write_report(out_dir, results, predictions)
  return results


def _load_model(path):
  import keras  # pylint: disable=g-import-not-at-top
  # Registers the model's own layers (augmentation, preprocessing) with
  # Keras' deserializer.
  from xray_tfdata import augment  # pylint: disable=g-import-not-at-top,unused-import
  from xray_tfdata import model  # pylint: disable=g-import-not-at-top,unused-import
  return keras.saving.load_model(path)


def predict(net, builder, split, batch_size, image_size):
  """(labels, P(class 1)) of a split in disk order."""
  stored = builder.info.image_size
  ds = builder.as_dataset(split, batch_size, image_size=image_size,
                          resize=stored != (image_size, image_size))
  labels = np.concatenate([y for _, y in ds.as_numpy_iterator()])
  probs = net.predict(ds.map(lambda x, y: x), verbose=0).reshape(-1)
  return labels.astype(np.int64), probs.astype(np.float64)


def write_report(out_dir, results, predictions, history_csv=None):
  """Writes the pictures, results.md, then results.json (last).

  Args:
    out_dir: the folder (made if missing).
    results: the results dict; its 'evaluation' gets a 'pictures' entry.
    predictions: {split: (labels, probs)} in the dataset's class ids.
    history_csv: a run's history.csv, for the training curves, or None.

  Returns:
    The results.md text.
  """
  os.makedirs(out_dir, exist_ok=True)
  write_pictures(out_dir, results['evaluation'], predictions, history_csv)
  table = evaluation.results_table_markdown(results)
  atomic.write_text(os.path.join(out_dir, RESULTS_MD), table)
  atomic.write_text(os.path.join(out_dir, RESULTS_JSON),
                    json.dumps(results, indent=2, default=float))
  return table


def write_pictures(out_dir, evaluation_results, predictions,
                   history_csv=None):
  """Draws `report`'s pictures of an evaluation into out_dir and lists them
  in evaluation_results['pictures'] (which results.md links).

  Args:
    out_dir: an existing folder.
    evaluation_results: `evaluate_dataset`'s dict.
    predictions: {split: (labels, probs)} in the dataset's class ids; the
      splits evaluation_results has are drawn.
    history_csv: a run's history.csv (training curves), or None.
  """
  from xray_tfdata import report  # pylint: disable=g-import-not-at-top
  mapping = evaluation_results['label_mapping']['positive_class_id']
  binary = {
      label: {split: ((np.asarray(y) == index).astype(np.int64), p)
              for split, (y, p) in predictions.items()
              if split in evaluation_results['labels'][label]['splits']}
      for label, index in mapping.items()}
  evaluation_results['pictures'] = report.write_pictures(
      out_dir, evaluation_results, binary, history_csv=history_csv)


def summary(results, out_dir):
  """The lines tools/evaluate prints: per label, what it was scored
  against, and the evaluated split's AUC and Youden point."""
  evaluation_results = results['evaluation']
  mapping = evaluation_results['label_mapping']
  lines = []
  for label, result in evaluation_results['labels'].items():
    for split, entry in result['splits'].items():
      auc = entry['auc']
      youden = entry['operating_points']['youden']
      lines.append(
          f"{label} (as {mapping['matched'][label]}) on {split}: "
          f"{entry['n']} images, {entry['patients']} patients, AUC "
          f"{evaluation._with_ci(auc)}, at Youden's threshold "  # pylint: disable=protected-access
          f"{youden['threshold']:.4f} sensitivity "
          f"{youden['sensitivity']['value']:.3f}, specificity "
          f"{youden['specificity']['value']:.3f}")
  for label in mapping['unmatched_model_labels']:
    lines.append(f'{label}: not in {mapping["data"]}, not scored')
  lines += [f'note: {note}' for note in mapping['notes']]
  lines.append(f'wrote {os.path.join(out_dir, RESULTS_MD)}')
  return '\n'.join(lines)
