"""The run evaluator: one evaluation of a model on a converted dataset.

  results, predictions = run.evaluate_model(net, builder, label_names=...)
  run.evaluate_run('runs/kermany', 'data/rsna_224', split='test')

Each split is predicted once, and its targets, patient ids and subgroup
fields come from the same records (`as_dataset(with_metadata=True)`), in
the same order: nothing is re-read or re-labelled beside the reader. One
path for every dataset: targets [N, L] (a dataset of classes is L = 1, the
label named by its positive class, e.g. PNEUMONIA), each label evaluated on
its known targets (`per_label.evaluate_labels`).

tools/train calls `evaluate_model` after its last epoch (thresholds and
temperatures chosen on val); tools/evaluate calls `evaluate_run`, which
scores a finished run on any converted dataset at the thresholds and
temperatures the run chose (`run_dir`), labels matched through the
vocabulary (`matching`). Both write results.json in RESULTS_FORMAT 2 (`results_document`,
README "results.json"), results.md (`markdown`) and the pictures (`plots`).

Subgroup fields, where the dataset stores them:
  kermany_subtype  bacteria / virus / normal, from Kermany's file names;
  source_folder    the source tree's split folder (Kaggle's train/val/test)
                   when the dataset was converted from the split layout;
  detailed_class   RSNA's detailed class (an extra feature of the records);
  view, sex, age_group
                   a multi-label dataset's, where any image has one (age in
                   `AGE_GROUPS`).
"""

import json
import os
import re

import numpy as np

from xray_tfdata import atomic
from xray_tfdata import checks
from xray_tfdata import labels as labels_lib
from xray_tfdata import run_dir
from xray_tfdata import schema
from xray_tfdata.evaluation import curves
from xray_tfdata.evaluation import localization as localization_lib
from xray_tfdata.evaluation import markdown
from xray_tfdata.evaluation import matching
from xray_tfdata.evaluation import per_label
from xray_tfdata.evaluation import plots

SPLITS = ('train', 'val', 'test')
# The splits that get patient-level intervals at the end of a run: train's
# numbers are a check for over-fitting, its point estimates suffice (and
# its bootstrap would cost more than val's and test's together).
INTERVAL_SPLITS = ('val', 'test')
# Subgroups smaller than this are listed with their count only: an AUC or
# a sensitivity of a handful of images says nothing.
MIN_SUBGROUP = 10
_KERMANY_SUBTYPE = re.compile(r'_(bacteria|virus)_', re.IGNORECASE)
# Multi-label datasets' age subgroups, in whole years: [low, high).
AGE_GROUPS = ((0, 20), (20, 40), (40, 60), (60, 80), (80, 200))
# The record features `as_dataset(with_metadata=True)` does not yield that
# the evaluation uses: boxes (with their labels: NIH's, VinDr-CXR's), a
# ragged number per image.
_EXTRA_KEYS = schema.BOX_KEYS + (schema.BOX_LABEL,)


def print_flush(line):
  """The evaluation's progress lines: printed at once."""
  print(line, flush=True)


def model_label_names(builder, labels=None):
  """The L labels a model trained on this dataset outputs, in order: a
  multi-label dataset's (labels, or all), a dataset of classes' positive
  class (L = 1)."""
  names = (tuple(builder.label_names(labels))
           if builder.info.is_multilabel else ())
  return names or (builder.info.class_names[1],)


def _decoded(values):
  values = np.asarray(values)
  if values.dtype == object:
    return np.array([v.decode('utf-8', 'replace') for v in values])
  return values


def predict_split(net, builder, split, batch_size, **options):
  """Predicts one split; its targets and metadata from the same records.

  Args:
    net: the model (L sigmoid outputs).
    builder: the dataset's `pipeline.DatasetBuilder`.
    split: the split.
    batch_size: prediction batch size.
    **options: `as_dataset` arguments (image_size, resize, labels,
      label_policy, views, cache options).

  Returns:
    (targets float64 [N, L'] as the reader yields them (L' = 1 for a
    dataset of classes: its label ids), probs float64 [N, L], metadata
    {field: array of N}: 'filename', 'patient_id' and, from a multi-label
    dataset, 'view', 'sex', 'age_years', 'study_id'), in disk order.
  """
  from xray_tfdata import distribute  # pylint: disable=g-import-not-at-top
  ds = builder.as_dataset(split, batch_size, with_metadata=True, **options)
  targets, columns = [], {}
  for _, y, metadata in ds.as_numpy_iterator():
    # [B] until every reader yields [B, L] (a dataset of classes, L = 1).
    targets.append(np.reshape(y, (len(y), -1)))
    for field, values in metadata.items():
      columns.setdefault(field, []).append(values)
  # Under several workers, in the targets' order (see shard_by_batch).
  images = distribute.shard_by_batch(ds.map(lambda x, y, m: x))
  probs = np.asarray(net.predict(images, verbose=0), np.float64)
  targets = np.concatenate(targets).astype(np.float64)
  metadata = {field: _decoded(np.concatenate(parts))
              for field, parts in columns.items()}
  return targets, probs.reshape(len(probs), -1), metadata


def stored_extras(builder, split, filtered=False):
  """The boxes (RSNA's, NIH's, VinDr-CXR's) or SIIM's masks of each record,
  in disk order; {} for a dataset that stores none, and where a filter
  (views, label methods) drops records: these rows would not be the
  reader's.

  Returns:
    {'boxes': [float32 [k, 4] (x, y, width,
    height) per record], 'box_labels': [int [k] per record, indices into
    the dataset's label_names] (NIH's, VinDr-CXR's), 'masks': uint8
    [N, H, W] at the stored size (SIIM's)}, each where stored.
  """
  extra = [k for k in _EXTRA_KEYS if k in builder.info.extra_features]
  if not filtered and localization_lib.has_masks(builder.info):
    # Through the reader, which decodes them (pipeline's with_mask).
    return {'masks': np.concatenate([
        metadata['mask'] for _, _, metadata in builder.as_dataset(
            split, 256, with_metadata=True, with_mask=True,
            cache=False).as_numpy_iterator()])}
  if not extra or filtered:
    return {}
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  spec = {}
  has_boxes = set(schema.BOX_KEYS) <= set(extra)
  if has_boxes:
    spec.update({k: tf.io.RaggedFeature(tf.float32) for k in schema.BOX_KEYS})
  if schema.BOX_LABEL in extra:
    spec[schema.BOX_LABEL] = tf.io.RaggedFeature(tf.int64)
  records = tf.data.TFRecordDataset(builder.shard_paths(split))
  boxes, box_labels = [], []
  for batch in records.batch(1024).map(
      lambda r: tf.io.parse_example(r, spec)).as_numpy_iterator():
    if has_boxes:
      parts = [batch[k] for k in schema.BOX_KEYS]
      boxes += [np.stack([np.asarray(p[i], np.float32) for p in parts],
                         axis=-1).reshape(-1, 4)
                for i in range(len(parts[0]))]
    if schema.BOX_LABEL in spec:
      box_labels += [np.asarray(labels, np.int64)
                     for labels in batch[schema.BOX_LABEL]]
  out = {}
  if has_boxes:
    out['boxes'] = boxes
  if schema.BOX_LABEL in spec:
    out['box_labels'] = box_labels
  return out


def label_boxes(boxes, box_labels, index):
  """Per record its boxes of the dataset label `index` (labelled boxes:
  NIH's, VinDr-CXR's), float32 [k, 4] each."""
  return [b[np.asarray(l) == index] for b, l in zip(boxes, box_labels)]


def patient_ids(metadata):
  """Patient ids; an image without one is its own patient."""
  ids = metadata['patient_id']
  return np.where(ids == '', np.char.add('file:', metadata['filename']), ids)


def subgroup_fields(info, metadata, positive=None):
  """{field: values} of the subgroups this dataset can be cut into.

  Args:
    info: the dataset's `DatasetInfo`.
    metadata: `predict_split`'s metadata (plus `stored_extras`).
    positive: for a dataset of classes, whether each image is of the
      positive class (Kermany's subtype of a negative is 'normal').
  """
  fields = {}
  if 'detailed_class' in metadata:
    fields['detailed_class'] = np.where(metadata['detailed_class'] == '',
                                        'unknown', metadata['detailed_class'])
  names = metadata['filename']
  subtypes = [(_KERMANY_SUBTYPE.search(os.path.basename(n)) or [None, None])[1]
              for n in names]
  if any(subtypes) and positive is not None:
    fields['kermany_subtype'] = np.array([
        s.lower() if s else ('unknown' if is_positive else 'normal')
        for s, is_positive in zip(subtypes, positive)])
  if info.layout == 'split':
    fields['source_folder'] = np.array([n.split('/', 1)[0] for n in names])
  for field in ('view', 'sex', 'label_method'):
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


def evaluate(predictions, metadata, label_names, info, *, scored=None,
             thresholds=None, temperatures=None, num_resamples=2000, seed=0,
             level=0.95, checkpoint_dir=None, interval_splits=None,
             progress=print_flush):
  """Every label's evaluation, with patients and subgroups from metadata.

  Args:
    predictions: {split: (targets float [N, L], `labels.MASKED` where
      unknown; probs [N, L])}, columns in label_names' order.
    metadata: {split: `predict_split`'s metadata}, the same rows.
    label_names: the model's L outputs.
    info: the dataset's `DatasetInfo` (its subgroups).
    scored, thresholds, temperatures, num_resamples, seed, level,
      checkpoint_dir, interval_splits, progress: as
      `per_label.evaluate_labels`.

  Returns:
    `per_label.evaluate_labels`' {'labels', 'macro'}.
  """
  groups = {}
  for split, columns in metadata.items():
    targets = predictions[split][0]
    positive = (targets[:, 0] == 1) if targets.shape[1] == 1 and (
        not info.is_multilabel) else None
    groups[split] = subgroup_fields(info, columns, positive)
  return per_label.evaluate_labels(
      predictions, label_names, scored=scored, thresholds=thresholds,
      temperatures=temperatures,
      patient_ids={s: patient_ids(m) for s, m in metadata.items()},
      subgroups=groups, num_resamples=num_resamples, level=level, seed=seed,
      min_subgroup=MIN_SUBGROUP, checkpoint_dir=checkpoint_dir,
      progress=progress, interval_splits=interval_splits)


def results_document(evaluated, *, label_names, label_policy, views, config,
                     data_dir, model_data, label_mapping, num_resamples, seed,
                     level=0.95, localization=None, training=None,
                     label_methods=None):
  """results.json, RESULTS_FORMAT 2: the same keys for every run (README,
  "results.json"); None where a part does not apply.

  Args:
    evaluated: `evaluate`'s {'labels', 'macro'}.
    label_names: the model's outputs in order.
    label_policy, views, label_methods: how the targets were read (None for
      a dataset of classes, and for every view or label method).
    config: the run's settings.
    data_dir: the dataset evaluated; model_data: the one trained on.
    label_mapping: `matching.match_labels`' dict.
    num_resamples, seed, level: the bootstrap's.
    localization: `localization.localize`'s dict, or None.
    training: {'policy', 'strategy', 'epochs_run'} of a run's own
      evaluation, None for tools/evaluate.
  """
  return {
      run_dir.RESULTS_FORMAT_KEY: run_dir.RESULTS_FORMAT,
      'label_names': list(label_names),
      'label_policy': label_policy,
      'views': list(views) if views else None,
      'label_methods': list(label_methods) if label_methods else None,
      'config': dict(config),
      'data': {'data_dir': data_dir, 'model_data': model_data,
               'label_mapping': label_mapping},
      'bootstrap': {'unit': 'patient', 'num_resamples': num_resamples,
                    'level': level, 'seed': seed},
      'labels': evaluated['labels'],
      'macro': evaluated['macro'],
      'localization': localization,
      'training': training,
  }


def evaluate_model(net, builder, *, label_names, batch_size, config,
                   splits=SPLITS, label_policy=None, views=None,
                   num_resamples=2000, seed=0, checkpoint_dir=None,
                   read_options=None):
  """A run's own evaluation at the end of training: every split predicted
  once; operating points and temperatures chosen on val.

  Args:
    net: the trained model.
    builder: the dataset it was trained on.
    label_names: its outputs in order (`model_label_names`).
    batch_size: prediction batch size.
    config: the run's settings (a dict), recorded in the results.
    splits: the splits evaluated.
    label_policy, views: a multi-label dataset's, as the run read it.
    num_resamples, seed: the patient-level bootstrap of val and test.
    checkpoint_dir: where each split's intervals are kept as they are
      done, so that a killed evaluation resumes (None: nowhere).
    read_options: further `as_dataset` arguments (the run's cache).

  Returns:
    (results: `results_document`'s dict, predictions: {split: (targets,
    probs)} for the pictures).
  """
  multilabel = builder.info.is_multilabel
  options = dict(read_options or {})
  if multilabel:
    options.update(labels=list(label_names), label_policy=label_policy,
                   views=views)
  predictions, metadata = {}, {}
  for split in splits:
    targets, probs, columns = predict_split(net, builder, split, batch_size,
                                            **options)
    predictions[split] = (targets, probs)
    metadata[split] = {**columns, **stored_extras(builder, split,
                                                  views is not None)}
  evaluated = evaluate(predictions, metadata, label_names, builder.info,
                       num_resamples=num_resamples, seed=seed,
                       checkpoint_dir=checkpoint_dir,
                       interval_splits=INTERVAL_SPLITS)
  mapping = matching.match_labels(label_names, builder.info,
                                  model_layout=builder.info.layout)
  results = results_document(
      evaluated, label_names=label_names,
      label_policy=label_policy if multilabel else None, views=views,
      config=config, data_dir=builder.data_dir,
      model_data=builder.data_dir, label_mapping=mapping,
      num_resamples=num_resamples, seed=seed)
  return results, predictions


class _SourceReader:
  """One source of a mixture read as a DatasetBuilder: its split with the
  mixture's targets [B, L] and patient ids prefixed by its name
  (`mixture.Mixture.source_dataset`), its own DatasetInfo (subgroups)."""

  def __init__(self, mix, index):
    self._mix = mix
    self._index = index
    source = mix.sources[index]
    self.info = source.builder.info
    self.data_dir = source.builder.data_dir

  def as_dataset(self, split, batch_size=None, **options):
    return self._mix.source_dataset(self._index, split, batch_size,
                                    **options)


def evaluate_sources(net, mix, *, label_names, batch_size,
                     splits=INTERVAL_SPLITS, num_resamples=2000, seed=0,
                     checkpoint_dir=None, read_options=None):
  """A mixture-trained model on each of its sources' splits: every label
  the source reports (the others are unknown there, not negatives) with
  patient-level intervals, operating points chosen on the source's val,
  and the macro AUC of each split; then the macro over sources.

  Args:
    net: the trained model.
    mix: the run's `mixture.Mixture`.
    label_names: the model's outputs (the mixture's labels).
    batch_size, num_resamples, seed, read_options: as `evaluate_model`.
    splits: the splits scored (val first: it picks the operating points).
    checkpoint_dir: as `evaluate_model`'s; a folder per source under it.

  Returns:
    results.json's 'sources' (a mixture run's only): {'by_source': {source
     name: {'data_dir', 'layout', 'label_policy', 'labels': {label:
     evaluate_label's dict}, 'macro': {split: ...}}}, 'macro_over_sources': {split: {'auc': mean of the sources' macro AUC
     (NaN where none is defined), 'sources': the sources averaged}}}.
  """
  out = {}
  for index, source in enumerate(mix.sources):
    reader = _SourceReader(mix, index)
    predictions, metadata = {}, {}
    for split in splits:
      targets, probs, columns = predict_split(
          net, reader, split, batch_size, **dict(read_options or {}))
      predictions[split] = (targets, probs)
      metadata[split] = columns
    scored = [name for name, columns in zip(label_names, source.columns)
              if columns]
    evaluated = evaluate(
        predictions, metadata, label_names, reader.info, scored=scored,
        num_resamples=num_resamples, seed=seed,
        checkpoint_dir=checkpoint_dir and os.path.join(checkpoint_dir,
                                                       source.name),
        interval_splits=splits)
    out[source.name] = {
        'data_dir': source.builder.data_dir, 'layout': source.layout,
        'label_policy': source.label_policy,
        'labels': evaluated['labels'], 'macro': evaluated['macro']}
  over = {}
  for split in splits:
    defined = {name: entry['macro'][split]['auc']
               for name, entry in out.items()
               if not np.isnan(entry['macro'][split]['auc'])}
    over[split] = {'auc': float(np.mean(list(defined.values())))
                   if defined else float('nan'), 'sources': list(defined)}
  return {'by_source': out, 'macro_over_sources': over}


def write_report(out_dir, results, predictions, history_csv=None):
  """Writes the pictures, results.md, then results.json (last: it marks
  the evaluation finished).

  Args:
    out_dir: the folder (made if missing).
    results: `results_document`'s dict.
    predictions: {split: (targets [N, L], probs [N, L])}.
    history_csv: a run's history.csv, for the training curves, or None.

  Returns:
    The results.md text.
  """
  os.makedirs(out_dir, exist_ok=True)
  pictures = plots.write_pictures(out_dir, results, predictions, history_csv)
  text = markdown.results_markdown(results, pictures)
  atomic.write_text(os.path.join(out_dir, run_dir.RESULTS_MD), text)
  atomic.write_text(os.path.join(out_dir, run_dir.RESULTS_JSON),
                    json.dumps(results, indent=2, default=float))
  return text


# tools/evaluate: a finished run on any converted dataset.


def default_out_dir(model_dir, data_dir, split, views=None,
                    label_methods=None):
  """model_dir/evaluation/<data_dir folder>-<split>[-<views>][-<label
  methods>]: an evaluation of some images does not replace that of all."""
  name = os.path.basename(os.path.normpath(data_dir))
  suffix = ''.join('-' + '_'.join(kept) for kept in (views, label_methods)
                   if kept)
  return os.path.join(model_dir, run_dir.EVALUATION_DIR,
                      f'{name}-{split}{suffix}')


def _run_label_names(run):
  """The run's outputs; a single-label run of an older version names
  none: the positive class of the dataset it was trained on."""
  if run.label_names:
    return list(run.label_names)
  old = run.results.get('evaluation', {})
  if old.get('model_labels'):
    return list(old['model_labels'])
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  try:
    return [pipeline.load_info(run.data_dir).class_names[1]]
  except (TypeError, pipeline.DatasetError) as e:
    raise matching.MatchingError(
        'the run records no label names and its training data is gone '
        f'({e}); retrain it with this version of tools/train') from e


def run_layout(run):
  """The layout a run's outputs are spelled in (`matching`): config.json's
  dataset record's ('mixture' for a run on several datasets); for a run
  recorded before it kept one, its training data's where that is still
  there; else None (names matched as spelled)."""
  record = run.dataset or {}
  if record.get('layout'):
    return record['layout']
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  try:
    return pipeline.load_info(run.data_dir).layout
  except (TypeError, pipeline.DatasetError):
    return None


def _stored_thresholds(run):
  """{label: {operating point: threshold}} the run chose, or None when it
  chose none (a run trained before issue 21)."""
  found = {}
  for op in curves.OPERATING_POINTS:
    for label, threshold in run.thresholds(op).items():
      if threshold is not None:
        found.setdefault(label, {})[op] = threshold
  return found or None


def _load_model(path):
  import keras  # pylint: disable=g-import-not-at-top
  # Registers the model's own layers (augmentation, preprocessing) with
  # Keras' deserializer.
  from xray_tfdata import augment  # pylint: disable=g-import-not-at-top,unused-import
  from xray_tfdata import model  # pylint: disable=g-import-not-at-top,unused-import
  return keras.saving.load_model(path)


def _open_dataset(data_dir, mapping, reader_policy=None):
  """The builder, a dataset of two classes read with the class the model's
  label matched as 1, a dataset that keeps every reader under
  `reader_policy` (the run's)."""
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  builder = pipeline.DatasetBuilder(data_dir, reader_policy=reader_policy)
  classes = builder.info.class_names
  if not builder.info.is_multilabel and len(classes) == 2:
    positive = next(iter(mapping['matched'].values()))
    builder = pipeline.DatasetBuilder(data_dir, positive_class=positive)
  return builder


def _model_targets(y, builder, names, mapping, data_names):
  """The targets [N, L] of the model's L outputs: each matched label's
  column from the reader's targets, `labels.MASKED` for the unmatched."""
  targets = np.full((len(y), len(names)), labels_lib.MASKED, np.float64)
  classes = builder.info.class_names
  for label, data_label in mapping['matched'].items():
    column = names.index(label)
    if builder.info.is_multilabel:
      targets[:, column] = y[:, data_names.index(data_label)]
    elif y.shape[1] == 1 and classes.index(data_label) == 1 and np.isin(
        y, (0, 1)).all():
      targets[:, column] = y[:, 0]  # the positive class's target, or id 1
    else:  # the stored class ids of a dataset of classes
      targets[:, column] = y[:, 0] == classes.index(data_label)
  return targets


def evaluate_run(model_dir, data_dir, split='test', out_dir=None,
                 num_resamples=None, batch_size=None, label_policy=None,
                 localization=None, views=None, label_methods=None):
  """Evaluates a finished run on a split of any converted dataset.

  Args:
    model_dir: a finished tools/train run.
    data_dir: a converted dataset: the run's own or another (external
      validation); images of another stored size are resized to the
      model's.
    split: the split to score.
    out_dir: where results.json, results.md and the pictures go; None:
      `default_out_dir`.
    num_resamples: bootstrap resamples; None: the run's setting.
    batch_size: prediction batch size; None: the run's.
    label_policy: for a dataset of labels, the policy its codes are read
      with; None: the run's, else `checks.DEFAULT_LABEL_POLICY`.
    localization: the pointing game on the split's positives
      (`localization.localize`): True asks for it (a dataset without boxes
      or masks is then an error), None does it where the dataset stores
      boxes (RSNA) or masks (SIIM), False never.
    views: a multi-label dataset's views to score (as `as_dataset`); None:
      every image. The thresholds come from the run.
    label_methods: of a dataset that stores them (PadChest), the label
      methods to score ('Physician': the test images labelled by
      physicians), as `as_dataset`; None: every image.

  Returns:
    The results dict written to out_dir/results.json (`results_document`).

  Raises:
    run_dir.RunDirError: not a finished run.
    matching.MatchingError: no label in common.
    localization.LocalizationError: localization asked of a dataset
      without boxes.
    pipeline.DatasetError: data_dir is not a converted dataset, or has no
      such split; views of a dataset of classes, label methods of a
      dataset that stores none, or a filter that keeps no image of a split
      scored; no thresholds in the run and no val split.
  """
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  run = run_dir.read(model_dir)
  settings = run.settings
  names = _run_label_names(run)
  mapping = matching.match_labels(names, pipeline.load_info(data_dir),
                                  model_layout=run_layout(run))
  builder = _open_dataset(data_dir, mapping,
                          settings.get('reader_policy'))
  info = builder.info
  info.split(split)  # a missing split fails before the model loads
  views = tuple(views) if views else None
  label_methods = tuple(label_methods) if label_methods else None
  filtered = views is not None or label_methods is not None
  if filtered:  # fails before the model loads
    builder.num_examples(split, views, label_methods)
  policy = None
  if info.is_multilabel:
    policy = (label_policy or run.label_policy or
              checks.DEFAULT_LABEL_POLICY)
    labels_lib.policy_table(policy)  # an unknown policy fails early
  has_regions = (localization_lib.has_boxes(info) or
                 localization_lib.has_masks(info))
  if localization and not has_regions:
    raise localization_lib.LocalizationError(
        f'--localization: {data_dir} stores no boxes (RSNA, NIH with its '
        'BBox_List_2017.csv and VinDr-CXR conversions do, schema.BOX_KEYS) '
        'and no masks (SIIM); drop --localization or evaluate on a dataset '
        'with boxes or masks')
  thresholds = _stored_thresholds(run)
  splits = [split]
  if thresholds is None:
    if 'val' not in info.splits:
      raise pipeline.DatasetError(
          f'{model_dir} records no operating points (trained before issue '
          f'21) and {data_dir} has no val split to choose them on')
    splits = ['val'] + [s for s in splits if s != 'val']
  if filtered:
    for s in splits:
      builder.num_examples(s, views, label_methods)  # none kept: one line
  image_size = int(settings.get('image_size', info.image_height))
  net = _load_model(run_dir.path(model_dir, run_dir.MODEL_FILE))
  batch_size = batch_size or settings.get('batch_size', 32)
  num_resamples = (settings.get('bootstrap_resamples', 2000)
                   if num_resamples is None else num_resamples)
  seed = settings.get('seed', 0)
  options = dict(image_size=image_size,
                 resize=info.image_size != (image_size, image_size))
  data_names = list(dict.fromkeys(mapping['matched'].values()))
  if info.is_multilabel:
    options.update(labels=data_names, label_policy=policy, views=views,
                   label_methods=label_methods)
  predictions, metadata = {}, {}
  for s in splits:
    y, probs, columns = predict_split(net, builder, s, batch_size, **options)
    if probs.shape[1] != len(names):
      raise matching.MatchingError(
          f'{model_dir}: the model has {probs.shape[1]} outputs but the run '
          f'names {len(names)} labels; its config.json does not belong to '
          'its model')
    predictions[s] = (_model_targets(y, builder, names, mapping, data_names),
                      probs)
    metadata[s] = {**columns, **stored_extras(builder, s, filtered)}
  temperatures = {k: v for k, v in run.temperatures().items()
                  if v is not None}
  evaluated = evaluate(predictions, metadata, names, info,
                       scored=list(mapping['matched']), thresholds=thresholds,
                       temperatures=temperatures if thresholds else None,
                       num_resamples=num_resamples, seed=seed)
  model_data = run.data_dir or data_dir
  if thresholds is not None:
    for result in evaluated['labels'].values():
      for entry in result['thresholds'].values():
        entry['chosen_on'] = f'val of {model_data}'
  if filtered:
    mapping['notes'].append(builder.view_filter_line(views, splits,
                                                     label_methods))
  if info.image_size != (image_size, image_size):
    mapping['notes'].append(
        f'images resized from {info.image_height}x{info.image_width} to the '
        f'model\'s {image_size}x{image_size}')
  found = None
  if localization is not False:
    if has_regions:
      targets = predictions[split][0]
      positives = {label: (targets[:, names.index(label)] == 1,
                           names.index(label))
                   for label in mapping['matched']}
      boxes = metadata[split].get('boxes')  # None: SIIM's masks
      if 'box_labels' in metadata[split]:
        # Each label's own boxes: a heatmap for Effusion must point at an
        # effusion's box, not at a nodule's on the same image.
        boxes = {label: label_boxes(
            boxes, metadata[split]['box_labels'],
            info.label_names.index(mapping['matched'][label]))
                 for label in positives}
      found = localization_lib.localize(
          net, builder, split, positives, boxes,
          patient_ids(metadata[split]), image_size, batch_size,
          num_resamples=num_resamples, seed=seed,
          masks=metadata[split].get('masks'))
    else:
      found = {'skipped': f'{data_dir} stores no boxes (RSNA, NIH with its '
                          'box file and VinDr-CXR conversions do) and no '
                          'masks (SIIM): no pointing game'}
  results = results_document(
      evaluated, label_names=names, label_policy=policy, views=views,
      label_methods=label_methods,
      config=settings, data_dir=data_dir, model_data=model_data,
      label_mapping=mapping, num_resamples=num_resamples, seed=seed,
      localization=found)
  write_report(out_dir or default_out_dir(model_dir, data_dir, split, views,
                                          label_methods),
               results, predictions)
  return results
