"""One curve primitive and what is read off it: ROC, precision-recall, AUC,
average precision, and the operating points.

`binary_clf_curve` sorts the probabilities once and counts true and false
positives cumulatively at each distinct probability (scikit-learn's
`_binary_clf_curve`); every curve, area and threshold here is read off
those counts, so a new metric is a few lines on top of it, not a new sort.

Conventions follow Keras' metrics, so the numbers agree with what
`model.evaluate` reports: a prediction is positive when its probability is
strictly greater than the threshold (`y_pred > threshold`); a ratio whose
denominator is zero is 0 unless the caller asks for NaN.
"""

import math

import numpy as np

# Operating-point rules, in the order results.md lists them: the
# reference's fixed 0.5, Youden's J, then the threshold with the best
# sensitivity whose specificity is at least the target, then the best
# specificity at a sensitivity target. (rule, constrained, target).
FIXED = 'fixed_0.5'
OPERATING_POINTS = {
    FIXED: ('fixed threshold 0.5 (the reference\'s table)', None, 0.5),
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
POINT_METRICS = ('sensitivity', 'specificity', 'ppv', 'npv', 'f1')
# Keeps a tolerance on "at least 90%": 9/10 computed as a float is not
# always >= 0.9 to the last bit.
_TARGET_TOLERANCE = 1e-9


def as_arrays(labels, probs):
  """Validated, flattened labels (bool) and probabilities (float64).

  Raises:
    ValueError: mismatched sizes, no examples, labels not 0/1, NaN probs.
  """
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


def _both_classes(labels, probs, what):
  """Checked arrays and the class counts; ValueError if a class is missing."""
  labels, probs = as_arrays(labels, probs)
  positives = int(labels.sum())
  negatives = labels.size - positives
  if positives == 0 or negatives == 0:
    raise ValueError(f'{what} needs both classes')
  return labels, probs, positives, negatives


def binary_clf_curve(labels, probs):
  """The curve primitive: cumulative counts at each distinct probability.

  Args:
    labels: bool [N] (checked by the caller, `as_arrays`).
    probs: float64 [N].

  Returns:
    (tp, fp, thresholds): float64 arrays, one entry per distinct
    probability, highest first; entry k counts the examples with
    `prob >= thresholds[k]` (scikit-learn's `_binary_clf_curve`).
  """
  order = np.argsort(-probs, kind='stable')
  sorted_probs, sorted_labels = probs[order], labels[order]
  # Last index of each run of equal probabilities: the curve's points.
  ends = np.append(np.flatnonzero(np.diff(sorted_probs) != 0),
                   sorted_probs.size - 1)
  tp = np.cumsum(sorted_labels)[ends].astype(np.float64)
  fp = (ends + 1) - tp
  return tp, fp, sorted_probs[ends]


def confusion_counts(labels, probs, threshold=0.5):
  """dict(tp, tn, fp, fn) of ints at `prob > threshold`.

  Raises:
    ValueError: as `as_arrays`.
  """
  labels, probs = as_arrays(labels, probs)
  predicted = probs > threshold
  return {
      'tp': int(np.sum(predicted & labels)),
      'tn': int(np.sum(~predicted & ~labels)),
      'fp': int(np.sum(predicted & ~labels)),
      'fn': int(np.sum(~predicted & labels)),
  }


def roc_curve(labels, probs):
  """The ROC curve's points, from (0, 0) to (1, 1).

  Returns:
    (fpr, tpr, thresholds): arrays; point k > 0 calls `prob >= thresholds[k]`
    positive (scikit-learn's `roc_curve` with drop_intermediate=False);
    thresholds[0] is inf (nothing positive).

  Raises:
    ValueError: one class only, or as `as_arrays`.
  """
  labels, probs, positives, negatives = _both_classes(labels, probs,
                                                      'a ROC curve')
  tp, fp, thresholds = binary_clf_curve(labels, probs)
  return (np.concatenate([[0.0], fp / negatives]),
          np.concatenate([[0.0], tp / positives]),
          np.concatenate([[np.inf], thresholds]))


def roc_auc(labels, probs):
  """Exact area under the ROC curve: the trapezoids between its points.

  Equals the Mann-Whitney U / (P * N): the probability that a random
  positive scores above a random negative, ties counting one half (a tie
  is one diagonal step of the curve). Summed in counts, divided once.

  Raises:
    ValueError: one class only, or as `as_arrays`.
  """
  labels, probs, positives, negatives = _both_classes(labels, probs, 'AUC')
  tp, fp, _ = binary_clf_curve(labels, probs)
  tp_before = np.concatenate([[0.0], tp[:-1]])
  fp_step = np.diff(np.concatenate([[0.0], fp]))
  return float(np.sum(fp_step * (tp_before + tp)) /
               (2.0 * positives * negatives))


def precision_recall_curve(labels, probs):
  """Precision and recall at each distinct probability, highest first.

  Returns:
    (precision, recall, thresholds), `prob >= thresholds[k]` positive.

  Raises:
    ValueError: no positive, or as `as_arrays`.
  """
  labels, probs = as_arrays(labels, probs)
  if not labels.any():
    raise ValueError('a precision-recall curve needs a positive')
  tp, fp, thresholds = binary_clf_curve(labels, probs)
  return tp / (tp + fp), tp / labels.sum(), thresholds


def average_precision(labels, probs):
  """Average precision: sum over thresholds of (R_k - R_k-1) * P_k.

  The step-wise area under the precision-recall curve, without
  interpolation (scikit-learn's `average_precision_score`).

  Raises:
    ValueError: no positive (undefined), or as `as_arrays`.
  """
  precision, recall, _ = precision_recall_curve(labels, probs)
  steps = np.diff(np.concatenate([[0.0], recall]))
  return float(np.sum(steps * precision))


def _split_candidates(labels, probs):
  """Every split of the sorted probabilities: tp, fp and its threshold.

  Candidate 0 calls nothing positive (threshold: the highest probability),
  the last calls everything positive (just below the lowest); the others
  split between two distinct probabilities, at their midpoint, so that
  `prob > threshold` reproduces the split and new data falling between the
  two is not decided by a float coincidence.
  """
  tp, fp, levels = binary_clf_curve(labels, probs)
  thresholds = np.concatenate([
      [levels[0]], (levels[:-1] + levels[1:]) / 2.0,
      [np.nextafter(levels[-1], -np.inf)]])
  return (np.concatenate([[0.0], tp]), np.concatenate([[0.0], fp]),
          thresholds)


def youden_threshold(labels, probs):
  """The threshold maximizing Youden's J = sensitivity + specificity - 1.

  Candidates are the ROC's points (`_split_candidates`). If no split beats
  calling everything negative (J = 0), the maximum probability is returned.
  Ties in J (compared exactly, in counts) go to the lowest threshold, i.e.
  the highest sensitivity: in screening, a missed pneumonia costs more than
  a false alarm.

  Returns:
    The threshold, a float; `prob > threshold` is positive.

  Raises:
    ValueError: one class only, or as `as_arrays`.
  """
  labels, probs, positives, negatives = _both_classes(
      labels, probs, "Youden's threshold")
  tp, fp, thresholds = _split_candidates(labels, probs)
  # J * P * N, exact in counts: tp * N - fp * P. Calling everything positive
  # has J = 0 too, so the best split with J > 0 is an inner one.
  scaled_j = tp * negatives - fp * positives
  best = int(np.flatnonzero(scaled_j == scaled_j.max())[-1])
  if scaled_j[best] <= 0:
    return float(thresholds[0])
  return float(thresholds[best])


def choose_threshold(labels, probs, rule):
  """The threshold of an operating-point rule, chosen on these predictions.

  Args:
    labels, probs: the validation split's 0/1 labels and probabilities.
    rule: a key of OPERATING_POINTS. FIXED is 0.5 whatever the data;
      'youden' is `youden_threshold`; for 'sensitivity_at_90_specificity'
      and the like, among the thresholds whose specificity is at least the
      target, the one with the highest sensitivity (then the highest
      specificity), and conversely.

  Returns:
    The threshold, a float; `prob > threshold` is positive.

  Raises:
    ValueError: an unknown rule, one class only, or as `as_arrays`.
  """
  if rule not in OPERATING_POINTS:
    raise ValueError(f'unknown operating point {rule!r}; one of '
                     f'{", ".join(OPERATING_POINTS)}')
  if rule == FIXED:
    return OPERATING_POINTS[FIXED][2]
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


def operating_point_metrics(labels, probs, threshold, zero_division=0.0):
  """Sensitivity, specificity, PPV, NPV and F1 at a threshold, with counts.

  Args:
    labels, probs, threshold: as `confusion_counts`.
    zero_division: the value of a ratio whose denominator is 0 (0, as
      Keras; NaN where undefined should read as undefined).

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


def nan_if_undefined(function, *args):
  """function(*args), or NaN where it raises ValueError (one class)."""
  try:
    return function(*args)
  except ValueError:
    return math.nan
