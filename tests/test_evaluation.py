"""Evaluation maths against brute-force and hand-computed references."""

import json
import math

import numpy as np
import pytest

import recount
from xray_tfdata import evaluation


brute_force_auc = recount.brute_force_auc


def noisy_scores(n, seed, separation=1.0, decimals=None):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  logits = rng.normal(size=n) + separation * (2 * labels - 1)
  probs = 1 / (1 + np.exp(-logits))
  if decimals is not None:
    probs = np.round(probs, decimals)  # many ties
  return labels, probs


def test_confusion_counts_by_hand():
  labels = [1, 1, 1, 0, 0, 0, 0, 1]
  probs = [0.9, 0.6, 0.2, 0.7, 0.1, 0.4, 0.5, 0.5]
  # Strictly greater than 0.5 is positive (Keras' rule): 0.5 is negative.
  assert evaluation.confusion_counts(labels, probs) == {
      'tp': 2, 'tn': 3, 'fp': 1, 'fn': 2}
  assert evaluation.confusion_counts(labels, probs, threshold=0.45) == {
      'tp': 3, 'tn': 2, 'fp': 2, 'fn': 1}


def test_binary_metrics_by_hand():
  labels = [1, 1, 1, 0, 0, 0, 0, 1]
  probs = [0.9, 0.6, 0.2, 0.7, 0.1, 0.4, 0.5, 0.5]
  m = evaluation.binary_metrics(labels, probs)
  assert (m['tp'], m['tn'], m['fp'], m['fn'], m['n']) == (2, 3, 1, 2, 8)
  assert m['precision'] == pytest.approx(2 / 3)
  assert m['recall'] == pytest.approx(2 / 4)
  assert m['specificity'] == pytest.approx(3 / 4)
  assert m['accuracy'] == pytest.approx(5 / 8)
  assert m['threshold'] == 0.5
  # Pairs (pos, neg): 0.9 beats 4; 0.6 beats 3; 0.5 beats 2, ties 1;
  # 0.2 beats 1. (4 + 3 + 2.5 + 1) / 16.
  assert m['auc'] == pytest.approx(10.5 / 16)
  json.dumps(m)  # plain Python numbers


def test_binary_metrics_zero_denominators_are_zero():
  m = evaluation.binary_metrics([1, 0], [0.1, 0.2], threshold=0.9)
  assert m['precision'] == 0.0 and m['recall'] == 0.0
  assert m['specificity'] == 1.0
  one_class = evaluation.binary_metrics([1, 1], [0.3, 0.8])
  assert math.isnan(one_class['auc'])


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
  m = evaluation.binary_metrics(labels, probs, threshold)
  assert (m['tp'], m['fp']) == (5, 0)


def test_youden_threshold_maximizes_j_exhaustively():
  labels, probs = noisy_scores(200, seed=3, decimals=2)
  threshold = evaluation.youden_threshold(labels, probs)

  def j(t):
    m = evaluation.binary_metrics(labels, probs, t)
    return m['recall'] + m['specificity'] - 1

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


def test_bootstrap_ci_contains_estimate_and_narrows_with_n():
  widths = []
  for n in (100, 1600):
    labels, probs = noisy_scores(n, seed=4)
    low, high = evaluation.bootstrap_auc_ci(labels, probs, num_resamples=500)
    assert low < evaluation.roc_auc(labels, probs) < high
    widths.append(high - low)
  # The width shrinks about as 1/sqrt(n): 4x less for 16x the data.
  assert widths[1] < widths[0] / 2.5


def test_bootstrap_ci_is_reproducible_and_skips_one_class_resamples():
  labels, probs = noisy_scores(50, seed=5)
  assert (evaluation.bootstrap_auc_ci(labels, probs, 200, seed=7) ==
          evaluation.bootstrap_auc_ci(labels, probs, 200, seed=7))
  # One positive among 3: many resamples have no positive; still works.
  low, high = evaluation.bootstrap_auc_ci([1, 0, 0], [0.9, 0.1, 0.2], 200)
  assert low == high == 1.0
  with pytest.raises(ValueError, match='alpha'):
    evaluation.bootstrap_auc_ci(labels, probs, alpha=1.5)


def test_evaluate_predictions_and_table_agree_with_counts():
  """Every cell of both tables, the threshold, J and the interval, against
  a recount from the predictions that shares no code with evaluation."""
  predictions = {split: noisy_scores(n, seed)
                 for split, n, seed in (('train', 400, 6), ('val', 120, 7),
                                        ('test', 150, 8))}
  results = evaluation.evaluate_predictions(predictions, num_resamples=300)
  json.dumps(results)
  table = evaluation.results_table_markdown(results)

  main = recount.markdown_rows(table, 'Results at threshold 0.5')
  assert list(main) == ['train', 'val', 'test']  # the reference's order
  for split, (labels, probs) in predictions.items():
    expected = recount.recount(labels, probs, 0.5)
    recount.assert_row(main[split], expected, recount.MAIN_COLUMNS, split)
    m = results['splits'][split]
    assert {k: m[k] for k in ('tp', 'tn', 'fp', 'fn')} == {
        k: expected[k] for k in ('tp', 'tn', 'fp', 'fn')}
    assert m['recall'] == pytest.approx(expected['sensitivity'])
    assert m['specificity'] == pytest.approx(expected['specificity'])

  youden = results['youden']
  threshold = youden['threshold']
  val_labels, val_probs = predictions['val']
  best = recount.best_youden_j(val_labels, val_probs)
  assert recount.youden_j(val_labels, val_probs, threshold) == pytest.approx(
      best)
  assert youden['j'] == pytest.approx(best)
  assert (f"Threshold {threshold:.4f} (J = sensitivity + specificity - 1 = "
          f"{best:.4f} on val).") in table
  expected = recount.recount(*predictions['test'], threshold)
  # Not a symmetric case: a swap of the two would show.
  assert abs(expected['sensitivity'] - expected['specificity']) > 1e-3
  assert youden['test']['recall'] == pytest.approx(expected['sensitivity'])
  assert youden['test']['specificity'] == pytest.approx(
      expected['specificity'])
  rows = recount.markdown_rows(table, "Threshold chosen on val")
  assert list(rows) == ['test']
  recount.assert_row(rows['test'], expected, recount.YOUDEN_COLUMNS, 'youden')

  low, high = results['test_auc_ci95']
  assert low < results['splits']['test']['auc'] < high
  test_auc = recount.brute_force_auc(*predictions['test'])
  assert (f'AUC {test_auc:.4f}, 95% CI [{low:.4f}, {high:.4f}] (percentile '
          'bootstrap, 300 resamples, seed 0).') in table


def test_table_from_plain_split_dict():
  labels, probs = noisy_scores(60, seed=9)
  m = evaluation.binary_metrics(labels, probs)
  table = evaluation.results_table_markdown({'test': m})
  assert f"| test | {m['auc']:.4f} |" in table
  assert 'Youden' not in table and 'CI' not in table


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


def test_threshold_is_chosen_on_val_only():
  results = evaluation.evaluate_predictions(
      {'val': THRESHOLD_VAL, 'test': THRESHOLD_TEST}, num_resamples=50)
  youden = results['youden']
  # The midpoint of val's split (0.28 | 0.32); test's would be 0.66.
  assert youden['threshold'] == pytest.approx(0.30)
  assert youden['chosen_on'] == 'val'
  assert youden['j'] == pytest.approx(
      recount.youden_j(*THRESHOLD_VAL, youden['threshold']))
  expected = recount.recount(*THRESHOLD_TEST, 0.30)
  assert (youden['test']['tp'], youden['test']['fp']) == (
      expected['tp'], expected['fp']) == (3, 4)


def test_bootstrap_interval_is_the_95_percentile_interval():
  """Against the percentile definition on the same resamples (drawn in
  recount, AUCs from SciPy's ranks): the 2.5th and 97.5th percentiles, which
  cover 95% of the resampled AUCs. A 90% interval (5th/95th) or one
  quantile of the wrong tail would differ by more than the tolerance."""
  labels, probs = noisy_scores(120, seed=11, separation=0.7)
  low, high = evaluation.bootstrap_auc_ci(labels, probs, num_resamples=500,
                                          seed=3)
  ref_low, ref_high, aucs = recount.percentile_bootstrap_auc(
      labels, probs, 500, seed=3)
  assert (low, high) == pytest.approx((ref_low, ref_high), abs=1e-12)
  coverage = np.mean((aucs >= low) & (aucs <= high))
  assert 0.945 <= coverage <= 0.96
  # The 90% interval is visibly narrower: the check above can tell them.
  narrow_low, narrow_high, _ = recount.percentile_bootstrap_auc(
      labels, probs, 500, seed=3, level=0.90)
  assert (high - low) - (narrow_high - narrow_low) > 0.01
  # evaluate_predictions reports the same 95% interval.
  results = evaluation.evaluate_predictions({'test': (labels, probs)},
                                            num_resamples=500, seed=3)
  assert results['test_auc_ci95'] == pytest.approx([ref_low, ref_high],
                                                   abs=1e-12)


# The clinical evaluation (issue 21), against scikit-learn and formulas
# written here.

from sklearn import metrics as sk_metrics  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.mark.parametrize('decimals', [None, 1])
def test_curve_numbers_match_scikit_learn(decimals):
  labels, probs = noisy_scores(300, seed=11, decimals=decimals)
  assert evaluation.roc_auc(labels, probs) == pytest.approx(
      sk_metrics.roc_auc_score(labels, probs), abs=1e-12)
  assert evaluation.average_precision(labels, probs) == pytest.approx(
      sk_metrics.average_precision_score(labels, probs), abs=1e-12)
  assert evaluation.brier_score(labels, probs) == pytest.approx(
      sk_metrics.brier_score_loss(labels, probs), abs=1e-12)
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
                                  if r != 'youden'])
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


def test_patient_resamples_take_patients_whole():
  patient_ids = np.array(['a', 'b', 'b', 'c', 'c', 'c', 'd'])
  sizes = {'a': 1, 'b': 2, 'c': 3, 'd': 1}
  for index in evaluation.patient_resamples(patient_ids, 50, seed=3):
    drawn = patient_ids[index]
    for patient, size in sizes.items():
      count = int(np.sum(drawn == patient))
      assert count % size == 0, (patient, count)
      # Each image of a drawn patient appears as often as the others.
      images = np.flatnonzero(patient_ids == patient)
      assert len({int(np.sum(index == i)) for i in images}) == 1
    assert np.sum([drawn == p for p in 'abcd']) == drawn.size


def test_patient_and_image_bootstrap_intervals_differ():
  """Forty patients with ten identical images each: the image bootstrap
  treats 400 examples as independent; the patient bootstrap knows there
  are forty, so its interval is about sqrt(10) times wider."""
  rng = np.random.default_rng(14)
  patient_labels = np.repeat([0, 1], 20)
  patient_probs = np.clip(0.5 + 0.25 * (2 * patient_labels - 1) +
                          rng.normal(0, 0.25, 40), 0.01, 0.99)
  labels = np.repeat(patient_labels, 10)
  probs = np.repeat(patient_probs, 10)
  patients = np.repeat(np.arange(40), 10)
  thresholds = {'youden': 0.5}
  by_patient = evaluation.bootstrap_intervals(
      labels, probs, patients, thresholds, num_resamples=400, seed=1)
  by_image = evaluation.bootstrap_intervals(
      labels, probs, None, thresholds, num_resamples=400, seed=1)

  def width(ci):
    return ci[1] - ci[0]

  for name in ('auc', 'average_precision', 'brier'):
    assert width(by_patient[name]) > 2 * width(by_image[name]), name
  sens = 'sensitivity'
  assert width(by_patient['operating_points']['youden'][sens]) > 2 * width(
      by_image['operating_points']['youden'][sens])
  # The image-level interval agrees with resampling the 400 by hand.
  draws = []
  hand = np.random.default_rng(1)
  for _ in range(400):
    index = hand.integers(0, 400, 400)
    draws.append(sk_metrics.roc_auc_score(labels[index], probs[index]))
  low, high = np.percentile(draws, [2.5, 97.5])
  assert by_image['auc'] == pytest.approx([low, high], abs=1e-12)


def test_bootstrap_level_sets_the_percentiles():
  labels, probs = noisy_scores(120, seed=15)
  wide = evaluation.bootstrap_intervals(labels, probs, num_resamples=300,
                                        level=0.95, seed=2)['auc']
  narrow = evaluation.bootstrap_intervals(labels, probs, num_resamples=300,
                                          level=0.5, seed=2)['auc']
  assert wide[0] < narrow[0] < narrow[1] < wide[1]
  with pytest.raises(ValueError, match='level'):
    evaluation.bootstrap_intervals(labels, probs, level=95)


@pytest.mark.parametrize('decimals', [None, 1])
def test_shared_bootstrap_equals_scikit_learn_on_the_resampled_copies(
    decimals, monkeypatch):
  """The weighted statistics of each resample against scikit-learn on the
  resample written out (`patient_resamples`' index arrays, a patient drawn
  twice copied twice), for two labels sharing the resamples: one with
  every target known, one scored on two thirds of the rows. Blocks of 7
  resamples, so that the blocks' seams are crossed."""
  monkeypatch.setattr(evaluation, '_BLOCK_WEIGHTS', 7 * 90)
  thresholds = np.array([0.3, 0.5, 0.7])
  labels_a, probs_a = noisy_scores(90, seed=17, decimals=decimals)
  labels_b, probs_b = noisy_scores(90, seed=18, decimals=decimals)
  ids = np.arange(90) // 3
  known_b = np.arange(90) % 3 != 1
  rows_b = np.flatnonzero(known_b)
  draws_a, draws_b = evaluation.shared_bootstrap(
      [(np.arange(90), labels_a, probs_a, thresholds),
       (rows_b, labels_b[rows_b], probs_b[rows_b], thresholds)],
      ids, num_resamples=40, seed=5)
  for r, index in enumerate(evaluation.patient_resamples(ids, 40, seed=5)):
    for labels, probs, keep, draws in (
        (labels_a, probs_a, np.ones(90, bool), draws_a),
        (labels_b, probs_b, known_b, draws_b)):
      index_known = index[keep[index]]
      y, p = labels[index_known].astype(bool), probs[index_known]
      both = 0 < y.sum() < y.size
      want = [sk_metrics.roc_auc_score(y, p) if both else math.nan,
              sk_metrics.average_precision_score(y, p) if y.any()
              else math.nan,
              sk_metrics.brier_score_loss(y, p),
              evaluation.expected_calibration_error(y, p)]
      for t in thresholds:
        m = evaluation.operating_point_metrics(y, p, t,
                                               zero_division=math.nan)
        want += [m[k] for k in evaluation.POINT_METRICS]
      np.testing.assert_allclose(draws[r], want, atol=1e-12)
  assert draws_a.shape == (40, 4 + 3 * 5)


def test_patient_weights_count_the_patients_of_patient_resamples():
  ids = np.array(['c', 'a', 'b', 'b', 'c', 'c', 'd', 'e'])
  index_arrays = list(evaluation.patient_resamples(ids, 25, seed=2))
  counts = np.concatenate(list(evaluation.patient_weights(ids, 25, seed=2)))
  assert counts.shape == (25, 5)  # patients a to e
  for index, patient_counts in zip(index_arrays, counts):
    taken = np.bincount(index, minlength=8)
    np.testing.assert_array_equal(
        taken, patient_counts[np.searchsorted(list('abcde'), ids)])


def test_percentiles_of_columns_with_nan_are_numpys():
  rng = np.random.default_rng(4)
  draws = rng.normal(size=(37, 5))
  draws[rng.random(draws.shape) < 0.3] = np.nan
  draws[:, 3] = np.nan  # no valid resample
  draws[:-1, 4] = np.nan  # one
  got, valid = evaluation._percentile_columns(draws, 0.9)  # pylint: disable=protected-access
  tail = 100 * (1 - 0.9) / 2  # 4.999..., as bootstrap_intervals had it
  for column in range(5):
    values = draws[~np.isnan(draws[:, column]), column]
    assert valid[column] == values.size
    if values.size:
      np.testing.assert_array_equal(got[column],
                                    np.percentile(values, [tail, 100 - tail]))
    else:
      assert np.isnan(got[column]).all()


def test_evaluate_label_subgroups_and_table():
  val = noisy_scores(150, seed=18)
  test = noisy_scores(160, seed=19)
  patients = np.arange(160) // 2
  view = np.where(np.arange(160) % 4 == 0, 'AP', 'PA')
  view[:3] = 'LL'  # three images: too few to score
  result = evaluation.evaluate_label(
      {'val': val, 'test': test}, patient_ids={'test': patients},
      subgroups={'test': {'view': view}}, num_resamples=100, min_subgroup=10)
  json.dumps(result)
  for op, entry in result['thresholds'].items():
    assert entry['threshold'] == evaluation.choose_threshold(*val, op)
    assert entry['chosen_on'] == 'val'
  entry = result['splits']['test']
  assert (entry['n'], entry['patients']) == (160, 80)
  assert entry['auc']['value'] == pytest.approx(
      sk_metrics.roc_auc_score(*test))
  groups = entry['subgroups']['view']
  assert groups['LL'] == {'n': 3}
  for value in ('AP', 'PA'):
    mask = view == value
    assert groups[value]['n'] == mask.sum()
    assert groups[value]['positives'] == test[0][mask].sum()
    assert groups[value]['auc']['value'] == pytest.approx(
        sk_metrics.roc_auc_score(test[0][mask], test[1][mask]))
    youden = groups[value]['operating_points']['youden']
    assert youden['sensitivity']['value'] == pytest.approx(
        recount.recount(test[0][mask], test[1][mask],
                        result['thresholds']['youden']['threshold'])[
                            'sensitivity'])
  table = evaluation.evaluation_markdown(
      {'labels': {'PNEUMONIA': result},
       'bootstrap': {'unit': 'patient', 'num_resamples': 100, 'seed': 0}})
  auc = entry['auc']
  assert (f"| test | 160 | 80 | {entry['positives']} | {auc['value']:.3f} "
          f"[{auc['ci'][0]:.3f}, {auc['ci'][1]:.3f}] |") in table
  rows = recount.markdown_rows(table, 'PNEUMONIA: operating points on test')
  del rows['operating point']  # the header
  assert len(rows) == 5
  youden = entry['operating_points']['youden']
  assert rows["Youden's J"][-4:] == [str(youden[k]) for k in
                                     ('tp', 'fp', 'tn', 'fn')]
  sub = recount.markdown_rows(table, 'PNEUMONIA: test by view')
  assert len(sub.pop('view')) == 9  # the header
  assert sub['LL'][0] == '3' and 'too few' in ' '.join(sub['LL'])
  # Every row has the header's number of cells.
  assert {len(cells) for cells in sub.values()} == {9}


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
  table = evaluation.evaluation_markdown(
      {'labels': {'PNEUMONIA': result}, 'bootstrap': {}})
  rows = recount.markdown_rows(table, 'PNEUMONIA: calibration')
  assert rows['test'][:2] == [f"{row['ece_before']:.4f}",
                              f"{row['ece_after']:.4f}"]


def test_fit_temperature_is_the_likelihood_minimum():
  labels, probs = noisy_scores(300, seed=21)
  temperature = evaluation.fit_temperature(labels, probs)

  def nll(t):
    q = evaluation.apply_temperature(probs, t)
    return sk_metrics.log_loss(labels, q)

  for other in (temperature * 0.9, temperature * 1.1):
    assert nll(temperature) < nll(other)
