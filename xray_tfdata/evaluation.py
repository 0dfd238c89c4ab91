"""Evaluation maths: the seed's metrics table, Youden threshold, AUC intervals.

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
   'test_auc_ci95': [low, high], 'bootstrap': {...}}
where `metrics` is what `binary_metrics` returns.
"""

import math

import numpy as np

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
  """The seed's metrics plus specificity, at one threshold.

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
    threshold: the fixed threshold of the main table (the seed's 0.5).
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

  The seed's table (rows train/val/test; AUC, precision, recall, TP, TN, FP,
  FN, accuracy) at its threshold, then, when present, the threshold chosen
  on validation by Youden's J with the test metrics at it, and the test
  AUC's bootstrap 95% confidence interval.

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
  return '\n'.join(lines) + '\n'
