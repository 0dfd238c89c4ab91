"""The patient-level bootstrap (evaluation.bootstrap): resamples against
their definition, each resample's statistics against scikit-learn on the
resample written out, the intervals against np.percentile."""

import math

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

import recount
from recount import noisy_scores
from xray_tfdata import evaluation
from xray_tfdata.evaluation import bootstrap


def test_image_interval_contains_the_estimate_and_narrows_with_n():
  widths = []
  for n in (100, 1600):
    labels, probs = noisy_scores(n, seed=4)
    low, high = evaluation.bootstrap_intervals(labels, probs,
                                               num_resamples=500)['auc']
    assert low < evaluation.roc_auc(labels, probs) < high
    widths.append(high - low)
  # The width shrinks about as 1/sqrt(n): 4x less for 16x the data.
  assert widths[1] < widths[0] / 2.5


def test_intervals_are_reproducible_and_skip_one_class_resamples():
  labels, probs = noisy_scores(50, seed=5)
  first = evaluation.bootstrap_intervals(labels, probs, num_resamples=200,
                                         seed=7)
  assert first == evaluation.bootstrap_intervals(labels, probs,
                                                 num_resamples=200, seed=7)
  # One positive among 3: many resamples have no positive; still works.
  one = evaluation.bootstrap_intervals([1, 0, 0], [0.9, 0.1, 0.2],
                                       num_resamples=200)
  assert one['auc'] == [1.0, 1.0]
  assert one['valid_resamples']['auc'] < 200


def test_bootstrap_interval_is_the_95_percentile_interval():
  """Against the percentile definition on the same resamples (drawn in
  recount, AUCs from SciPy's ranks): each image its own patient, the
  2.5th and 97.5th percentiles, which cover 95% of the resampled AUCs. A
  90% interval (5th/95th) or one quantile of the wrong tail would differ
  by more than the tolerance."""
  labels, probs = noisy_scores(120, seed=11, separation=0.7)
  low, high = evaluation.bootstrap_intervals(labels, probs, None,
                                             num_resamples=500,
                                             seed=3)['auc']
  ref_low, ref_high, aucs = recount.percentile_bootstrap_auc(
      labels, probs, 500, seed=3)
  assert (low, high) == pytest.approx((ref_low, ref_high), abs=1e-12)
  coverage = np.mean((aucs >= low) & (aucs <= high))
  assert 0.945 <= coverage <= 0.96
  # The 90% interval is visibly narrower: the check above can tell them.
  narrow_low, narrow_high, _ = recount.percentile_bootstrap_auc(
      labels, probs, 500, seed=3, level=0.90)
  assert (high - low) - (narrow_high - narrow_low) > 0.01


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
  monkeypatch.setattr(bootstrap, '_BLOCK_WEIGHTS', 7 * 90)
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
  got, valid = bootstrap._percentile_columns(draws, 0.9)  # pylint: disable=protected-access
  tail = 100 * (1 - 0.9) / 2  # 4.999..., as bootstrap_intervals had it
  for column in range(5):
    values = draws[~np.isnan(draws[:, column]), column]
    assert valid[column] == values.size
    if values.size:
      np.testing.assert_array_equal(got[column],
                                    np.percentile(values, [tail, 100 - tail]))
    else:
      assert np.isnan(got[column]).all()
