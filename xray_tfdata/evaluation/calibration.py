"""Calibration: the Brier score, the expected calibration error over
MONAI's bins, and temperature scaling (Guo et al., ICML 2017).

Temperature scaling, for one binary label: the calibrated probability is
sigmoid(logit(p) / T), T fitted on validation by maximum likelihood.
Monotone, so AUC and the decisions at matching thresholds are unchanged;
only the probabilities move.
"""

import numpy as np

from xray_tfdata.evaluation.curves import as_arrays

# MONAI's CalibrationErrorMetric default.
CALIBRATION_BINS = 20


def brier_score(labels, probs):
  """Mean squared difference between probability and label."""
  labels, probs = as_arrays(labels, probs)
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
  labels, probs = as_arrays(labels, probs)
  if num_bins < 1:
    raise ValueError(f'num_bins must be at least 1, got {num_bins}')
  return _bin(labels, probs, num_bins)


def _upper_edges(num_bins):
  return np.linspace(0.0, 1.0 + np.finfo(np.float32).eps, num_bins + 1)[1:]


UPPER_EDGES = _upper_edges(CALIBRATION_BINS)


def _bin(labels, probs, num_bins):
  """`calibration_bins` without the checks."""
  edges = (UPPER_EDGES if num_bins == CALIBRATION_BINS else
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
  labels, probs = as_arrays(labels, probs)
  return _ece(labels, probs, num_bins)


def _ece(labels, probs, num_bins=CALIBRATION_BINS):
  mean_prob, fraction, counts = _bin(labels, probs, num_bins)
  filled = counts > 0
  return float(np.sum(counts[filled] * np.abs(mean_prob[filled] -
                                              fraction[filled]))
               / counts.sum())


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
  labels, probs = as_arrays(labels, probs)
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
