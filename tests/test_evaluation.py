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
  assert list(main) == ['train', 'val', 'test']  # the seed's order
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
