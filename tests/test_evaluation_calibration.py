"""Calibration (evaluation.calibration): the Brier score and the ECE
against scikit-learn and bins written out by hand, temperature scaling
against its likelihood."""

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from recount import noisy_scores
from xray_tfdata import evaluation


@pytest.mark.parametrize('decimals', [None, 1])
def test_brier_score_is_scikit_learns(decimals):
  labels, probs = noisy_scores(300, seed=11, decimals=decimals)
  assert evaluation.brier_score(labels, probs) == pytest.approx(
      sk_metrics.brier_score_loss(labels, probs), abs=1e-12)


def test_ece_by_hand_on_a_constructed_case():
  # 20 bins of width 0.05. Bin 0: 0.02, 0.04 (labels 0, 1): |0.03 - 0.5|.
  # Bin 10 [0.50, 0.55): 0.51, 0.53, 0.52 (labels 1, 1, 0): |0.52 - 2/3|.
  # Bin 19: 0.97 (label 1): |0.97 - 1|. 0.98 (label 0) joins it: the bin
  # then holds 0.97, 0.98 (1, 0): |0.975 - 0.5|.
  labels = [0, 1, 1, 1, 0, 1, 0]
  probs = [0.02, 0.04, 0.51, 0.53, 0.52, 0.97, 0.98]
  expected = (2 * abs(0.03 - 0.5) + 3 * abs(0.52 - 2 / 3) +
              2 * abs(0.975 - 0.5)) / 7
  assert evaluation.expected_calibration_error(labels, probs) == (
      pytest.approx(expected, abs=1e-12))
  mean_prob, fraction, counts = evaluation.calibration_bins(labels, probs)
  assert counts.tolist() == [2] + [0] * 9 + [3] + [0] * 8 + [2]
  assert np.isnan(mean_prob[1]) and fraction[10] == pytest.approx(2 / 3)
  # Perfectly calibrated in each bin: ECE 0; 1.0 falls in the last bin.
  assert evaluation.expected_calibration_error(
      [0, 1, 1, 0], [0.5, 0.5, 1.0, 0.0]) == pytest.approx(0.0)


def test_ece_matches_a_written_out_bin_loop():
  labels, probs = noisy_scores(500, seed=12)
  total = 0.0
  for k in range(20):
    low, high = k / 20, (k + 1) / 20
    # MONAI's bins are (low, high] (torch.bucketize, right=False) but the
    # first starts at 0 inclusive; no probability here sits on an edge.
    inside = (probs > low) & (probs <= high) if k else probs <= high
    if inside.any():
      total += inside.sum() * abs(probs[inside].mean() - labels[inside].mean())
  assert evaluation.expected_calibration_error(labels, probs) == (
      pytest.approx(total / 500, abs=1e-12))


def test_temperature_scaling_lowers_the_ece_of_an_over_confident_model():
  """Scores drawn calibrated (P(y=1) = sigmoid(z)), then reported as
  sigmoid(3 z): over-confident by a temperature of 3, which the fit on
  validation finds and which brings the test ECE back down."""
  rng = np.random.default_rng(20)

  def draw(n):
    z = rng.normal(0, 2, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return labels, 1 / (1 + np.exp(-3 * z))

  val, test = draw(4000), draw(4000)
  temperature = evaluation.fit_temperature(*val)
  assert temperature == pytest.approx(3.0, rel=0.1)
  report = evaluation.calibration_report({'val': val, 'test': test})
  assert report['fitted_on'] == 'val'
  assert report['temperature'] == pytest.approx(temperature)
  row = report['splits']['test']
  assert row['ece_before'] > 0.1
  assert row['ece_after'] < row['ece_before'] / 3
  assert row['brier_after'] < row['brier_before']
  # ECE after, recomputed from the formula sigmoid(logit(p) / T).
  p = np.clip(test[1], 1e-7, 1 - 1e-7)
  calibrated = 1 / (1 + np.exp(-np.log(p / (1 - p)) / temperature))
  assert row['ece_after'] == pytest.approx(
      evaluation.expected_calibration_error(test[0], calibrated))
  # Monotone: AUC unchanged; the calibrated threshold keeps each decision.
  assert sk_metrics.roc_auc_score(test[0], calibrated) == pytest.approx(
      sk_metrics.roc_auc_score(*test))
  result = evaluation.evaluate_label({'val': val, 'test': test},
                                     num_resamples=0)
  youden = result['thresholds']['youden']
  assert np.array_equal(test[1] > youden['threshold'],
                        calibrated > youden['calibrated_threshold'])


def test_fit_temperature_is_the_likelihood_minimum():
  labels, probs = noisy_scores(300, seed=21)
  temperature = evaluation.fit_temperature(labels, probs)

  def nll(t):
    q = evaluation.apply_temperature(probs, t)
    return sk_metrics.log_loss(labels, q)

  for other in (temperature * 0.9, temperature * 1.1):
    assert nll(temperature) < nll(other)
