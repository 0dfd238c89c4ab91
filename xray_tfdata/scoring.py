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

A multi-label model (config.json's label_names), or a dataset of labels
(NIH, CheXpert: xray_info.json's label_names), is scored per label on its
known targets (`evaluate_multilabel_dataset`), the dataset's codes read
with the run's label policy; labels are matched by `label_key` and
`LABEL_SYNONYMS`, and the unmatched ones of both sides are named. Where the
records store boxes (RSNA), `localize` plays the pointing game with the
model's Grad-CAM heatmaps.

Subgroup fields, where the dataset stores them (the converter keeps no sex,
age or view: Kermany's and RSNA's sources give none for the images it reads):
  detailed_class   RSNA's detailed class (an extra feature of the records);
  kermany_subtype  bacteria / virus / normal, from Kermany's file names;
  source_folder    the source tree's split folder (Kaggle's train/val/test)
                   when the dataset was converted from the split layout;
  view, sex, age_group
                   a multi-label dataset's `schema.MULTILABEL_FEATURES`,
                   where any image has one (age in `AGE_GROUPS`).
"""

import json
import os
import re

import numpy as np

from xray_tfdata import atomic
from xray_tfdata import checks
from xray_tfdata import errors
from xray_tfdata import evaluation
from xray_tfdata import labels as labels_lib
from xray_tfdata import schema
from xray_tfdata.run_dir import CONFIG_JSON
from xray_tfdata.run_dir import EVALUATION_DIR
from xray_tfdata.run_dir import MODEL_FILE
from xray_tfdata.run_dir import RESULTS_JSON
from xray_tfdata.run_dir import RESULTS_MD

# Subgroups smaller than this are listed with their count only: an AUC or
# a sensitivity of a handful of images says nothing.
MIN_SUBGROUP = 10
_KERMANY_SUBTYPE = re.compile(r'_(bacteria|virus)_', re.IGNORECASE)
# Multi-label datasets' age subgroups, in whole years: [low, high).
AGE_GROUPS = ((0, 20), (20, 40), (40, 60), (60, 80), (80, 200))

# Spellings of one finding in different sources, matched as the same label
# (an explicit table, nothing fuzzy). Names are compared after `label_key`
# (case, '_' and '-' ignored), so NIH's 'Pleural_Thickening' is
# 'pleural thickening' and Kermany's 'PNEUMONIA' is CheXpert's 'Pneumonia'
# without an entry. As torchxrayvision renames them: its CheXpert and
# MIMIC datasets call 'Pleural Effusion' 'Effusion' (NIH's name), its
# NIH_Google dataset calls 'Airspace opacity' 'Lung Opacity'.
LABEL_SYNONYMS = {
    'effusion': ('pleural effusion',),
    'lung opacity': ('airspace opacity',),
}
_CANONICAL = {spelling: name for name, spellings in LABEL_SYNONYMS.items()
              for spelling in spellings}


def print_flush(line):
  """The evaluation's progress lines: printed at once, not when stdout's
  buffer fills."""
  print(line, flush=True)


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


def _spelling(name):
  return ' '.join(str(name).lower().replace('_', ' ').replace('-', ' ')
                  .split())


def label_key(name):
  """The name labels are matched by: lower case, '_' and '-' as spaces,
  then `LABEL_SYNONYMS`' common spelling."""
  return _CANONICAL.get(_spelling(name), _spelling(name))


def data_labels(info):
  """The labels a dataset scores: a multi-label dataset's label names, a
  single-label dataset's classes (each a label of its own images)."""
  return list(info.label_names) if info.is_multilabel else list(
      info.class_names)


def map_label_names(model_label_names, info):
  """Matches a model's labels to a dataset's by name (`label_key`).

  For a multi-label model, or a dataset of several labels: each model
  label is scored against the dataset label of the same name, its
  targets from the dataset's codes (or, in a dataset of classes, whether
  the image is of that class).

  Args:
    model_label_names: the model's outputs, in order.
    info: the dataset's `DatasetInfo`.

  Returns:
    {'matched': {model label: dataset label}, 'data_index': {model label:
     index into `data_labels(info)`}, 'unmatched_model_labels',
     'unmatched_data_labels', 'notes'}.

  Raises:
    ScoringError: no label of the model is in the dataset.
  """
  names = data_labels(info)
  by_key = {}
  for index, name in enumerate(names):
    by_key.setdefault(label_key(name), (index, name))
  matched, data_index, unmatched = {}, {}, []
  for label in model_label_names:
    if label_key(label) in by_key:
      data_index[label], matched[label] = by_key[label_key(label)]
    else:
      unmatched.append(label)
  if not matched:
    raise ScoringError(
        f'no label of the model ({", ".join(unmatched)}) is among the '
        f'dataset\'s labels ({", ".join(names)}): nothing to score; '
        'evaluate on a dataset with one of them (names are matched ignoring '
        'case, _ and -, and through scoring.LABEL_SYNONYMS)')
  used = set(data_index.values())
  others = [name for index, name in enumerate(names) if index not in used]
  notes = [f'{label} scored against {name} (synonyms, see '
           'scoring.LABEL_SYNONYMS)' for label, name in matched.items()
           if _spelling(label) != _spelling(name)]
  if not info.is_multilabel and others:
    # A dataset of classes: its other classes are the negatives of the
    # matched labels, not labels without an output.
    notes.append(f'dataset classes {", ".join(others)} taken as negatives')
    others = []
  return {'matched': matched, 'data_index': data_index,
          'unmatched_model_labels': unmatched,
          'unmatched_data_labels': others, 'notes': notes}


def dataset_targets(info, metadata, data_label_names, policy):
  """float32 [N, K] targets of some of a dataset's labels, `labels.MASKED`
  where unknown.

  Args:
    info: the dataset's `DatasetInfo`.
    metadata: `read_metadata`'s columns of a split.
    data_label_names: K names of `data_labels(info)`.
    policy: a `checks.LABEL_POLICIES` policy, for a multi-label dataset's
      codes.
  """
  names = data_labels(info)
  columns = [names.index(name) for name in data_label_names]
  if info.is_multilabel:
    # The rule reads every stored label: txv's No Finding step.
    rule = labels_lib.target_rule(policy, info.label_names, info.layout)
    return rule.apply(metadata['codes'])[:, columns]
  return np.stack([(metadata['label'] == column).astype(np.float32)
                   for column in columns], axis=1)


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
  if builder.info.is_multilabel:
    keys.update({'view': (schema.VIEW, tf.string),
                 'sex': (schema.SEX, tf.string),
                 'age_years': (schema.AGE_YEARS, tf.int64)})
  spec = {schema.key(name, version): tf.io.FixedLenFeature(
      [], dtype, default_value=-1 if dtype == tf.int64 else '')
          for name, dtype in keys.values()}
  if builder.info.is_multilabel:
    # The raw codes, as schema.feature_spec declares them.
    keys['codes'] = (schema.LABELS, tf.int64)
    spec[schema.LABELS] = tf.io.FixedLenFeature(
        [len(builder.info.label_names)], tf.int64)
  has_boxes = set(schema.BOX_KEYS) <= set(builder.info.extra_features)
  if has_boxes:
    spec.update({k: tf.io.RaggedFeature(tf.float32) for k in schema.BOX_KEYS})
  records = tf.data.TFRecordDataset(builder.shard_paths(split))
  columns = {field: [] for field in keys}
  boxes = []
  for batch in records.batch(1024).map(
      lambda r: tf.io.parse_example(r, spec)).as_numpy_iterator():
    for field, (name, _) in keys.items():
      columns[field].append(batch[schema.key(name, version)])
    if has_boxes:
      # x, y, width, height lists of each example -> [n_boxes, 4]
      parts = [batch[k] for k in schema.BOX_KEYS]
      boxes += [np.stack([np.asarray(p[i], np.float32) for p in parts],
                         axis=-1).reshape(-1, 4)
                for i in range(len(parts[0]))]
  out = {}
  for field, parts in columns.items():
    values = np.concatenate(parts) if parts else np.array([])
    if values.dtype == object:
      values = np.array([v.decode('utf-8', 'replace') for v in values])
    out[field] = values
  out['label'] = out['label'].astype(np.int64)
  if has_boxes:
    out['boxes'] = boxes
  return out


def keep_views(metadata, views):
  """`read_metadata`'s columns of the records `views` keeps (as
  `as_dataset(views=...)` does; None keeps all), in disk order."""
  if views is None or 'view' not in metadata:
    return metadata
  from xray_tfdata import selection  # pylint: disable=g-import-not-at-top
  keep = np.isin(metadata['view'], list(selection.stored_views(views)))
  return {field: ([v for v, k in zip(values, keep) if k]
                  if isinstance(values, list) else values[keep])
          for field, values in metadata.items()}


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
  for field in ('view', 'sex'):
    if field in metadata and (metadata[field] != '').any():
      fields[field] = np.where(metadata[field] == '', 'unknown',
                               metadata[field])
  if 'age_years' in metadata and (metadata['age_years'] >= 0).any():
    ages = metadata['age_years']
    group = np.full(ages.shape, 'unknown', dtype=object)
    for low, high in AGE_GROUPS:
      group[(ages >= low) & (ages < high)] = (
          f'{low}-{high - 1}' if high < 200 else f'{low}+')
    fields['age_group'] = group.astype(str)
  return fields


def patient_ids(metadata):
  """Patient ids; an image without one is its own patient."""
  ids = metadata['patient_id']
  return np.where(ids == '', np.char.add('file:', metadata['filename']), ids)


def evaluate_dataset(builder, predictions, class_names, thresholds=None,
                     threshold_split='val', num_resamples=2000, seed=0,
                     level=0.95, model_data=None, temperatures=None,
                     **multilabel_options):
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

  Multi-label predictions (2-D: targets float [N, L], `labels.MASKED`
  where unknown, and probs [N, L], columns in class_names' order, the
  model's label names) are scored per label on its known targets
  (`evaluation.evaluate_multilabel`), with the macro mean; see
  `evaluate_multilabel_dataset` for its further keyword arguments.

  Raises:
    ScoringError: no label matches, or the records disagree with the
      predictions' labels.
  """
  if predictions and np.ndim(next(iter(predictions.values()))[0]) == 2:
    return evaluate_multilabel_dataset(
        builder, predictions, class_names, thresholds=thresholds,
        threshold_split=threshold_split, num_resamples=num_resamples,
        seed=seed, level=level, model_data=model_data,
        temperatures=temperatures, **multilabel_options)
  if multilabel_options:
    raise TypeError(f'{", ".join(multilabel_options)}: for multi-label '
                    'predictions only')
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


def evaluate_multilabel_dataset(builder, predictions, label_names,
                                thresholds=None, threshold_split='val',
                                num_resamples=2000, seed=0, level=0.95,
                                model_data=None, temperatures=None,
                                label_policy=None, views=None,
                                checkpoint_dir=None, progress=print_flush):
  """`evaluate_dataset` for a multi-label model (or a dataset of labels).

  Args:
    builder: the dataset's `pipeline.DatasetBuilder`.
    predictions: {split: (targets float [N, L], `labels.MASKED` where
      unknown; probs [N, L])} in disk order, columns in label_names' order.
    label_names: the model's outputs, in order.
    thresholds, threshold_split, num_resamples, seed, level, model_data,
      temperatures: as `evaluate_dataset`.
    label_policy: the policy the targets were made with; when given, they
      are checked against the records' codes.
    views: the views the reader kept (`as_dataset(views=...)`), or None
      for every image: the records' rows are filtered alike.
    checkpoint_dir, progress: as `evaluation.evaluate_multilabel`: where
      each split's intervals are kept for a rerun to reuse, and where the
      progress lines go (None: nowhere).

  Returns:
    results['evaluation']: {'multilabel': True, 'label_names',
    'class_names', 'model_labels' (the model's outputs), 'label_mapping'
    (`map_label_names`' dict + 'model_data', 'data'), 'bootstrap',
    'labels': {label: `evaluation.evaluate_multilabel`'s entry}, 'macro':
    {split: the macro means}}; unmatched labels are named, not scored.

  Raises:
    ScoringError: no label matches, or the records disagree with the
      predictions (count, or targets under label_policy).
  """
  label_names = list(label_names)
  info = builder.info
  mapping = map_label_names(label_names, info)
  mapping['model_data'] = model_data or builder.data_dir
  mapping['data'] = builder.data_dir
  per_split = {}
  for split, (targets, probs) in predictions.items():
    targets, probs = np.asarray(targets), np.asarray(probs)
    if targets.shape != probs.shape or targets.shape[1:] != (
        len(label_names),):
      raise ValueError(f'split {split}: targets {targets.shape} and probs '
                       f'{probs.shape} must be [N, {len(label_names)}]')
    metadata = keep_views(read_metadata(builder, split), views)
    rows = len(metadata['patient_id'])
    if rows != targets.shape[0]:
      raise ScoringError(
          f'split {split!r} of {builder.data_dir} has {rows} records'
          f'{" of the views kept" if views is not None else ""} but '
          f'{targets.shape[0]} predictions: pass the views the reader kept '
          '(views=...), or rerun if the shards changed')
    if label_policy is not None:
      want = dataset_targets(info, metadata, list(mapping['matched'].values()),
                             label_policy)
      got = targets[:, [label_names.index(l) for l in mapping['matched']]]
      if not np.array_equal(want, got):
        raise ScoringError(
            f'the records of split {split!r} in {builder.data_dir} give other '
            f'targets under policy {label_policy} than were predicted: the '
            'shards changed while evaluating, or another policy was used')
    per_split[split] = metadata
  result = evaluation.evaluate_multilabel(
      {s: (np.asarray(t, np.float64), np.asarray(p, np.float64))
       for s, (t, p) in predictions.items()},
      label_names, scored=list(mapping['matched']),
      threshold_split=threshold_split, thresholds=thresholds,
      temperatures=temperatures,
      patient_ids={s: patient_ids(m) for s, m in per_split.items()},
      subgroups={s: subgroup_fields(info, m) for s, m in per_split.items()},
      num_resamples=num_resamples, level=level, seed=seed,
      min_subgroup=MIN_SUBGROUP, checkpoint_dir=checkpoint_dir,
      progress=progress)
  if thresholds is not None:
    for label_result in result['labels'].values():
      for entry in label_result['thresholds'].values():
        entry['chosen_on'] = f'val of {mapping["model_data"]}'
  out = {'multilabel': True, 'label_names': label_names,
         'class_names': label_names, 'model_labels': label_names,
         'label_mapping': mapping,
         'bootstrap': {'unit': 'patient', 'num_resamples': num_resamples,
                       'level': level, 'seed': seed},
         'labels': result['labels'], 'macro': result['macro']}
  if label_policy is not None:
    out['label_policy'] = label_policy
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
        f'({e}); retrain it with this version of tools/train') from e


def default_out_dir(model_dir, data_dir, split, views=None):
  """model_dir/evaluation/<data_dir folder>-<split>[-<views>]: an
  evaluation of some views does not replace that of all."""
  name = os.path.basename(os.path.normpath(data_dir))
  suffix = '-' + '_'.join(views) if views else ''
  return os.path.join(model_dir, EVALUATION_DIR, f'{name}-{split}{suffix}')


def run_label_names(config, results):
  """A multi-label run's outputs (config.json's label_names, else its
  evaluation's), or None for a single-label run."""
  names = config.get('label_names') or results.get('evaluation', {}).get(
      'label_names')
  return list(names) if names else None


def has_boxes(info):
  """Whether a dataset's records store boxes (RSNA's)."""
  return set(schema.BOX_KEYS) <= set(info.extra_features)


def evaluate_run(model_dir, data_dir, split='test', out_dir=None,
                 num_resamples=None, batch_size=None, label_policy=None,
                 localization=None, views=None):
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
    label_policy: for a dataset of labels, the policy its codes are read
      with; None: the run's (config.json's label_policy), else
      `checks.DEFAULT_LABEL_POLICY`.
    localization: the pointing game on the split's positives (`localize`):
      True asks for it (a dataset without boxes is then an error), None
      does it where the dataset stores boxes, False never.
    views: a multi-label dataset's views to score (as `as_dataset`, e.g.
      ('PA', 'AP') for a frontal-only external test); None: every image.
      The thresholds come from the run, so views change no operating point.

  Returns:
    The results dict written to out_dir/results.json; 'localization' holds
    `localize`'s dict, or {'skipped': why}; 'views' the views kept.

  Raises:
    ScoringError: not a finished run, no label in common, no thresholds
      (a run trained by an older version, on a dataset without a val
      split), or localization asked of a dataset without boxes.
    pipeline.DatasetError: data_dir is not a converted dataset, or has no
      such split; views of a single-label dataset, or views that keep no
      image of a split scored.
  """
  config, run_results = _read_run(model_dir)
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  builder = pipeline.DatasetBuilder(data_dir)
  builder.info.split(split)  # a missing split fails before the model loads
  views = tuple(views) if views else None
  if views is not None:
    builder.num_examples(split, views)  # fails before the model loads
  model_label_names = run_label_names(config, run_results)
  multilabel = model_label_names is not None or builder.info.is_multilabel
  if multilabel:
    model_label_names = model_label_names or model_labels(
        _run_class_names(config, run_results))
    mapping = map_label_names(model_label_names, builder.info)  # fails early
    policy = (label_policy or config.get('label_policy') or
              checks.DEFAULT_LABEL_POLICY)
    labels_lib.policy_table(policy)  # an unknown policy fails early
  else:
    class_names = _run_class_names(config, run_results)
    map_labels(class_names, builder.info.class_names)  # fails early
  if localization and not has_boxes(builder.info):
    raise ScoringError(
        f'--localization: {data_dir} stores no boxes (only an RSNA '
        'conversion does, schema.BOX_KEYS); drop --localization or evaluate '
        'on a dataset with boxes')
  thresholds = stored_thresholds(run_results)
  splits = [split]
  if thresholds is None:
    if 'val' not in builder.info.splits:
      raise ScoringError(
          f'{model_dir} records no operating points (trained before issue '
          f'21) and {data_dir} has no val split to choose them on')
    splits = ['val'] + [s for s in splits if s != 'val']
  if views is not None:
    for s in splits:
      builder.num_examples(s, views)  # none kept: one line
  image_size = int(config.get('image_size', builder.info.image_height))
  net = _load_model(os.path.join(model_dir, MODEL_FILE))
  batch_size = batch_size or config.get('batch_size', 32)
  options = dict(
      thresholds=thresholds,
      num_resamples=(config.get('bootstrap_resamples', 2000)
                     if num_resamples is None else num_resamples),
      seed=config.get('seed', 0), model_data=config.get('data_dir'),
      temperatures=stored_temperatures(run_results) if thresholds else None)
  if multilabel:
    predictions = {}
    for s in splits:
      probs = predict_probs(net, builder, s, batch_size, image_size, views)
      if probs.shape[1] != len(model_label_names):
        raise ScoringError(
            f'{model_dir}: the model has {probs.shape[1]} outputs but the run '
            f'names {len(model_label_names)} labels; its config.json does not '
            'belong to its model')
      metadata = keep_views(read_metadata(builder, s), views)
      targets = np.full(probs.shape, labels_lib.MASKED, np.float32)
      for label, name in mapping['matched'].items():
        targets[:, model_label_names.index(label)] = dataset_targets(
            builder.info, metadata, [name], policy)[:, 0]
      predictions[s] = (targets, probs)
    evaluation_results = evaluate_dataset(
        builder, predictions, model_label_names, label_policy=policy,
        views=views, **options)
    if views is not None:
      evaluation_results['label_mapping']['notes'].append(
          builder.view_filter_line(views, splits))
    positives = {label: (predictions[split][0][:, column] == 1, column)
                 for column, label in enumerate(model_label_names)
                 if label in mapping['matched']}
  else:
    predictions = {
        s: predict(net, builder, s, batch_size, image_size) for s in splits}
    evaluation_results = evaluate_dataset(builder, predictions, class_names,
                                          **options)
    positives = {
        label: (predictions[split][0] == index, 0) for label, index in
        evaluation_results['label_mapping']['positive_class_id'].items()}
  if builder.info.image_size != (image_size, image_size):
    evaluation_results['label_mapping']['notes'].append(
        f'images resized from {builder.info.image_height}x'
        f'{builder.info.image_width} to the model\'s {image_size}x'
        f'{image_size}')
  results = {'model_dir': model_dir, 'data_dir': data_dir,
             'evaluation': evaluation_results}
  if views is not None:
    results['views'] = list(views)
  if localization is not False:
    if has_boxes(builder.info):
      results['localization'] = localize(
          net, builder, split, positives, image_size, batch_size,
          num_resamples=options['num_resamples'], seed=options['seed'])
    else:
      results['localization'] = {
          'skipped': f'{data_dir} stores no boxes (only RSNA conversions '
                     'do): no pointing game'}
  out_dir = out_dir or default_out_dir(model_dir, data_dir, split, views)
  write_report(out_dir, results, predictions)
  return results


def localize(net, builder, split, positives, image_size, batch_size,
             num_resamples=2000, seed=0, level=0.95):
  """The pointing game (`evaluation.pointing_game`) of a model's Grad-CAM
  heatmaps on a split's positive images with boxes.

  Each heatmap is computed at the model's input size and upsampled
  (bilinear) to the stored size, the boxes' pixels.

  Args:
    net: the model (any backbone with a spatial feature map, `gradcam`).
    builder: a dataset whose records store boxes.
    split: the split.
    positives: {label: (bool [N] positive images in disk order, the model
      output whose heatmap is taken)}.
    image_size: the model's input size.
    batch_size: images per Grad-CAM computation.
    num_resamples, seed, level: the hit rate's patient-level bootstrap.

  Returns:
    {'rule', 'labels': {label: {'n', 'hits', 'hit_rate', 'ci' (absent for
     no image), 'flat_heatmaps', 'patients', 'no_box_positives'}}}.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from xray_tfdata import gradcam  # pylint: disable=g-import-not-at-top
  metadata = read_metadata(builder, split)
  boxes = metadata['boxes']
  with_box = np.array([len(b) > 0 for b in boxes])
  ids = patient_ids(metadata)
  stored = builder.info.image_size
  ds = builder.as_dataset(split, batch_size, image_size=image_size,
                          resize=stored != (image_size, image_size))
  out = {'rule': 'hit: the Grad-CAM maximum (upsampled to the stored '
                 'size) inside one of the image\'s boxes', 'labels': {}}
  chosen = {label: np.flatnonzero(mask & with_box)
            for label, (mask, _) in positives.items()}
  hits = {label: [] for label in positives}
  flat = {label: [] for label in positives}
  start = 0
  for images, _ in ds.as_numpy_iterator():
    rows = np.arange(start, start + len(images))
    start += len(images)
    for label, (_, column) in positives.items():
      take = np.isin(rows, chosen[label])
      if not take.any():
        continue
      maps = gradcam.heatmaps(net, images[take], output_index=column)
      if maps.shape[1:] != stored:
        maps = tf.image.resize(maps[..., None], stored).numpy()[..., 0]
      got, none = evaluation.pointing_game(
          maps, [boxes[i] for i in rows[take]])
      hits[label].append(got)
      flat[label].append(none)
  for label, (mask, _) in positives.items():
    got = np.concatenate(hits[label]) if hits[label] else np.zeros(0, bool)
    entry = {'n': int(got.size), 'hits': int(got.sum()),
             'hit_rate': float(got.mean()) if got.size else float('nan'),
             'flat_heatmaps': int(np.concatenate(flat[label]).sum())
                              if flat[label] else 0,
             'patients': int(np.unique(ids[chosen[label]]).size),
             'no_box_positives': int((mask & ~with_box).sum())}
    if got.size and num_resamples:
      entry['ci'] = evaluation.hit_rate_interval(
          got, ids[chosen[label]], num_resamples, level, seed)
    out['labels'][label] = entry
  return out


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


def predict_probs(net, builder, split, batch_size, image_size, views=None):
  """The model's outputs [N, L] on a split (of the images `views` keeps),
  in disk order."""
  stored = builder.info.image_size
  ds = builder.as_dataset(split, batch_size, image_size=image_size,
                          resize=stored != (image_size, image_size),
                          views=views)
  probs = net.predict(ds.map(lambda x, y: x), verbose=0)
  return np.asarray(probs, np.float64).reshape(len(probs), -1)


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
  if evaluation_results.get('multilabel'):
    # One grid per kind of picture, a panel per label (14 labels in 4 kinds
    # of single files would be 56 pictures nobody opens).
    names = evaluation_results['label_names']
    binary = {}
    for label, result in evaluation_results['labels'].items():
      column = names.index(label)
      binary[label] = {}
      for split, (targets, probs) in predictions.items():
        if split in result['splits']:
          labels, label_probs, _ = evaluation.known_targets(targets, probs,
                                                            column)
          binary[label][split] = (labels, label_probs)
    evaluation_results['pictures'] = report.write_label_grids(
        out_dir, evaluation_results, binary, history_csv=history_csv)
    return
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
  if evaluation_results.get('multilabel'):
    return _multilabel_summary(results, out_dir)
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
  lines += localization_lines(results)
  lines.append(f'wrote {os.path.join(out_dir, RESULTS_MD)}')
  return '\n'.join(lines)


def _multilabel_summary(results, out_dir):
  """`summary` of a multi-label evaluation: the label matching in one
  line, a line per label, the macro mean, localization."""
  evaluation_results = results['evaluation']
  mapping = evaluation_results['label_mapping']
  lines = [label_matching_line(mapping)]
  for label, result in evaluation_results['labels'].items():
    for split, entry in result['splits'].items():
      youden = entry['operating_points'].get('youden')
      reason = entry['auc'].get('reason')
      lines.append(
          f"{label} (as {mapping['matched'][label]}) on {split}: "
          f"{entry['n']} images, {entry['patients']} patients, "
          f"{entry['positives']} positive, AUC "
          + (reason or evaluation._with_ci(entry['auc']))  # pylint: disable=protected-access
          + (f", at Youden's threshold {youden['threshold']:.4f} "
             'sensitivity '
             f"{evaluation._with_ci(youden['sensitivity'], 3)}, specificity "  # pylint: disable=protected-access
             f"{evaluation._with_ci(youden['specificity'], 3)}"  # pylint: disable=protected-access
             if youden else ', no operating points'))
    if not result['splits']:
      lines.append(f'{label}: every target masked, not scored')
  for split, macro in evaluation_results['macro'].items():
    auc = evaluation._with_ci({'value': macro['auc'],  # pylint: disable=protected-access
                               'ci': macro.get('auc_ci')})
    lines.append(f'macro mean on {split}: AUC {auc} over '
                 f"{len(macro['auc_labels'])} of {macro['labels_scored']} "
                 'labels (those with a defined AUC)')
  lines += [f'note: {note}' for note in mapping['notes']]
  lines += localization_lines(results)
  lines.append(f'wrote {os.path.join(out_dir, RESULTS_MD)}')
  return '\n'.join(lines)


def label_matching_line(mapping):
  """One line: which labels were matched, and the unmatched ones of both
  sides."""
  matched = ', '.join(label if label == name else f'{label} as {name}'
                      for label, name in mapping['matched'].items())
  line = f'labels scored: {matched}'
  if mapping['unmatched_model_labels']:
    line += ('; model labels not in the dataset: '
             + ', '.join(mapping['unmatched_model_labels']))
  if mapping['unmatched_data_labels']:
    line += ('; dataset labels without a model output: '
             + ', '.join(mapping['unmatched_data_labels']))
  return line


def localization_lines(results):
  """tools/evaluate's lines about --localization."""
  found = results.get('localization')
  if not found:
    return []
  if 'skipped' in found:
    return [f"localization: {found['skipped']}"]
  lines = []
  for label, entry in found['labels'].items():
    ci = entry.get('ci')
    lines.append(
        f"localization ({label}): pointing-game hit rate "
        f"{entry['hit_rate']:.3f}"
        + (f' [{ci[0]:.3f}, {ci[1]:.3f}]' if ci else '')
        + f" on {entry['n']} positive images with boxes ({entry['hits']} "
        f"hits, {entry['patients']} patients)")
  return lines
