"""Each label's evaluation: operating points chosen on validation, the
calibration, and per split the curve statistics and the numbers at each
operating point, with patient-level intervals, overall and per subgroup.

One path for one label and for fourteen: targets are float [N, L], 1
positive, 0 negative, `labels.MASKED` where the label policy leaves the
target unknown; each label is a binary evaluation on its known targets
(scikit-learn's `_average_binary_score` idea), and a masked entry takes no
part in that label's numbers (its image still counts for the others).
Undefined numbers (AUC of a one-class split) are NaN with a reason.
"""

import hashlib
import math
import os
import time

import numpy as np

from xray_tfdata import atomic
from xray_tfdata import labels as labels_lib
from xray_tfdata.evaluation import bootstrap
from xray_tfdata.evaluation import calibration
from xray_tfdata.evaluation import curves
from xray_tfdata.evaluation.bootstrap import CURVE_METRICS
from xray_tfdata.evaluation.curves import OPERATING_POINTS
from xray_tfdata.evaluation.curves import POINT_METRICS

MASKED_TARGET = labels_lib.MASKED


def _curve_statistics(labels, probs):
  """AUC, AP, Brier, ECE; NaN where undefined (one class)."""
  return {
      'auc': curves.nan_if_undefined(curves.roc_auc, labels, probs),
      'average_precision': curves.nan_if_undefined(
          curves.average_precision, labels, probs),
      'brier': calibration.brier_score(labels, probs),
      'ece': calibration.expected_calibration_error(labels, probs),
  }


def split_evaluation(labels, probs, thresholds, patient_ids=None,
                     num_resamples=2000, level=0.95, seed=0):
  """One split's numbers for one label, each with its interval.

  Args:
    labels, probs: the split's 0/1 labels and P(positive).
    thresholds: {operating point: threshold}, chosen on another split.
    patient_ids: one per example, for the patient-level bootstrap; None:
      every example its own patient.
    num_resamples, level, seed: as `bootstrap.bootstrap_intervals`;
      num_resamples 0 leaves the intervals out (None).

  Returns:
    {'n', 'positives', 'negatives', 'patients',
     'auc': {'value', 'ci', 'reason'}, 'average_precision', 'brier', 'ece'
     (alike), 'operating_points': {name: {metric: {'value', 'ci',
     'reason'}, 'tp', 'tn', 'fp',
       'fn', 'threshold'}}}; 'ci' is [low, high], or None without
    resamples.
  """
  labels, probs = curves.as_arrays(labels, probs)
  ids = np.arange(labels.size) if patient_ids is None else np.asarray(
      patient_ids)
  out = {'n': int(labels.size), 'positives': int(labels.sum()),
         'negatives': int((~labels).sum()),
         'patients': int(np.unique(ids).size)}
  intervals = (bootstrap.bootstrap_intervals(
      labels, probs, ids, thresholds, num_resamples, level, seed)
               if num_resamples else None)
  for name, value in _curve_statistics(labels, probs).items():
    out[name] = {'value': value,
                 'ci': intervals[name] if intervals else None,
                 'reason': None}
  out['operating_points'] = {}
  for op, threshold in thresholds.items():
    point = curves.operating_point_metrics(labels, probs, threshold)
    entry = {m: {'value': point[m],
                 'ci': (intervals['operating_points'][op][m] if intervals
                        else None),
                 'reason': None} for m in POINT_METRICS}
    entry.update({k: point[k] for k in ('tp', 'tn', 'fp', 'fn', 'threshold')})
    out['operating_points'][op] = entry
  return out


def evaluate_label(predictions, threshold_split='val', thresholds=None,
                   patient_ids=None, subgroups=None, num_resamples=2000,
                   level=0.95, seed=0, min_subgroup=1, temperature=None):
  """A binary label's full evaluation: thresholds, then every split.

  Args:
    predictions: {split: (labels, probs)}.
    threshold_split: the split the operating points are chosen on (used
      when `thresholds` is None).
    thresholds: {operating point: threshold} chosen elsewhere (e.g. on the
      training run's validation split, for an external dataset), or None.
    patient_ids: {split: ids}, one per example; a split missing resamples
      images.
    subgroups: {split: {field: values}}, one value per example (e.g.
      {'test': {'view': ['PA', 'AP', ...]}}); each value of each field is
      evaluated alone, with its counts.
    num_resamples, level, seed: the patient-level bootstrap.
    min_subgroup: subgroups with fewer examples are listed by count only.
    temperature: a temperature fitted before; None fits one on
      threshold_split when the thresholds are chosen here.

  Returns:
    {'thresholds': {op: {'threshold', 'rule', 'chosen_on',
       'calibrated_threshold' (the same decision on calibrated
       probabilities; None without a temperature)}},
     'splits': {split: `split_evaluation` + 'subgroups': {field: {value:
       split_evaluation}}},
     'calibration': `calibration_report`'s dict, or None}.

  Raises:
    ValueError: neither thresholds nor the threshold split's predictions,
      or as `choose_threshold`.
  """
  patient_ids = patient_ids or {}
  subgroups = subgroups or {}
  if thresholds is None:
    if threshold_split not in predictions:
      raise ValueError(f'no {threshold_split!r} predictions to choose the '
                       'operating points on')
    thresholds = {op: curves.choose_threshold(*predictions[threshold_split],
                                              op)
                  for op in OPERATING_POINTS}
    chosen_on = threshold_split
  else:
    chosen_on = 'given'
  out = {'thresholds': {op: {'threshold': float(t),
                             'rule': OPERATING_POINTS[op][0],
                             'chosen_on': chosen_on,
                             'calibrated_threshold': None}
                        for op, t in thresholds.items()},
         'calibration': None, 'splits': {}}
  out['calibration'] = calibration.calibration_report(
      predictions, temperature,
      fit_split=threshold_split if chosen_on == threshold_split else None)
  if out['calibration']:
    for entry in out['thresholds'].values():
      entry['calibrated_threshold'] = float(calibration.apply_temperature(
          entry['threshold'], out['calibration']['temperature']))
  for split, (labels, probs) in predictions.items():
    labels, probs = curves.as_arrays(labels, probs)
    ids = patient_ids.get(split)
    entry = split_evaluation(labels, probs, thresholds, ids, num_resamples,
                             level, seed)
    entry['subgroups'] = {}
    for field, values in subgroups.get(split, {}).items():
      values = np.asarray(values)
      groups = {}
      for value in sorted(set(values.tolist())):
        mask = values == value
        if mask.sum() < min_subgroup:
          groups[str(value)] = {'n': int(mask.sum())}
          continue
        groups[str(value)] = split_evaluation(
            labels[mask], probs[mask], thresholds,
            None if ids is None else np.asarray(ids)[mask], num_resamples,
            level, seed)
      entry['subgroups'][field] = groups
    out['splits'][split] = entry
  return out


def known_targets(targets, probs, column):
  """(0/1 labels, probs, mask of the known rows) of one column.

  Args:
    targets: float [N, L], MASKED_TARGET where unknown.
    probs: [N, L] probabilities.
    column: the label's column.

  Raises:
    ValueError: shapes differ, or a target is neither 0, 1 nor masked.
  """
  targets = np.asarray(targets, np.float64)
  probs = np.asarray(probs, np.float64)
  if targets.ndim != 2 or targets.shape != probs.shape:
    raise ValueError(f'targets {targets.shape} and probabilities '
                     f'{probs.shape} must be the same [N, L]')
  target = targets[:, column]
  known = target != MASKED_TARGET
  if not np.isin(target[known], (0.0, 1.0)).all():
    raise ValueError(f'targets of column {column} must be 0, 1 or '
                     f'{MASKED_TARGET} (masked)')
  return target[known].astype(np.int64), probs[known, column], known


def _one_class_reason(split, labels):
  """Why a split's AUC is undefined, or None when it has both classes."""
  positives = int(np.sum(labels))
  if 0 < positives < labels.size:
    return None
  which = 'positive' if positives == 0 else 'negative'
  return (f'no {which} among the {labels.size} known targets of {split}: '
          'AUC undefined')


def _undefined_points(entry, labels, probs):
  """NaN, with a reason, for the ratios at each operating point whose
  denominator is zero on a one-class split (sensitivity without a
  positive, specificity without a negative): not Keras' 0."""
  for point in entry['operating_points'].values():
    defined = curves.operating_point_metrics(
        labels, probs, point['threshold'], zero_division=math.nan)
    for metric in POINT_METRICS:
      if math.isnan(defined[metric]):
        point[metric] = {'value': math.nan, 'ci': None,
                         'reason': 'zero denominator: undefined'}


def evaluate_labels(predictions, label_names, scored=None,
                    threshold_split='val', thresholds=None,
                    temperatures=None, patient_ids=None, subgroups=None,
                    num_resamples=2000, level=0.95, seed=0,
                    min_subgroup=1, checkpoint_dir=None, progress=None,
                    interval_splits=None):
  """Every label's `evaluate_label` on its known targets, and the macro mean.

  The intervals come from one patient-level bootstrap per split (and per
  subgroup) shared by every label (`bootstrap.shared_bootstrap`): a
  resample draws
  the split's patients once, and each label is scored on the known targets
  of the images drawn, as the macro mean is.

  Args:
    predictions: {split: (targets float [N, L], MASKED_TARGET where
      unknown; probs [N, L])}, columns in label_names' order.
    label_names: the L column names.
    scored: the names to evaluate (the others are left out); None: all.
    threshold_split: the split each label's operating points and
      temperature are chosen on (when thresholds is None).
    thresholds: {label: {operating point: threshold}} chosen before (a
      run's), or None to choose them here; a label it lacks gets none.
    temperatures: {label: T} fitted before, or None.
    patient_ids: {split: ids, one per row}: the bootstrap resamples
      patients; a split missing resamples images.
    subgroups: {split: {field: values, one per row}}.
    num_resamples, level, seed, min_subgroup: as `evaluate_label`.
    checkpoint_dir: a folder where each split's intervals are written
      (atomically) as soon as they are done, keyed by everything they are
      computed from; a rerun with the same inputs reuses them, so a run
      killed during the bootstrap resumes at the split it was on. None:
      nothing is written.
    progress: called with one line of text as each split and subgroup
      field is done (e.g. print); None: silent.
    interval_splits: the splits that get intervals (the others point
      estimates, 'ci' None); None: every split.

  Returns:
    {'labels': {label: evaluate_label's dict + 'known': {split: rows with a
       known target}, 'notes': [why a split or the operating points are
       missing]; a split's AUC (AP) entry holds 'reason' where it is NaN},
     'macro': {split: {'auc', 'average_precision': the mean over the
       labels where it is defined (NaN where none is), 'auc_labels',
       'average_precision_labels': the labels averaged, 'labels_scored',
       'auc_ci' ([low, high], or None without resamples)}}}.
  """
  patient_ids = patient_ids or {}
  subgroups = subgroups or {}
  names = list(label_names)
  out = {'labels': {}, 'macro': {}}
  known_rows = {}  # {label: {split: bool [N]}} of the labels scored
  for name in (names if scored is None else scored):
    column = names.index(name)
    by_split, ids, groups, known, notes = {}, {}, {}, {}, []
    for split, (targets, probs) in predictions.items():
      labels, label_probs, mask = known_targets(targets, probs, column)
      known[split] = int(mask.sum())
      if not mask.any():
        notes.append(f'{split}: every target masked ({mask.size} images), '
                     'not scored')
        continue
      by_split[split] = (labels, label_probs)
      known_rows.setdefault(name, {})[split] = mask
      if split in patient_ids:
        ids[split] = np.asarray(patient_ids[split])[mask]
      groups[split] = {field: np.asarray(values)[mask]
                       for field, values in subgroups.get(split, {}).items()}
    if not by_split:
      out['labels'][name] = {'thresholds': {}, 'splits': {},
                             'calibration': None, 'known': known,
                             'notes': notes}
      continue
    label_thresholds = None
    if thresholds is not None:
      label_thresholds = thresholds.get(name) or {}
      if not label_thresholds:
        notes.append('no operating points: the model\'s run chose none for '
                     'this label')
    elif (threshold_split not in by_split or
          _one_class_reason(threshold_split, by_split[threshold_split][0])):
      label_thresholds = {}
      notes.append(f'no operating points and no calibration: '
                   f'{threshold_split} has '
                   + ('no known target' if threshold_split not in by_split
                      else 'one class only') + ' for this label')
    # Point estimates only: the intervals of all labels come below, from
    # one bootstrap per split.
    result = evaluate_label(
        by_split, threshold_split=threshold_split,
        thresholds=label_thresholds, patient_ids=ids, subgroups=groups,
        num_resamples=0, level=level, seed=seed, min_subgroup=min_subgroup,
        temperature=(temperatures or {}).get(name))
    result['known'] = known
    result['notes'] = notes
    out['labels'][name] = result
  for split, (targets, probs) in predictions.items():
    macro = {'labels_scored': len(out['labels']), 'auc_ci': None}
    for metric in ('auc', 'average_precision'):
      defined = {
          name: r['splits'][split][metric]['value']
          for name, r in out['labels'].items()
          if split in r['splits'] and
          not math.isnan(r['splits'][split][metric]['value'])}
      macro[metric] = (float(np.mean(list(defined.values()))) if defined
                       else math.nan)
      macro[f'{metric}_labels'] = list(defined)
    out['macro'][split] = macro
    if num_resamples and (interval_splits is None or
                          split in interval_splits):
      intervals = _split_intervals(
          split, targets, probs, names, out, known_rows,
          patient_ids.get(split), subgroups.get(split, {}), num_resamples,
          level, seed, checkpoint_dir, progress)
      _attach_intervals(out, split, intervals)
  for name, result in out['labels'].items():
    for split, entry in result['splits'].items():
      labels, label_probs, _ = known_targets(*predictions[split],
                                             names.index(name))
      reason = _one_class_reason(split, labels)
      if reason:
        entry['auc']['reason'] = reason
        _undefined_points(entry, labels, label_probs)
      if not labels.any():
        entry['average_precision']['reason'] = (
            f'no positive among the known targets of {split}: average '
            'precision undefined')
  return out


# Bumped when the intervals' maths change, so that a checkpoint written by
# another version is not reused.
_CHECKPOINT_VERSION = 1


def _split_intervals(split, targets, probs, names, out, known_rows, ids,
                     fields, num_resamples, level, seed, checkpoint_dir,
                     progress):
  """One split's intervals of every scored label, its subgroups' and the
  macro mean's, from shared bootstraps; reused from checkpoint_dir when
  it holds them for the same inputs.

  Returns:
    {'labels': {label: {'split': intervals, 'subgroups': {field: {value:
     intervals}}}}, 'macro_auc_ci': [low, high] or None}.
  """
  say = progress or (lambda line: None)
  ids = np.arange(len(targets)) if ids is None else np.asarray(ids)
  # What each label is scored on here: its known rows and operating points.
  scored = {}
  for name, result in out['labels'].items():
    if split not in result['splits']:
      continue
    column = names.index(name)
    rows = known_rows[name][split]
    ops = list(result['splits'][split]['operating_points'])
    scored[name] = (rows, targets[rows, column], probs[rows, column],
                    np.array([result['thresholds'][op]['threshold']
                              for op in ops], np.float64), ops)
  macro_labels = out['macro'][split]['auc_labels']
  # The subgroups large enough for numbers (min_subgroup), per label.
  measured = {name: {field: sorted(
      value for value, entry in groups.items() if 'auc' in entry)
      for field, groups in out['labels'][name]['splits'][split][
          'subgroups'].items()} for name in scored}
  digest = hashlib.sha256(repr((
      _CHECKPOINT_VERSION, split, num_resamples, level, seed,
      sorted(fields), macro_labels, measured,
      {n: (s[4], list(s[3])) for n, s in scored.items()})).encode())
  for value in [np.asarray(ids).astype(str)] + [
      np.asarray(fields[f]).astype(str) for f in sorted(fields)]:
    digest.update('\0'.join(value.tolist()).encode())
  for name in scored:
    rows, labels, label_probs = scored[name][:3]
    for array in (np.flatnonzero(rows), labels, label_probs):
      digest.update(np.ascontiguousarray(array, np.float64).tobytes())
  key = digest.hexdigest()
  path = (os.path.join(checkpoint_dir, f'bootstrap-{split}.json')
          if checkpoint_dir else None)
  if path and os.path.exists(path):
    try:
      saved = atomic.read_json(path)
    except atomic.DamagedStateError:
      saved = None
    if saved and saved.get('key') == key:
      say(f'evaluation of {split}: intervals reused from {path} (same '
          'predictions and settings)')
      return saved['intervals']
  begin = time.perf_counter()
  say(f'evaluation of {split}: {len(targets):,} images, '
      f'{np.unique(ids).size:,} patients, {len(scored)} labels, '
      f'{num_resamples} patient resamples shared by the labels')

  def draw(mask, label_names_here):
    """{label: draws} of the labels named, on the split's rows in mask
    (None: all)."""
    if mask is None:
      mask = np.ones(len(targets), bool)
    columns = []
    for name in label_names_here:
      rows, labels, label_probs, threshold_array, _ = scored[name]
      inside = mask[rows]  # of the label's known rows, those in mask
      columns.append((np.flatnonzero(rows[mask]), labels[inside],
                      label_probs[inside], threshold_array))
    if not columns:
      return {}
    return dict(zip(label_names_here, bootstrap.shared_bootstrap(
        columns, ids[mask], num_resamples, seed)))

  draws = draw(None, list(scored))
  intervals = {'labels': {name: {
      'split': bootstrap.intervals_from_draws(draws[name], scored[name][4],
                                              level),
      'subgroups': {}} for name in scored}}
  intervals['macro_auc_ci'] = (
      bootstrap.macro_interval([draws[n] for n in macro_labels], level)
      if macro_labels else None)
  say(f'  {split}: whole split done ({time.perf_counter() - begin:.0f} s)')
  for field in sorted(fields):
    values = np.asarray(fields[field]).astype(str)
    groups = sorted({value for name in scored
                     for value in measured[name].get(field, [])})
    for value in groups:
      mask = values == value
      wanted = [name for name in scored
                if value in measured[name].get(field, [])]
      for name, group_draws in draw(mask, wanted).items():
        intervals['labels'][name]['subgroups'].setdefault(field, {})[
            value] = bootstrap.intervals_from_draws(group_draws,
                                                    scored[name][4], level)
    say(f'  {split} by {field}: {len(groups)} subgroups done '
        f'({time.perf_counter() - begin:.0f} s)')
  if path:
    os.makedirs(checkpoint_dir, exist_ok=True)
    atomic.write_json(path, {'key': key, 'intervals': intervals})
  return intervals


def _attach_intervals(out, split, intervals):
  """Puts `_split_intervals`' intervals into the evaluation's entries."""

  def attach(entry, found):
    for name in CURVE_METRICS:
      entry[name]['ci'] = found[name]
    for op, point in entry['operating_points'].items():
      for m in POINT_METRICS:
        point[m]['ci'] = found['operating_points'][op][m]

  for name, found in intervals['labels'].items():
    entry = out['labels'][name]['splits'][split]
    attach(entry, found['split'])
    for field, groups in found['subgroups'].items():
      for value, group_found in groups.items():
        attach(entry['subgroups'][field][value], group_found)
  if intervals['macro_auc_ci'] is not None:
    out['macro'][split]['auc_ci'] = intervals['macro_auc_ci']

