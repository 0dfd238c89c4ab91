"""The curve primitive and what is read off it (evaluation.curves),
against scikit-learn, brute-force pair counts and hand tables."""

import math

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

import recount
from recount import brute_force_auc
from recount import noisy_scores
from xray_tfdata import evaluation
from xray_tfdata.evaluation import curves


def test_confusion_counts_by_hand():
  labels = [1, 1, 1, 0, 0, 0, 0, 1]
  probs = [0.9, 0.6, 0.2, 0.7, 0.1, 0.4, 0.5, 0.5]
  # Strictly greater than 0.5 is positive (Keras' rule): 0.5 is negative.
  assert evaluation.confusion_counts(labels, probs) == {
      'tp': 2, 'tn': 3, 'fp': 1, 'fn': 2}
  assert evaluation.confusion_counts(labels, probs, threshold=0.45) == {
      'tp': 3, 'tn': 2, 'fp': 2, 'fn': 1}


def test_operating_point_counts_and_auc_by_hand():
  labels = [1, 1, 1, 0, 0, 0, 0, 1]
  probs = [0.9, 0.6, 0.2, 0.7, 0.1, 0.4, 0.5, 0.5]
  m = evaluation.operating_point_metrics(labels, probs, 0.5)
  assert (m['tp'], m['tn'], m['fp'], m['fn']) == (2, 3, 1, 2)
  assert m['ppv'] == pytest.approx(2 / 3)
  assert m['sensitivity'] == pytest.approx(2 / 4)
  assert m['specificity'] == pytest.approx(3 / 4)
  assert m['threshold'] == 0.5
  # Pairs (pos, neg): 0.9 beats 4; 0.6 beats 3; 0.5 beats 2, ties 1;
  # 0.2 beats 1. (4 + 3 + 2.5 + 1) / 16.
  assert evaluation.roc_auc(labels, probs) == pytest.approx(10.5 / 16)


def test_zero_denominators_are_zero_and_one_class_auc_nan():
  m = evaluation.operating_point_metrics([1, 0], [0.1, 0.2], 0.9)
  assert m['ppv'] == 0.0 and m['sensitivity'] == 0.0
  assert m['specificity'] == 1.0
  assert math.isnan(curves.nan_if_undefined(evaluation.roc_auc, [1, 1],
                                            [0.3, 0.8]))


@pytest.mark.parametrize('decimals', [None, 1, 2])
def test_the_primitive_is_scikit_learns_confusion_matrix_at_thresholds(
    decimals):
  """One sort and cumulative counts: the same tps, fps and thresholds as
  scikit-learn's `confusion_matrix_at_thresholds` (1.8+; its private
  `_binary_clf_curve` before), which its roc_curve, precision_recall_curve
  and det_curve share."""
  labels, probs = noisy_scores(400, seed=31, decimals=decimals)
  tp, fp, thresholds = evaluation.binary_clf_curve(
      *curves.as_arrays(labels, probs))
  _, sk_fp, _, sk_tp, sk_thresholds = (
      sk_metrics.confusion_matrix_at_thresholds(labels, probs))
  np.testing.assert_array_equal(tp, sk_tp)
  np.testing.assert_array_equal(fp, sk_fp)
  np.testing.assert_array_equal(thresholds, sk_thresholds)


@pytest.mark.parametrize('decimals', [None, 1])
def test_roc_auc_matches_pairwise_count(decimals):
  labels, probs = noisy_scores(300, seed=1, decimals=decimals)
  assert evaluation.roc_auc(labels, probs) == pytest.approx(
      brute_force_auc(labels, probs), abs=1e-12)


def test_roc_auc_extremes_and_errors():
  assert evaluation.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
  assert evaluation.roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
  assert evaluation.roc_auc([1, 0, 1, 0], [0.5] * 4) == 0.5
  with pytest.raises(ValueError, match='both classes'):
    evaluation.roc_auc([1, 1], [0.2, 0.3])
  with pytest.raises(ValueError, match='labels'):
    evaluation.roc_auc([2, 0], [0.2, 0.3])
  with pytest.raises(ValueError, match='2 labels but 3'):
    evaluation.roc_auc([1, 0], [0.2, 0.3, 0.4])


def test_roc_auc_close_to_keras_auc():
  import keras  # pylint: disable=g-import-not-at-top
  labels, probs = noisy_scores(2000, seed=2)
  metric = keras.metrics.AUC(num_thresholds=10000)
  metric.update_state(labels, probs)
  assert evaluation.roc_auc(labels, probs) == pytest.approx(
      float(metric.result()), abs=1e-3)


def test_youden_threshold_on_constructed_case():
  # Negatives 0.1..0.4; positives 0.35 and 0.5..0.9.
  labels = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
  probs = [0.1, 0.2, 0.3, 0.4, 0.35, 0.5, 0.6, 0.7, 0.8, 0.9]
  threshold = evaluation.youden_threshold(labels, probs)
  # Candidates: > 0.4 gives sens 5/6, spec 1 (J 0.833); > 0.3 gives
  # sens 1, spec 3/4 (J 0.75). So midpoint of 0.4 and 0.5.
  assert threshold == pytest.approx(0.45)
  m = evaluation.confusion_counts(labels, probs, threshold)
  assert (m['tp'], m['fp']) == (5, 0)


def test_youden_threshold_maximizes_j_exhaustively():
  labels, probs = noisy_scores(200, seed=3, decimals=2)
  threshold = evaluation.youden_threshold(labels, probs)

  def j(t):
    m = evaluation.operating_point_metrics(labels, probs, t)
    return m['sensitivity'] + m['specificity'] - 1

  best = max(j(t) for t in np.concatenate([np.unique(probs), [-1.0]]))
  assert j(threshold) == pytest.approx(best)


def test_youden_ties_go_to_higher_sensitivity():
  # P = N = 2. Split after 0.9: J = 1/2 + 1 - 1 = 0.5; after 0.8 (a
  # negative), J = 1/2 + 1/2 - 1 = 0; after 0.7: J = 1 + 1/2 - 1 = 0.5.
  labels = [1, 0, 1, 0]
  probs = [0.9, 0.8, 0.7, 0.1]
  assert evaluation.youden_threshold(labels, probs) == pytest.approx(0.4)


def test_youden_no_useful_split_calls_everything_negative():
  labels = [0, 1]
  probs = [0.9, 0.1]
  threshold = evaluation.youden_threshold(labels, probs)
  assert evaluation.confusion_counts(labels, probs, threshold)['tp'] == 0
  assert evaluation.confusion_counts(labels, probs, threshold)['fp'] == 0


# Issue 24: a val/test pair whose optimal thresholds differ. On val every
# negative scores below 0.3 and every positive above it (J = 1 only for a
# threshold in [0.28, 0.32)); on test the perfect split lies between 0.6
# and 0.72, and 0.3 calls four of five negatives positive.
THRESHOLD_VAL = ([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.28, 0.32, 0.5, 0.9])
THRESHOLD_TEST = ([0, 0, 0, 0, 0, 1, 1, 1],
                  [0.1, 0.35, 0.4, 0.5, 0.6, 0.72, 0.8, 0.9])


def test_threshold_pair_is_constructed_as_said():
  """The pair itself, by recount alone: val's best threshold is not
  test's, so a threshold chosen on the wrong split shows."""
  assert recount.best_youden_j(*THRESHOLD_VAL) == 1.0
  assert recount.best_youden_j(*THRESHOLD_TEST) == 1.0
  assert recount.youden_j(*THRESHOLD_TEST, 0.30) == pytest.approx(1 - 4 / 5)
  assert recount.youden_j(*THRESHOLD_VAL, 0.66) == pytest.approx(1 - 2 / 3)


def test_youden_of_the_pair_is_vals():
  """Chosen on val, the threshold is val's split (0.28 | 0.32), not
  test's (0.66); at it, test's counts are the recount's."""
  threshold = evaluation.choose_threshold(*THRESHOLD_VAL, 'youden')
  assert threshold == pytest.approx(0.30)
  got = evaluation.confusion_counts(*THRESHOLD_TEST, threshold)
  expected = recount.recount(*THRESHOLD_TEST, 0.30)
  assert (got['tp'], got['fp']) == (expected['tp'], expected['fp']) == (3, 4)


def test_the_fixed_operating_point_is_one_half_whatever_the_data():
  assert evaluation.choose_threshold(*THRESHOLD_VAL, evaluation.FIXED) == 0.5
  assert evaluation.choose_threshold([1, 1], [0.9, 0.8],
                                     evaluation.FIXED) == 0.5


@pytest.mark.parametrize('decimals', [None, 1])
def test_curve_numbers_match_scikit_learn(decimals):
  labels, probs = noisy_scores(300, seed=11, decimals=decimals)
  assert evaluation.roc_auc(labels, probs) == pytest.approx(
      sk_metrics.roc_auc_score(labels, probs), abs=1e-12)
  assert evaluation.average_precision(labels, probs) == pytest.approx(
      sk_metrics.average_precision_score(labels, probs), abs=1e-12)
  fpr, tpr, thresholds = evaluation.roc_curve(labels, probs)
  sk_fpr, sk_tpr, sk_thresholds = sk_metrics.roc_curve(
      labels, probs, drop_intermediate=False)
  np.testing.assert_allclose(fpr, sk_fpr)
  np.testing.assert_allclose(tpr, sk_tpr)
  np.testing.assert_array_equal(thresholds[1:], sk_thresholds[1:])
  precision, recall, pr_thresholds = evaluation.precision_recall_curve(
      labels, probs)
  sk_precision, sk_recall, sk_pr_thresholds = (
      sk_metrics.precision_recall_curve(labels, probs))
  # scikit-learn lists them lowest threshold first and appends (1, 0).
  np.testing.assert_allclose(precision, sk_precision[-2::-1])
  np.testing.assert_allclose(recall, sk_recall[-2::-1])
  np.testing.assert_array_equal(pr_thresholds, sk_pr_thresholds[::-1])


def test_operating_point_metrics_by_hand():
  labels = [1, 1, 1, 0, 0, 0, 0, 1]
  probs = [0.9, 0.6, 0.2, 0.7, 0.1, 0.4, 0.5, 0.5]
  m = evaluation.operating_point_metrics(labels, probs, 0.5)
  # tp 2 (0.9, 0.6), fp 1 (0.7), tn 3, fn 2 (0.2, 0.5).
  assert (m['tp'], m['fp'], m['tn'], m['fn']) == (2, 1, 3, 2)
  assert m['sensitivity'] == pytest.approx(2 / 4)
  assert m['specificity'] == pytest.approx(3 / 4)
  assert m['ppv'] == pytest.approx(2 / 3)
  assert m['npv'] == pytest.approx(3 / 5)
  assert m['f1'] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
  assert m['f1'] == pytest.approx(sk_metrics.f1_score(
      labels, np.array(probs) > 0.5))
  nothing = evaluation.operating_point_metrics(labels, probs, 0.95,
                                               zero_division=math.nan)
  assert math.isnan(nothing['ppv']) and nothing['npv'] == pytest.approx(0.5)


@pytest.mark.parametrize('rule', [r for r in evaluation.OPERATING_POINTS
                                  if r not in ('youden', evaluation.FIXED)])
def test_operating_points_are_the_best_feasible_threshold(rule):
  labels, probs = noisy_scores(250, seed=13, decimals=2)
  threshold = evaluation.choose_threshold(labels, probs, rule)
  _, constrained, target = evaluation.OPERATING_POINTS[rule]
  fpr, tpr, _ = sk_metrics.roc_curve(labels, probs, drop_intermediate=False)
  # Every operating point of the ROC (scikit-learn's), (0, 0) included.
  sens, spec = tpr, 1 - fpr
  if constrained == 'specificity':
    best = sens[spec >= target - 1e-12].max()
  else:
    best = spec[sens >= target - 1e-12].max()
  got = recount.recount(labels, probs, threshold)
  assert got[constrained] >= target - 1e-12
  other = 'sensitivity' if constrained == 'specificity' else 'specificity'
  assert got[other] == pytest.approx(best)


def test_specificity_target_counts_exactly():
  # 10 negatives: specificity 0.9 means one false positive, which 9/10 in
  # floating point (0.8999999999999999 via 1 - 1/10) must still allow.
  labels = [0] * 10 + [1] * 4
  probs = [0.1] * 8 + [0.5, 0.8] + [0.6, 0.7, 0.9, 0.3]
  threshold = evaluation.choose_threshold(
      labels, probs, 'sensitivity_at_90_specificity')
  m = evaluation.operating_point_metrics(labels, probs, threshold)
  assert (m['fp'], m['tp']) == (1, 3)  # > 0.55: 0.6, 0.7, 0.9 and 0.8
