"""Evaluation maths: the reference's metrics table, Youden threshold, AUC
intervals.

NumPy only, so results can be recomputed from saved predictions without
TensorFlow. Conventions follow Keras' metrics, so the numbers agree with
what `model.evaluate` reports:
  - a prediction is positive when its probability is strictly greater than
    the threshold (Keras' `y_pred > threshold`);
  - a ratio whose denominator is zero (e.g. precision with no predicted
    positives) is 0.

Results are plain dicts of Python ints and floats, ready for `json.dump`
(see `evaluate_predictions`):
  {'splits': {'train': metrics, 'val': metrics, 'test': metrics},
   'youden': {'threshold': ..., 'test': metrics, ...},
   'test_auc_ci95': [low, high], 'bootstrap': {...},
   'evaluation': {'labels': {label: evaluate_label(...)}, ...}}
where `metrics` is what `binary_metrics` returns. 'evaluation' is the
clinical reader's part: per label (one for a binary model),
thresholds chosen on validation (`OPERATING_POINTS`), and per split the AUC,
average precision, Brier score and ECE, and sensitivity, specificity, PPV,
NPV and F1 at each threshold, all with patient-level bootstrap intervals
(`bootstrap_intervals`), and the same per subgroup. Undefined numbers (AUC
of a one-class subgroup) are NaN.
"""

import hashlib
import math
import os
import time

import numpy as np

from xray_tfdata import atomic
from xray_tfdata import labels as labels_lib

SPLITS = ('train', 'val', 'test')


def _as_arrays(labels, probs):
  """Validates and flattens labels (0/1) and probabilities."""
  labels = np.asarray(labels).reshape(-1)
  probs = np.asarray(probs, dtype=np.float64).reshape(-1)
  if labels.shape != probs.shape:
    raise ValueError(
        f'{labels.size} labels but {probs.size} probabilities')
  if labels.size == 0:
    raise ValueError('no examples')
  if not np.isin(labels, (0, 1)).all():
    raise ValueError('labels must be 0 or 1')
  if np.isnan(probs).any():
    raise ValueError('probabilities contain NaN')
  return labels.astype(bool), probs


def _ratio(numerator, denominator):
  return float(numerator / denominator) if denominator else 0.0


def confusion_counts(labels, probs, threshold=0.5):
  """Counts true/false positives/negatives at a threshold.

  Args:
    labels: 0/1 ground truth, any shape.
    probs: predicted P(positive), same number of elements.
    threshold: a prediction is positive when prob > threshold.

  Returns:
    dict(tp, tn, fp, fn) of ints.

  Raises:
    ValueError: mismatched sizes, no examples, labels not 0/1, NaN probs.
  """
  labels, probs = _as_arrays(labels, probs)
  predicted = probs > threshold
  return {
      'tp': int(np.sum(predicted & labels)),
      'tn': int(np.sum(~predicted & ~labels)),
      'fp': int(np.sum(predicted & ~labels)),
      'fn': int(np.sum(~predicted & labels)),
  }


def _midranks(values):
  """1-based ranks of values, ties sharing the mean of their ranks."""
  unique, inverse, counts = np.unique(values, return_inverse=True,
                                      return_counts=True)
  del unique
  ends = np.cumsum(counts)
  midranks = ends - (counts - 1) / 2.0
  return midranks[inverse]


def _both_classes(labels, probs, what):
  """Checked arrays and the class counts; ValueError if a class is missing."""
  labels, probs = _as_arrays(labels, probs)
  positives = int(labels.sum())
  negatives = labels.size - positives
  if positives == 0 or negatives == 0:
    raise ValueError(f'{what} needs both classes')
  return labels, probs, positives, negatives


def roc_auc(labels, probs):
  """Exact area under the ROC curve (Mann-Whitney U / (P * N)).

  Equals the probability that a random positive scores above a random
  negative, ties counting one half; rank-based, so no threshold grid.

  Raises:
    ValueError: only one class present, or as `confusion_counts`.
  """
  labels, probs, positives, negatives = _both_classes(labels, probs, 'AUC')
  rank_sum = _midranks(probs)[labels].sum()
  u_statistic = rank_sum - positives * (positives + 1) / 2.0
  return float(u_statistic / (positives * negatives))


def binary_metrics(labels, probs, threshold=0.5):
  """The reference's metrics plus specificity, at one threshold.

  Args:
    labels, probs, threshold: as `confusion_counts`.

  Returns:
    dict(auc, precision, recall, specificity, accuracy, tp, tn, fp, fn,
    threshold, n). auc is NaN when only one class is present; ratios with a
    zero denominator are 0, as in Keras.
  """
  counts = confusion_counts(labels, probs, threshold)
  tp, tn, fp, fn = counts['tp'], counts['tn'], counts['fp'], counts['fn']
  try:
    auc = roc_auc(labels, probs)
  except ValueError:
    auc = math.nan
  n = tp + tn + fp + fn
  return {
      'auc': auc,
      'precision': _ratio(tp, tp + fp),
      'recall': _ratio(tp, tp + fn),
      'specificity': _ratio(tn, tn + fp),
      'accuracy': _ratio(tp + tn, n),
      **counts,
      'threshold': float(threshold),
      'n': n,
  }


def youden_threshold(labels, probs):
  """The threshold maximizing Youden's J = sensitivity + specificity - 1.

  Candidates are the ROC's operating points: every split of the sorted
  distinct probabilities into positives above and negatives below. The
  threshold returned is the midpoint between the lowest probability called
  positive and the highest called negative, so that `prob > threshold`
  reproduces the split here and new data falling between the two is not
  decided by a float coincidence. If no split beats calling everything
  negative (J = 0), the maximum probability is returned.

  Ties in J (compared exactly, in integers) go to the lowest threshold, i.e.
  the highest sensitivity: in screening, a missed pneumonia costs more than
  a false alarm.

  Returns:
    The threshold, a float.

  Raises:
    ValueError: only one class present, or as `confusion_counts`.
  """
  labels, probs, positives, negatives = _both_classes(
      labels, probs, "Youden's threshold")
  order = np.argsort(-probs, kind='stable')
  sorted_probs, sorted_labels = probs[order], labels[order]
  # Last index of each run of equal probabilities: the split points.
  ends = np.flatnonzero(np.diff(sorted_probs) != 0)
  ends = np.append(ends, sorted_probs.size - 1)
  tp = np.cumsum(sorted_labels)[ends]
  fp = (ends + 1) - tp
  # J * P * N, exact in integers: tp * N - fp * P.
  scaled_j = tp * negatives - fp * positives
  best = int(np.flatnonzero(scaled_j == scaled_j.max())[-1])
  if scaled_j[best] <= 0:
    return float(sorted_probs[0])
  # Calling everything positive has J = 0 too, so the best split leaves
  # some probability below it.
  lowest_positive = sorted_probs[ends[best]]
  highest_negative = sorted_probs[ends[best] + 1]
  return float((lowest_positive + highest_negative) / 2.0)


def bootstrap_auc_ci(labels, probs, num_resamples=2000, alpha=0.05, seed=0):
  """Percentile bootstrap confidence interval of the ROC AUC.

  Resamples examples with replacement; resamples that contain a single class
  have no AUC and are skipped (not replaced).

  Args:
    labels, probs: as `confusion_counts`.
    num_resamples: number of bootstrap resamples.
    alpha: 1 - confidence level (0.05 for a 95% interval).
    seed: NumPy random seed, for reproducible intervals.

  Returns:
    (low, high) floats.

  Raises:
    ValueError: alpha outside (0, 1), num_resamples < 1, no resample with
      both classes, or as `roc_auc`.
  """
  labels, probs = _as_arrays(labels, probs)
  if not 0 < alpha < 1:
    raise ValueError(f'alpha must be in (0, 1), got {alpha}')
  if num_resamples < 1:
    raise ValueError(f'num_resamples must be positive, got {num_resamples}')
  roc_auc(labels, probs)  # both classes present
  rng = np.random.default_rng(seed)
  aucs = []
  for _ in range(num_resamples):
    index = rng.integers(0, labels.size, labels.size)
    resampled = labels[index]
    if resampled.all() or not resampled.any():
      continue
    aucs.append(roc_auc(resampled, probs[index]))
  if not aucs:
    raise ValueError('no bootstrap resample contained both classes')
  low, high = np.percentile(aucs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
  return float(low), float(high)


def evaluate_predictions(predictions, threshold=0.5, threshold_split='val',
                         test_split='test', num_resamples=2000, seed=0):
  """Everything the results table shows, from per-split predictions.

  Args:
    predictions: dict split name -> (labels, probs).
    threshold: the fixed threshold of the main table (the reference's 0.5).
    threshold_split: split on which Youden's threshold is chosen.
    test_split: split evaluated at that threshold and bootstrapped.
    num_resamples, seed: for `bootstrap_auc_ci` (95% interval).

  Returns:
    {'splits': {split: binary_metrics}} plus, when threshold_split and
    test_split are present, 'youden': {threshold, chosen_on, j (on
    threshold_split), test_split: binary_metrics at the threshold}, and,
    when test_split is present, 'test_auc_ci95': [low, high] and
    'bootstrap': {split, num_resamples, seed}.
  """
  results = {'splits': {split: binary_metrics(labels, probs, threshold)
                        for split, (labels, probs) in predictions.items()}}
  if threshold_split in predictions and test_split in predictions:
    chosen = youden_threshold(*predictions[threshold_split])
    at_chosen = binary_metrics(*predictions[threshold_split], chosen)
    results['youden'] = {
        'threshold': chosen,
        'chosen_on': threshold_split,
        'j': at_chosen['recall'] + at_chosen['specificity'] - 1,
        test_split: binary_metrics(*predictions[test_split], chosen),
    }
  if test_split in predictions:
    low, high = bootstrap_auc_ci(*predictions[test_split], num_resamples,
                                 alpha=0.05, seed=seed)
    results['test_auc_ci95'] = [low, high]
    results['bootstrap'] = {'split': test_split,
                            'num_resamples': num_resamples, 'seed': seed}
  return results


def _is_metrics(value):
  return isinstance(value, dict) and 'tp' in value and 'auc' in value


def _ordered(metrics_by_split):
  known = [split for split in SPLITS if split in metrics_by_split]
  others = [split for split in metrics_by_split if split not in SPLITS]
  return [(split, metrics_by_split[split]) for split in known + others
          if _is_metrics(metrics_by_split[split])]


def results_table_markdown(results):
  """Formats evaluation results as Markdown.

  The reference's table (rows train/val/test; AUC, precision, recall, TP, TN, FP,
  FN, accuracy) at its threshold, then, when present, the threshold chosen
  on validation by Youden's J with the test metrics at it, and the test
  AUC's bootstrap 95% confidence interval; then, when results has
  'evaluation' (see `evaluation_markdown`), the clinical evaluation.

  Args:
    results: as made by `evaluate_predictions`: {'splits': {split:
      binary_metrics}, optional 'youden', 'test_auc_ci95', 'bootstrap'};
      other keys are ignored. A plain {split: binary_metrics} dict also
      works.

  Returns:
    The Markdown text, ending in a newline.
  """
  splits = _ordered(results.get('splits', results))
  lines = []
  if splits:
    lines += [
        f"## Results at threshold {splits[0][1]['threshold']:g}",
        '',
        '| split | AUC | precision | recall | TP | TN | FP | FN | accuracy |',
        '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for split, m in splits:
      lines.append(
          f"| {split} | {m['auc']:.4f} | {m['precision']:.4f} | "
          f"{m['recall']:.4f} | {m['tp']} | {m['tn']} | {m['fp']} | "
          f"{m['fn']} | {m['accuracy']:.4f} |")
  youden = results.get('youden')
  if youden:
    chosen_on = youden.get('chosen_on', 'val')
    j = (f" (J = sensitivity + specificity - 1 = {youden['j']:.4f} on "
         f"{chosen_on})" if 'j' in youden else '')
    lines += [
        '',
        f"## Threshold chosen on {chosen_on} (Youden's J)",
        '',
        f"Threshold {youden['threshold']:.4f}{j}.",
        '',
        '| split | sensitivity | specificity | precision | TP | TN | FP | FN '
        '| accuracy |',
        '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for split, m in _ordered(youden):
      lines.append(
          f"| {split} | {m['recall']:.4f} | {m['specificity']:.4f} | "
          f"{m['precision']:.4f} | {m['tp']} | {m['tn']} | {m['fp']} | "
          f"{m['fn']} | {m['accuracy']:.4f} |")
  if results.get('test_auc_ci95'):
    low, high = results['test_auc_ci95']
    bootstrap = results.get('bootstrap', {})
    split = bootstrap.get('split', 'test')
    point = dict(splits).get(split, {}).get('auc', math.nan)
    how = ('percentile bootstrap' + (
        f", {bootstrap['num_resamples']} resamples, seed {bootstrap['seed']}"
        if 'num_resamples' in bootstrap else ''))
    lines += [
        '',
        f'## {split.capitalize()} AUC confidence interval',
        '',
        f'AUC {point:.4f}, 95% CI [{low:.4f}, {high:.4f}] ({how}).',
    ]
  text = '\n'.join(lines) + '\n'
  if results.get('evaluation'):
    text += evaluation_markdown(results['evaluation'])
  if results.get('localization'):
    text += localization_markdown(results['localization'])
  return text


def localization_markdown(localization):
  """Markdown of tools/evaluate's pointing game (scoring.localize)."""
  lines = ['', '## Localization (pointing game)', '']
  if 'skipped' in localization:
    return '\n'.join(lines + [localization['skipped']]) + '\n'
  lines += [f"Rule: {localization['rule']}; 95% interval from a "
            'patient-level bootstrap.', '',
            '| label | positive images with boxes | patients | hits | hit '
            'rate | flat heatmaps | positives without a box |',
            '|---|---:|---:|---:|---:|---:|---:|']
  for label, entry in localization['labels'].items():
    rate = _with_ci({'value': entry['hit_rate'], 'ci': entry.get('ci')})
    lines.append(f"| {label} | {entry['n']} | {entry['patients']} | "
                 f"{entry['hits']} | {rate} | {entry['flat_heatmaps']} | "
                 f"{entry['no_box_positives']} |")
  return '\n'.join(lines) + '\n'


# The clinical evaluation: curves, operating points chosen on
# validation, calibration, patient-level bootstrap intervals, subgroups.
#
# Organised by label, so that a multi-label model adds entries instead of a
# new layout: results['evaluation']['labels'][name] holds one binary label's
# thresholds and, per split, its numbers (see `evaluate_label`).

# Operating-point rules, in the order results.md lists them: Youden's J,
# then the threshold with the best sensitivity whose specificity is at least
# the target, then the best specificity at a sensitivity target.
OPERATING_POINTS = {
    'youden': ("Youden's J", None, None),
    'sensitivity_at_90_specificity': ('best sensitivity at >= 90% '
                                      'specificity', 'specificity', 0.90),
    'sensitivity_at_95_specificity': ('best sensitivity at >= 95% '
                                      'specificity', 'specificity', 0.95),
    'specificity_at_90_sensitivity': ('best specificity at >= 90% '
                                      'sensitivity', 'sensitivity', 0.90),
    'specificity_at_95_sensitivity': ('best specificity at >= 95% '
                                      'sensitivity', 'sensitivity', 0.95),
}
# MONAI's CalibrationErrorMetric default.
CALIBRATION_BINS = 20
POINT_METRICS = ('sensitivity', 'specificity', 'ppv', 'npv', 'f1')
CURVE_METRICS = ('auc', 'average_precision', 'brier', 'ece')
# Keeps a tolerance on "at least 90%": 9/10 computed as a float is not
# always >= 0.9 to the last bit.
_TARGET_TOLERANCE = 1e-9


def average_precision(labels, probs):
  """Average precision: sum over thresholds of (R_k - R_k-1) * P_k.

  The step-wise area under the precision-recall curve, without
  interpolation (scikit-learn's `average_precision_score`), one step per
  distinct probability.

  Raises:
    ValueError: no positive (undefined), or as `confusion_counts`.
  """
  labels, probs = _as_arrays(labels, probs)
  positives = int(labels.sum())
  if positives == 0:
    raise ValueError('average precision needs a positive')
  tp, fp, _ = _cumulative_counts(labels, probs)
  precision = tp / (tp + fp)
  recall = tp / positives
  steps = np.diff(np.concatenate([[0.0], recall]))
  return float(np.sum(steps * precision))


def _cumulative_counts(labels, probs):
  """tp and fp of `prob >= t` for each distinct prob t, highest first."""
  order = np.argsort(-probs, kind='stable')
  sorted_probs, sorted_labels = probs[order], labels[order]
  ends = np.append(np.flatnonzero(np.diff(sorted_probs) != 0),
                   sorted_probs.size - 1)
  tp = np.cumsum(sorted_labels)[ends].astype(np.float64)
  fp = (ends + 1) - tp
  return tp, fp, sorted_probs[ends]


def roc_curve(labels, probs):
  """The ROC curve's points, from (0, 0) to (1, 1).

  Returns:
    (fpr, tpr, thresholds): arrays; point k > 0 calls `prob >= thresholds[k]`
    positive (scikit-learn's `roc_curve` with drop_intermediate=False);
    thresholds[0] is inf (nothing positive).

  Raises:
    ValueError: as `roc_auc`.
  """
  labels, probs, positives, negatives = _both_classes(labels, probs,
                                                      'a ROC curve')
  tp, fp, thresholds = _cumulative_counts(labels, probs)
  return (np.concatenate([[0.0], fp / negatives]),
          np.concatenate([[0.0], tp / positives]),
          np.concatenate([[np.inf], thresholds]))


def precision_recall_curve(labels, probs):
  """Precision and recall at each distinct probability, highest first.

  Returns:
    (precision, recall, thresholds), `prob >= thresholds[k]` positive.

  Raises:
    ValueError: as `average_precision`.
  """
  labels, probs = _as_arrays(labels, probs)
  if not labels.any():
    raise ValueError('a precision-recall curve needs a positive')
  tp, fp, thresholds = _cumulative_counts(labels, probs)
  return tp / (tp + fp), tp / labels.sum(), thresholds


def brier_score(labels, probs):
  """Mean squared difference between probability and label."""
  labels, probs = _as_arrays(labels, probs)
  return float(np.mean((probs - labels) ** 2))


def calibration_bins(labels, probs, num_bins=CALIBRATION_BINS):
  """Equal-width bins of the predicted P(positive), as MONAI bins them.

  MONAI's `calibration_binning`: edges linspace(0, 1 + eps32, num_bins + 1),
  a probability p goes to the first bin whose upper edge is >= p
  (torch.bucketize, right=False), clamped to the last bin.

  Returns:
    (mean_prob, fraction_positive, counts), arrays of num_bins; the means of
    an empty bin are NaN.
  """
  labels, probs = _as_arrays(labels, probs)
  if num_bins < 1:
    raise ValueError(f'num_bins must be at least 1, got {num_bins}')
  return _bin(labels, probs, num_bins)


def _upper_edges(num_bins):
  return np.linspace(0.0, 1.0 + np.finfo(np.float32).eps, num_bins + 1)[1:]


_UPPER_EDGES = _upper_edges(CALIBRATION_BINS)


def _bin(labels, probs, num_bins):
  """`calibration_bins` without the checks."""
  edges = (_UPPER_EDGES if num_bins == CALIBRATION_BINS else
           _upper_edges(num_bins))
  index = np.minimum(np.searchsorted(edges, probs, side='left'),
                     num_bins - 1)
  counts = np.bincount(index, minlength=num_bins).astype(np.float64)
  with np.errstate(invalid='ignore', divide='ignore'):
    mean_prob = np.bincount(index, probs, num_bins) / counts
    fraction = np.bincount(index, labels.astype(np.float64), num_bins) / counts
  return mean_prob, fraction, counts


def expected_calibration_error(labels, probs, num_bins=CALIBRATION_BINS):
  """ECE: the count-weighted mean over bins of |mean prob - fraction positive|.

  MONAI's `CalibrationErrorMetric(num_bins=20, calibration_reduction=
  'expected')` on one channel holding P(positive) and a 0/1 target: the
  binary label's probability is binned, not the confidence max(p, 1 - p)
  of Guo et al.'s multi-class ECE.
  """
  labels, probs = _as_arrays(labels, probs)
  return _ece(labels, probs, num_bins)


def _ece(labels, probs, num_bins=CALIBRATION_BINS):
  mean_prob, fraction, counts = _bin(labels, probs, num_bins)
  filled = counts > 0
  return float(np.sum(counts[filled] * np.abs(mean_prob[filled] -
                                              fraction[filled]))
               / counts.sum())


def _split_candidates(labels, probs):
  """Every split of the sorted probabilities: tp, fp and its threshold.

  Candidate 0 calls nothing positive (threshold: the highest probability),
  the last calls everything positive (just below the lowest); the others
  split between two distinct probabilities, at their midpoint, as
  `youden_threshold` does.
  """
  order = np.argsort(-probs, kind='stable')
  sorted_probs, sorted_labels = probs[order], labels[order]
  ends = np.append(np.flatnonzero(np.diff(sorted_probs) != 0),
                   sorted_probs.size - 1)
  tp = np.concatenate([[0], np.cumsum(sorted_labels)[ends]])
  fp = np.concatenate([[0], (ends + 1)]) - tp
  inner = (sorted_probs[ends[:-1]] + sorted_probs[ends[:-1] + 1]) / 2.0
  thresholds = np.concatenate([
      [sorted_probs[0]], inner,
      [np.nextafter(sorted_probs[-1], -np.inf)]])
  return tp, fp, thresholds


def choose_threshold(labels, probs, rule):
  """The threshold of an operating-point rule, chosen on these predictions.

  Args:
    labels, probs: as `confusion_counts` (the validation split's).
    rule: a key of OPERATING_POINTS. 'youden' is `youden_threshold`; for
      'sensitivity_at_90_specificity' and the like, among the thresholds
      whose specificity is at least the target, the one with the highest
      sensitivity (then the highest specificity), and conversely.

  Returns:
    The threshold, a float; `prob > threshold` is positive.

  Raises:
    ValueError: an unknown rule, or as `roc_auc`.
  """
  if rule not in OPERATING_POINTS:
    raise ValueError(f'unknown operating point {rule!r}; one of '
                     f'{", ".join(OPERATING_POINTS)}')
  if rule == 'youden':
    return youden_threshold(labels, probs)
  labels, probs, positives, negatives = _both_classes(
      labels, probs, 'an operating point')
  _, constrained, target = OPERATING_POINTS[rule]
  tp, fp, thresholds = _split_candidates(labels, probs)
  sensitivity = tp / positives
  specificity = 1.0 - fp / negatives
  if constrained == 'specificity':
    # Calling nothing positive always qualifies (specificity 1).
    feasible = specificity >= target - _TARGET_TOLERANCE
    best, other = sensitivity, specificity
  else:
    # Calling everything positive always qualifies (sensitivity 1).
    feasible = sensitivity >= target - _TARGET_TOLERANCE
    best, other = specificity, sensitivity
  candidates = np.flatnonzero(feasible)
  top = candidates[best[candidates] == best[candidates].max()]
  chosen = top[np.argmax(other[top])]
  return float(thresholds[chosen])


def _nan_ratio(numerator, denominator):
  return numerator / denominator if denominator else math.nan


def operating_point_metrics(labels, probs, threshold, zero_division=0.0):
  """Sensitivity, specificity, PPV, NPV and F1 at a threshold, with counts.

  Args:
    labels, probs, threshold: as `confusion_counts`.
    zero_division: the value of a ratio whose denominator is 0 (0, as
      `binary_metrics` and Keras; the bootstrap passes NaN to skip it).

  Returns:
    dict(sensitivity, specificity, ppv, npv, f1, tp, tn, fp, fn, threshold).
  """
  counts = confusion_counts(labels, probs, threshold)
  tp, tn, fp, fn = counts['tp'], counts['tn'], counts['fp'], counts['fn']

  def ratio(a, b):
    return float(a / b) if b else zero_division

  return {'sensitivity': ratio(tp, tp + fn),
          'specificity': ratio(tn, tn + fp),
          'ppv': ratio(tp, tp + fp),
          'npv': ratio(tn, tn + fn),
          'f1': ratio(2 * tp, 2 * tp + fp + fn),
          **counts, 'threshold': float(threshold)}


def _curve_statistics(labels, probs):
  """AUC, AP, Brier, ECE; NaN where undefined (one class)."""
  positives = labels.sum()
  both = 0 < positives < labels.size
  return {
      'auc': roc_auc(labels, probs) if both else math.nan,
      'average_precision': (average_precision(labels, probs) if positives
                            else math.nan),
      'brier': brier_score(labels, probs),
      'ece': expected_calibration_error(labels, probs),
  }


# The bootstrap works on weights, not copies: a resample that draws patient
# k twice counts each of k's images twice, so its statistics are weighted
# ones (weight = how often the image's patient was drawn), computed for a
# block of resamples at once with one sort per label instead of one per
# resample. One resample of a split's patients serves every label scored on
# it (each on its own known rows), as it serves the macro mean.

# Resamples per block: about this many (resample, image) pairs at once
# (1M: a block's [levels, resamples] arrays stay in the CPU's caches at
# NIH's sizes).
_BLOCK_WEIGHTS = 1_000_000


def _patient_groups(patient_ids):
  """(group of each example, number of groups): patients numbered in the
  order of their sorted ids, as `patient_resamples` numbers them."""
  _, group = np.unique(np.asarray(patient_ids), return_inverse=True)
  group = group.reshape(-1)
  return group, int(group.max()) + 1 if group.size else 0


def patient_weights(patient_ids, num_resamples, seed=0):
  """Blocks of a patient-level bootstrap as counts: `patient_resamples`'
  resamples (the same patients drawn, same seed), each as how often each
  patient is drawn; each of a patient's examples is taken that often.

  Args:
    patient_ids: one id per example.
    num_resamples, seed: as `patient_resamples`.

  Yields:
    float64 arrays [resamples in the block, patients], patients numbered
    as `_patient_groups` numbers them.
  """
  if num_resamples < 1:
    raise ValueError(f'num_resamples must be positive, got {num_resamples}')
  group, num_groups = _patient_groups(patient_ids)
  rng = np.random.default_rng(seed)
  block = max(1, min(num_resamples, _BLOCK_WEIGHTS // max(group.size, 1)))
  for start in range(0, num_resamples, block):
    size = min(block, num_resamples - start)
    # One draw of [size, patients] is the stream of `size` draws of
    # [patients] (checked against patient_resamples in the tests); each
    # row's counts in one bincount, rows offset apart.
    drawn = rng.integers(0, num_groups, (size, num_groups))
    drawn += np.arange(size)[:, None] * num_groups
    yield np.bincount(drawn.reshape(-1), minlength=size * num_groups).reshape(
        size, num_groups).astype(np.float64)


class _LabelColumn:
  """What the bootstrap needs of one label, sorted once: sparse patient x
  position tables, so that a block of resamples is a few products with
  the patients' counts.

  Args:
    rows: int indices of the examples the label is scored on (into the
      bootstrap's examples).
    labels, probs: of those rows.
    thresholds: float array of the operating points' thresholds.
    group: the patient of each of the bootstrap's examples
      (`_patient_groups`), and num_groups.
  """

  def __init__(self, rows, labels, probs, thresholds, group, num_groups):
    from scipy import sparse  # pylint: disable=g-import-not-at-top
    labels = np.asarray(labels).astype(bool)
    probs = np.asarray(probs, np.float64)
    order = np.argsort(-probs, kind='stable')
    sorted_probs, truth = probs[order], labels[order]
    patient = group[np.asarray(rows)[order]]
    size = sorted_probs.size
    # The ROC's points are the runs of equal probabilities (levels); AUC
    # and AP move only at levels holding a positive: its positives beat
    # the negatives below the level and tie the negatives in it. So the
    # weights are needed summed per positive level, and summed between
    # those levels, never one by one.
    ends = np.append(np.flatnonzero(np.diff(sorted_probs) != 0), size - 1)
    level = np.repeat(np.arange(ends.size), np.diff(np.append(-1, ends)))
    positive_levels = np.unique(level[truth])
    starts = np.append(0, ends + 1)[positive_levels]
    stops = ends[positive_levels] + 1
    cuts = np.unique(np.concatenate([[0], starts, stops]))
    segment = np.searchsorted(cuts, np.arange(size), side='right') - 1
    self.segments = sparse.csr_matrix(
        (np.ones(size), (segment, patient)), shape=(cuts.size, num_groups))
    # Rows of the cumulative sums (a zero row first) at each positive
    # level's start and stop.
    self.before = np.searchsorted(cuts, starts)
    self.through = np.searchsorted(cuts, stops)
    self.level_positives = sparse.csr_matrix(
        (np.ones(int(truth.sum())),
         (np.searchsorted(positive_levels, level[truth]), patient[truth])),
        shape=(positive_levels.size, num_groups))
    # Sums linear in the weights, per patient: 1, label, squared error,
    # residual per calibration bin, then true and false positives at each
    # threshold.
    thresholds = np.asarray(thresholds, np.float64)
    residual = sorted_probs - truth
    bins = np.minimum(np.searchsorted(_UPPER_EDGES, sorted_probs,
                                      side='left'), CALIBRATION_BINS - 1)
    in_bin = np.zeros((size, CALIBRATION_BINS))
    in_bin[np.arange(size), bins] = residual
    predicted = sorted_probs[:, None] > thresholds[None, :]
    per_example = np.concatenate([
        np.ones((size, 1)), truth[:, None].astype(np.float64),
        (residual ** 2)[:, None], in_bin,
        (predicted & truth[:, None]).astype(np.float64),
        (predicted & ~truth[:, None]).astype(np.float64)], axis=1)
    self.sums = np.zeros((num_groups, per_example.shape[1]))
    np.add.at(self.sums, patient, per_example)
    self.num_thresholds = thresholds.size

  def statistics(self, counts, sums):
    """[resamples, statistics]: CURVE_METRICS, then POINT_METRICS at each
    threshold, of each resample; NaN where undefined.

    Args:
      counts: a block of `patient_weights`, transposed: [patients,
        resamples], C-contiguous.
      sums: the block's counts times `self.sums`: [resamples, sums].
    """
    total, positives = sums[:, 0], sums[:, 1]
    negatives = total - positives
    # Levels down the rows, resamples across; row 0 of the cumulative sums
    # is before the first example.
    cumulative = np.zeros((self.segments.shape[0] + 1, counts.shape[1]))
    np.cumsum(self.segments @ counts, axis=0, out=cumulative[1:])
    tp_gain = self.level_positives @ counts
    tp_through = np.cumsum(tp_gain, axis=0)
    called = cumulative[self.through]
    above = cumulative[self.before]

    def dot(a, b):  # per resample, without [levels, resamples] temporaries
      return np.einsum('kr,kr->r', a, b)

    with np.errstate(invalid='ignore', divide='ignore'):
      # Mann-Whitney in weighted counts, ties 1/2: a positive at a level
      # beats the negatives below it (negatives - fp_through) and ties the
      # level's own (fp_gain), where fp_through = called - tp_through and
      # fp_gain = called - above - tp_gain.
      gain_called = dot(tp_gain, called)
      wins = (positives * negatives - gain_called + dot(tp_gain, tp_through)
              + 0.5 * (gain_called - dot(tp_gain, above)
                       - dot(tp_gain, tp_gain)))
      auc = wins / (positives * negatives)
      precision = np.divide(tp_through, called,
                            out=np.zeros_like(tp_through), where=called > 0)
      ap = dot(tp_gain, precision) / positives
      brier = sums[:, 2] / total
      ece = np.sum(np.abs(sums[:, 3:3 + CALIBRATION_BINS]), axis=1) / total
      t = self.num_thresholds
      tp_at = sums[:, 3 + CALIBRATION_BINS:3 + CALIBRATION_BINS + t]
      fp_at = sums[:, 3 + CALIBRATION_BINS + t:]
      fn_at = positives[:, None] - tp_at
      tn_at = negatives[:, None] - fp_at
      points = np.stack([tp_at / (tp_at + fn_at), tn_at / (tn_at + fp_at),
                         tp_at / (tp_at + fp_at), tn_at / (tn_at + fn_at),
                         2 * tp_at / (2 * tp_at + fp_at + fn_at)], axis=2)
    auc[(positives == 0) | (negatives == 0)] = math.nan
    ap[positives == 0] = math.nan
    return np.concatenate([np.stack([auc, ap, brier, ece], axis=1),
                           points.reshape(len(sums), -1)], axis=1)


def shared_bootstrap(columns, patient_ids, num_resamples, seed=0):
  """Every label's statistics on one patient-level bootstrap.

  Args:
    columns: per label (rows, labels, probs, thresholds): the indices of
      the examples it is scored on (its known targets), their 0/1 labels and
      probabilities, and a float array of operating-point thresholds.
    patient_ids: one id per example (all of them, whatever the labels).
    num_resamples, seed: as `patient_resamples`.

  Returns:
    Per label a float array [num_resamples, statistics]: CURVE_METRICS,
    then POINT_METRICS at each threshold; NaN where undefined (one class,
    a zero denominator, no known row drawn).
  """
  group, num_groups = _patient_groups(patient_ids)
  prepared = [_LabelColumn(*column, group, num_groups) for column in columns]
  # Every label's linear sums in one matrix product per block: one wide
  # product reads the counts once, where one per label would read them
  # once per label.
  linear = np.concatenate([column.sums for column in prepared], axis=1)
  bounds = np.cumsum([0] + [column.sums.shape[1] for column in prepared])
  draws = [[] for _ in prepared]
  for counts in patient_weights(patient_ids, num_resamples, seed):
    sums = counts @ linear
    counts = np.ascontiguousarray(counts.T)
    for index, (column, out) in enumerate(zip(prepared, draws)):
      out.append(column.statistics(
          counts, sums[:, bounds[index]:bounds[index + 1]]))
  return [np.concatenate(out) for out in draws]


def _percentile_interval(values, level):
  """([low, high], valid count) of the non-NaN values; [NaN, NaN] if none."""
  values = values[~np.isnan(values)]
  if not values.size:
    return [math.nan, math.nan], 0
  tail = 100 * (1 - level) / 2
  low, high = np.percentile(values, [tail, 100 - tail])
  return [float(low), float(high)], int(values.size)


def _percentile_columns(draws, level):
  """`_percentile_interval` of every column at once: (intervals [columns,
  2], valid counts), np.percentile's linear rule on each column's non-NaN
  values."""
  ordered = np.sort(draws, axis=0)  # NaN last
  valid = np.sum(~np.isnan(draws), axis=0)
  columns = np.arange(draws.shape[1])
  tail = 100 * (1 - level) / 2
  last = np.maximum(valid - 1, 0)
  bounds = []
  for q in np.true_divide([tail, 100 - tail], 100):
    # np.percentile's linear rule, its operations in its order, so that
    # the bounds agree to the last bit.
    position = (valid - 1) * q
    below = np.clip(np.floor(position), 0, last).astype(np.int64)
    above = np.clip(below + 1, 0, last)
    t = position - np.floor(position)
    a, b = ordered[below, columns], ordered[above, columns]
    with np.errstate(invalid='ignore'):
      # np.percentile's _lerp, the same rounding.
      value = np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)
    bounds.append(np.where(valid > 0, value, math.nan))
  return np.stack(bounds, axis=1), valid


def intervals_from_draws(draws, operating_points, level=0.95):
  """`bootstrap_intervals`' dict from one label's `shared_bootstrap` draws.

  Args:
    draws: [resamples, statistics].
    operating_points: the names of the thresholds, in the draws' order.
    level: the confidence level.
  """
  bounds, valid = _percentile_columns(draws, level)
  bounds, valid = bounds.tolist(), valid.tolist()
  out = {'operating_points': {op: {} for op in operating_points},
         'valid_resamples': {}}
  for column, name in enumerate(CURVE_METRICS):
    out[name], out['valid_resamples'][name] = bounds[column], valid[column]
  column = len(CURVE_METRICS)
  for op in operating_points:
    for m in POINT_METRICS:
      out['operating_points'][op][m] = bounds[column]
      out['valid_resamples'][f'{op}/{m}'] = valid[column]
      column += 1
  return out


def _macro_interval(draws, level):
  """Percentile interval of the per-resample mean AUC over labels (a label
  with one class in a resample left out of that resample's mean)."""
  aucs = np.stack([d[:, 0] for d in draws], axis=1)
  defined = ~np.isnan(aucs)
  any_defined = defined.any(axis=1)
  means = (np.where(defined, aucs, 0.0).sum(axis=1)[any_defined] /
           defined.sum(axis=1)[any_defined])
  interval, _ = _percentile_interval(means, level)
  return interval


def patient_resamples(patient_ids, num_resamples, seed=0):
  """Index arrays of a bootstrap that resamples patients, not images.

  Each resample draws as many patients as there are, with replacement, and
  takes every image of each patient drawn (a patient drawn twice counts
  twice): images of one patient are correlated, and resampling them one by
  one makes intervals too narrow. `patient_weights` gives the same
  resamples as counts per image.

  Args:
    patient_ids: one id per example (any hashable values); None: each
      example is its own patient (the ordinary bootstrap).
    num_resamples: how many resamples.
    seed: NumPy random seed.

  Yields:
    int arrays of example indices.
  """
  if num_resamples < 1:
    raise ValueError(f'num_resamples must be positive, got {num_resamples}')
  rng = np.random.default_rng(seed)
  if patient_ids is None:
    raise ValueError('patient_ids is None; pass np.arange(n) for images')
  group, num_groups = _patient_groups(patient_ids)
  order = np.argsort(group, kind='stable')
  sizes = np.bincount(group)
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  for _ in range(num_resamples):
    drawn = rng.integers(0, num_groups, num_groups)
    lengths = sizes[drawn]
    # Positions start, start+1, ... of each drawn group, in one gather.
    offsets = np.repeat(starts[drawn] - np.cumsum(lengths) + lengths, lengths)
    yield order[offsets + np.arange(lengths.sum())]


def bootstrap_intervals(labels, probs, patient_ids=None, thresholds=None,
                        num_resamples=2000, level=0.95, seed=0):
  """Percentile intervals of every statistic, resampling patients.

  Args:
    labels, probs: as `confusion_counts`.
    patient_ids: one per example; None resamples examples (each its own
      patient).
    thresholds: {operating point name: threshold} whose sensitivity,
      specificity, PPV, NPV and F1 get intervals.
    num_resamples: bootstrap resamples.
    level: the intervals' confidence level (0.95: the 2.5th and 97.5th
      percentiles).
    seed: NumPy random seed.

  Returns:
    {'auc': [low, high], 'average_precision': ..., 'brier': ..., 'ece': ...,
     'operating_points': {name: {metric: [low, high]}},
     'valid_resamples': {statistic: count}}. A resample where a statistic is
    undefined (AUC with one class, PPV with no predicted positive) is left
    out of that statistic's interval, and its count says so; an interval
    with no valid resample is [NaN, NaN].

  Raises:
    ValueError: level outside (0, 1), num_resamples < 1, or as
      `confusion_counts`.
  """
  labels, probs = _as_arrays(labels, probs)
  if not 0 < level < 1:
    raise ValueError(f'level must be in (0, 1), got {level}')
  if patient_ids is None:
    patient_ids = np.arange(labels.size)
  elif len(patient_ids) != labels.size:
    raise ValueError(f'{len(patient_ids)} patient ids for {labels.size} '
                     'examples')
  thresholds = thresholds or {}
  names = list(thresholds)
  column = (np.arange(labels.size), labels, probs,
            np.array([thresholds[op] for op in names], np.float64))
  draws, = shared_bootstrap([column], patient_ids, num_resamples, seed)
  return intervals_from_draws(draws, names, level)


def split_evaluation(labels, probs, thresholds, patient_ids=None,
                     num_resamples=2000, level=0.95, seed=0):
  """One split's numbers for one label, each with its interval.

  Args:
    labels, probs: the split's 0/1 labels and P(positive).
    thresholds: {operating point: threshold}, chosen on another split.
    patient_ids: one per example, for the patient-level bootstrap; None:
      every example its own patient.
    num_resamples, level, seed: as `bootstrap_intervals`; num_resamples 0
      leaves the intervals out.

  Returns:
    {'n', 'positives', 'negatives', 'patients',
     'auc': {'value', 'ci'}, 'average_precision', 'brier', 'ece' (alike),
     'operating_points': {name: {metric: {'value', 'ci'}, 'tp', 'tn', 'fp',
       'fn', 'threshold'}}}; 'ci' is [low, high] or absent.
  """
  labels, probs = _as_arrays(labels, probs)
  ids = np.arange(labels.size) if patient_ids is None else np.asarray(
      patient_ids)
  out = {'n': int(labels.size), 'positives': int(labels.sum()),
         'negatives': int((~labels).sum()),
         'patients': int(np.unique(ids).size)}
  intervals = (bootstrap_intervals(labels, probs, ids, thresholds,
                                   num_resamples, level, seed)
               if num_resamples else None)
  for name, value in _curve_statistics(labels, probs).items():
    out[name] = {'value': value}
    if intervals:
      out[name]['ci'] = intervals[name]
  out['operating_points'] = {}
  for op, threshold in thresholds.items():
    point = operating_point_metrics(labels, probs, threshold)
    entry = {m: {'value': point[m]} for m in POINT_METRICS}
    if intervals:
      for m in POINT_METRICS:
        entry[m]['ci'] = intervals['operating_points'][op][m]
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
    {'thresholds': {op: {'threshold', 'rule', 'chosen_on', and with a
       temperature 'calibrated_threshold' (the same decision on calibrated
       probabilities)}},
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
    thresholds = {op: choose_threshold(*predictions[threshold_split], op)
                  for op in OPERATING_POINTS}
    chosen_on = threshold_split
  else:
    chosen_on = 'given'
  out = {'thresholds': {op: {'threshold': float(t),
                             'rule': OPERATING_POINTS[op][0],
                             'chosen_on': chosen_on}
                        for op, t in thresholds.items()},
         'splits': {}}
  out['calibration'] = calibration_report(
      predictions, temperature,
      fit_split=threshold_split if chosen_on == threshold_split else None)
  if out['calibration']:
    for entry in out['thresholds'].values():
      entry['calibrated_threshold'] = float(apply_temperature(
          entry['threshold'], out['calibration']['temperature']))
  for split, (labels, probs) in predictions.items():
    labels, probs = _as_arrays(labels, probs)
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


def _with_ci(entry, digits=3):
  """'0.912 [0.871, 0.944]' from {'value', 'ci'}; '-' for NaN."""
  value = entry['value']
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return '-'
  text = f'{value:.{digits}f}'
  ci = entry.get('ci')
  if ci and not any(math.isnan(c) for c in ci):
    text += f' [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]'
  return text


def _curve_rows(name, entry):
  return (f"| {name} | {entry['n']} | {entry['patients']} | "
          f"{entry['positives']} | " +
          ' | '.join(_with_ci(entry[m]) for m in CURVE_METRICS) + ' |')


_CURVE_HEADER = ('| {what} | images | patients | positives | AUC | average '
                 'precision | Brier | ECE |\n|---|---:|---:|---:|---:|---:|'
                 '---:|---:|')


def _calibration_markdown(label, calibration):
  if not calibration:
    return []
  lines = ['', f'## {label}: calibration (temperature scaling)', '',
           f"Temperature {calibration['temperature']:.4f}, fitted on "
           f"{calibration['fitted_on']}: P = sigmoid(logit / T).", '',
           '| split | ECE before | ECE after | Brier before | Brier after |',
           '|---|---:|---:|---:|---:|']
  for split, row in calibration['splits'].items():
    lines.append(f"| {split} | {row['ece_before']:.4f} | "
                 f"{row['ece_after']:.4f} | {row['brier_before']:.4f} | "
                 f"{row['brier_after']:.4f} |")
  return lines


def evaluation_markdown(evaluation_results):
  """Markdown of `results['evaluation']`: per label, the discrimination and
  calibration of each split, the operating points with their test numbers,
  and the subgroups; every number with its 95% interval in brackets.

  Args:
    evaluation_results: {'labels': {name: `evaluate_label`'s dict},
      'bootstrap': {'unit', 'num_resamples', 'level', 'seed'}, optional
      'label_mapping', 'calibration' and 'pictures' ({name: file})}.

  Returns:
    The Markdown text, ending in a newline.
  """
  lines = []
  boot = evaluation_results.get('bootstrap', {})
  mapping = evaluation_results.get('label_mapping')
  if mapping:
    lines += ['', '## Labels', '',
              f"Model trained on {mapping.get('model_data', '?')}, "
              f"evaluated on {mapping.get('data', '?')}.", '']
    for model_label, data_label in mapping['matched'].items():
      lines.append(f'- {model_label}: scored against {data_label}')
    for label in mapping.get('unmatched_model_labels', []):
      lines.append(f'- {label}: not in the dataset, not scored')
    for label in mapping.get('unmatched_data_labels', []):
      lines.append(f'- {label} (dataset): no model output, not scored')
    for note in mapping.get('notes', []):
      lines.append(f'- {note}')
  how = (f"{boot.get('unit', 'patient')}-level percentile bootstrap, "
         f"{boot.get('num_resamples', '?')} resamples, seed "
         f"{boot.get('seed', '?')}")
  if evaluation_results.get('macro') is not None:
    lines += _per_label_markdown(evaluation_results, how)
  for label, result in evaluation_results['labels'].items():
    splits = result['splits']
    if not splits:
      lines += ['', f'## {label}: not scored', '']
      lines += [f'- {note}' for note in result.get('notes', [])]
      continue
    lines += ['', f'## {label}: discrimination and calibration', '',
              f'95% intervals in brackets ({how}). ECE: {CALIBRATION_BINS} '
              'equal-width bins of P(' + label + '), weighted by count.', '',
              _CURVE_HEADER.format(what='split')]
    for split, entry in splits.items():
      lines.append(_curve_rows(split, entry))
    if result.get('notes'):
      lines += [''] + [f'- {note}' for note in result['notes']]
    thresholds = result['thresholds']
    chosen_on = {t['chosen_on'] for t in thresholds.values()}
    for split, entry in splits.items():
      if split in chosen_on or not thresholds:
        continue  # numbers at thresholds chosen on the split itself
      lines += ['', f'## {label}: operating points on {split} (thresholds '
                f'chosen on {", ".join(sorted(chosen_on))})', '',
                '| operating point | threshold | sensitivity | specificity | '
                'PPV | NPV | F1 | TP | FP | TN | FN |',
                '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
      for op, point in entry['operating_points'].items():
        lines.append(
            f"| {thresholds[op]['rule']} | {point['threshold']:.4f} | " +
            ' | '.join(_with_ci(point[m]) for m in POINT_METRICS) +
            f" | {point['tp']} | {point['fp']} | {point['tn']} | "
            f"{point['fn']} |")
      for field, groups in entry.get('subgroups', {}).items():
        lines += ['', f'## {label}: {split} by {field}', '',
                  f'| {field} | images | patients | positives | AUC | '
                  'average precision | Brier | ECE | sensitivity (Youden) '
                  '| specificity (Youden) |', '|---|' + '---:|' * 9]
        for value, group in groups.items():
          if 'auc' not in group:
            lines.append(f"| {value} | {group['n']} | | | too few images "
                         '| | | | | |')  # 10 cells, as the header
            continue
          youden = group['operating_points'].get('youden')
          extra = (' | '.join(_with_ci(youden[m]) for m in
                              ('sensitivity', 'specificity'))
                   if youden else '- | -')
          lines.append(_curve_rows(value, group) + f' {extra} |')
    lines += _calibration_markdown(label, result.get('calibration'))
  pictures = evaluation_results.get('pictures')

  if pictures:
    lines += ['', '## Pictures', '']
    for name, path in pictures.items():
      lines += [f'{name}: [{path}]({path})', '', f'![{name}]({path})', '']
  return '\n'.join(lines) + '\n'


def _per_label_markdown(evaluation_results, how):
  """A multi-label evaluation's overview: per split a table with one row
  per label, then the macro mean and how many labels it averages."""
  mapping = (evaluation_results.get('label_mapping') or {}).get('matched', {})
  labels = evaluation_results['labels']
  lines = []
  for split, macro in evaluation_results['macro'].items():
    lines += ['', f'## Per label on {split}', '',
              f'95% intervals in brackets ({how}); each label on its known '
              'targets (masked ones left out). Sensitivity and specificity '
              "at the label's Youden threshold"
              + (' (chosen on this split)' if any(
                  t['chosen_on'] == split for r in labels.values()
                  for t in r['thresholds'].values()) else '') + '.', '',
              '| label | scored as | images | patients | positives | AUC | '
              'average precision | threshold | sensitivity | specificity '
              '| note |',
              '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|']
    for label, result in labels.items():
      entry = result['splits'].get(split)
      as_name = mapping.get(label, label)
      if entry is None:
        lines.append(f'| {label} | {as_name} | 0 | | | - | - | | | | every '
                     'target masked |')
        continue
      youden = entry['operating_points'].get('youden')
      point = ([f"{youden['threshold']:.4f}",
                _with_ci(youden['sensitivity']),
                _with_ci(youden['specificity'])] if youden
               else ['-', '-', '-'])
      note = '; '.join(entry[m]['reason'] for m in ('auc',
                                                   'average_precision')
                       if 'reason' in entry[m])
      if not youden and not note:
        note = 'no operating points'
      lines.append(
          f"| {label} | {as_name} | {entry['n']} | {entry['patients']} | "
          f"{entry['positives']} | {_with_ci(entry['auc'])} | "
          f"{_with_ci(entry['average_precision'])} | " + ' | '.join(point)
          + f' | {note} |')
    auc = _with_ci({'value': macro['auc'], 'ci': macro.get('auc_ci')})
    ap = _with_ci({'value': macro['average_precision']})
    lines += ['', f'Macro mean on {split}: AUC {auc} over the '
              f"{len(macro['auc_labels'])} of {macro['labels_scored']} "
              'scored labels with a defined AUC (the interval resamples '
              'patients once for all labels); average precision '
              f"{ap} over {len(macro['average_precision_labels'])}."]
  return lines


# Temperature scaling (Guo et al., ICML 2017), for one binary label: the
# calibrated probability is sigmoid(logit(p) / T), T fitted on validation
# by maximum likelihood. Monotone, so AUC and the decisions at matching
# thresholds are unchanged; only the probabilities move.

# Probabilities are clipped before the logit: a float32 sigmoid rounds to
# exactly 0 or 1 beyond |logit| of about 17, where the logit is lost.
_PROB_EPSILON = 1e-7
# T searched in [e^-4, e^4]: beyond, a model is not worth calibrating.
_LOG_TEMPERATURE_BOUNDS = (-4.0, 4.0)


def logit(probs):
  """log(p / (1 - p)), p clipped to [1e-7, 1 - 1e-7]."""
  probs = np.clip(np.asarray(probs, np.float64), _PROB_EPSILON,
                  1 - _PROB_EPSILON)
  return np.log(probs) - np.log1p(-probs)


def apply_temperature(probs, temperature):
  """sigmoid(logit(p) / temperature)."""
  from scipy import special  # pylint: disable=g-import-not-at-top
  return special.expit(logit(probs) / temperature)  # no overflow in exp


def fit_temperature(labels, probs):
  """The temperature minimizing the mean negative log-likelihood.

  Args:
    labels, probs: as `confusion_counts` (the validation split's).

  Returns:
    T > 0, a float: T > 1 softens an over-confident model.
  """
  from scipy import optimize  # pylint: disable=g-import-not-at-top
  labels, probs = _as_arrays(labels, probs)
  logits = logit(probs)
  signs = np.where(labels, 1.0, -1.0)

  def nll(log_t):
    # -log sigmoid(s * z / T), computed stably.
    return float(np.mean(np.logaddexp(0.0, -signs * logits / np.exp(log_t))))

  best = optimize.minimize_scalar(nll, bounds=_LOG_TEMPERATURE_BOUNDS,
                                  method='bounded',
                                  options={'xatol': 1e-6})
  return float(np.exp(best.x))


def calibration_report(predictions, temperature=None, fit_split='val'):
  """Temperature scaling's effect on every split.

  Args:
    predictions: {split: (labels, probs)}.
    temperature: a temperature fitted before (a run's, for another
      dataset), or None to fit it on fit_split.
    fit_split: the split to fit on.

  Returns:
    {'temperature', 'fitted_on', 'splits': {split: {'ece_before',
    'ece_after', 'brier_before', 'brier_after'}}}, or None when there is
    neither a temperature nor fit_split's predictions.
  """
  fitted_on = 'given'
  if temperature is None:
    if fit_split not in predictions:
      return None
    temperature = fit_temperature(*predictions[fit_split])
    fitted_on = fit_split
  splits = {}
  for split, (labels, probs) in predictions.items():
    calibrated = apply_temperature(probs, temperature)
    splits[split] = {
        'ece_before': expected_calibration_error(labels, probs),
        'ece_after': expected_calibration_error(labels, calibrated),
        'brier_before': brier_score(labels, probs),
        'brier_after': brier_score(labels, calibrated)}
  return {'temperature': float(temperature), 'fitted_on': fitted_on,
          'splits': splits}


# Multi-label models (issue 19): one binary evaluation per label, on the
# label's known targets only. Targets are float, 1 positive, 0 negative,
# `labels.MASKED` (-1) unknown under the reader's label policy; a masked
# entry takes no part in that label's numbers (its image still counts for
# the other labels).

MASKED_TARGET = labels_lib.MASKED


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
    defined = operating_point_metrics(labels, probs, point['threshold'],
                                      zero_division=math.nan)
    for metric in POINT_METRICS:
      if math.isnan(defined[metric]):
        point[metric] = {'value': math.nan,
                         'reason': 'zero denominator: undefined'}


def evaluate_multilabel(predictions, label_names, scored=None,
                        threshold_split='val', thresholds=None,
                        temperatures=None, patient_ids=None, subgroups=None,
                        num_resamples=2000, level=0.95, seed=0,
                        min_subgroup=1, checkpoint_dir=None, progress=None):
  """Every label's `evaluate_label` on its known targets, and the macro mean.

  The intervals come from one patient-level bootstrap per split (and per
  subgroup) shared by every label (`shared_bootstrap`): a resample draws
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

  Returns:
    {'labels': {label: evaluate_label's dict + 'known': {split: rows with a
       known target}, 'notes': [why a split or the operating points are
       missing]; a split's AUC (AP) entry holds 'reason' where it is NaN},
     'macro': {split: {'auc', 'average_precision': the mean over the
       labels where it is defined (NaN where none is), 'auc_labels',
       'average_precision_labels': the labels averaged, 'labels_scored',
       and with resamples 'auc_ci'}}}.
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
    macro = {'labels_scored': len(out['labels'])}
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
    if num_resamples:
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

  def bootstrap(mask, label_names_here):
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
    return dict(zip(label_names_here, shared_bootstrap(
        columns, ids[mask], num_resamples, seed)))

  draws = bootstrap(None, list(scored))
  intervals = {'labels': {name: {
      'split': intervals_from_draws(draws[name], scored[name][4], level),
      'subgroups': {}} for name in scored}}
  intervals['macro_auc_ci'] = (
      _macro_interval([draws[n] for n in macro_labels], level)
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
      for name, group_draws in bootstrap(mask, wanted).items():
        intervals['labels'][name]['subgroups'].setdefault(field, {})[
            value] = intervals_from_draws(group_draws, scored[name][4], level)
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


def macro_auc_interval(targets, probs, columns, patient_ids=None,
                       num_resamples=2000, level=0.95, seed=0):
  """Percentile interval of the macro mean AUC over columns, resampling
  patients once for all labels (their AUCs share images, so they are not
  resampled apart); a label with one class in a resample is left out of
  that resample's mean.

  Args:
    targets, probs: [N, L], MASKED_TARGET where unknown.
    columns: the labels averaged.
    patient_ids: one per row; None: each row its own patient.
    num_resamples, level, seed: as `bootstrap_intervals`.

  Returns:
    [low, high].
  """
  targets = np.asarray(targets, np.float64)
  probs = np.asarray(probs, np.float64)
  ids = np.arange(len(targets)) if patient_ids is None else patient_ids
  label_columns = []
  for column in columns:
    known = targets[:, column] != MASKED_TARGET
    label_columns.append((np.flatnonzero(known), targets[known, column],
                          probs[known, column], np.zeros(0)))
  return _macro_interval(shared_bootstrap(label_columns, ids, num_resamples,
                                          seed), level)


# Localization (issue 21): the pointing game (Zhang et al., ECCV 2016) on
# the positive images of a dataset that stores boxes: a hit when the
# heatmap's maximum lies inside one of the image's boxes, no tolerance.


def pointing_game(heatmaps, boxes):
  """Whether each heatmap's maximum falls inside one of its boxes.

  Args:
    heatmaps: [N, H, W], in the boxes' pixels (the stored image's).
    boxes: per image an array [k, 4] of (x, y, width, height), x and y the
      top-left corner; pixel (row r, column c) is the square [c, c + 1) x
      [r, r + 1), its centre (c + 0.5, r + 0.5) is tested.

  Returns:
    (hits, flat): bool [N] arrays; a flat heatmap (no positive value: the
    model points nowhere) is a miss, and flagged.
  """
  heatmaps = np.asarray(heatmaps, np.float64)
  hits = np.zeros(len(heatmaps), bool)
  flat = np.zeros(len(heatmaps), bool)
  for index, (heatmap, image_boxes) in enumerate(zip(heatmaps, boxes)):
    if not heatmap.max() > 0:
      flat[index] = True
      continue
    row, column = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    x, y = column + 0.5, row + 0.5
    image_boxes = np.asarray(image_boxes, np.float64).reshape(-1, 4)
    hits[index] = bool(np.any(
        (image_boxes[:, 0] <= x) & (x <= image_boxes[:, 0] + image_boxes[:, 2])
        & (image_boxes[:, 1] <= y) & (y <= image_boxes[:, 1] + image_boxes[:, 3])))
  return hits, flat


def hit_rate_interval(hits, patient_ids, num_resamples=2000, level=0.95,
                      seed=0):
  """Percentile interval of the hit rate, resampling patients."""
  hits = np.asarray(hits, np.float64)
  rates = [hits[index].mean() for index in
           patient_resamples(patient_ids, num_resamples, seed)]
  tail = 100 * (1 - level) / 2
  low, high = np.percentile(rates, [tail, 100 - tail])
  return [float(low), float(high)]
