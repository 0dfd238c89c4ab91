"""The multi-label loss and metric (xray_tfdata.losses) against NumPy and
scikit-learn references: masked entries, pos_weight, labels of one class."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from conftest import REPO_ROOT
from xray_tfdata import checks
from xray_tfdata import dataset_info
from xray_tfdata import labels
from xray_tfdata import losses

M = labels.MASKED


def _reference_loss(y, p, pos_weight):
  """Masked, weighted binary cross-entropy written out in NumPy (float64)."""
  y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
  p = np.clip(p, losses.EPSILON, 1 - losses.EPSILON)
  total, count = 0.0, 0
  for (b, l), target in np.ndenumerate(y):
    if target == M:
      continue
    total -= (pos_weight[l] * target * np.log(p[b, l]) +
              (1 - target) * np.log(1 - p[b, l]))
    count += 1
  return total / max(count, 1)


def _batch(seed=0, shape=(6, 3)):
  rng = np.random.default_rng(seed)
  y = rng.choice([0.0, 1.0, M], size=shape).astype(np.float32)
  p = rng.uniform(0.01, 0.99, size=shape).astype(np.float32)
  return y, p


def test_loss_equals_the_numpy_reference_with_mask_and_pos_weight():
  y, p = _batch()
  assert (y == M).any() and (y == 1).any() and (y == 0).any()
  weights = [0.5, 2.0, 7.0]
  got = float(losses.MaskedBinaryCrossentropy(weights)(y, p))
  assert got == pytest.approx(_reference_loss(y, p, weights), rel=1e-5)


def test_masked_entries_do_not_change_the_loss():
  """Whatever the prediction at a masked entry, the loss is the same; and
  without pos_weight on known entries only it is Keras' own BCE."""
  y, p = _batch(1)
  other = p.copy()
  other[y == M] = 1 - other[y == M]
  loss = losses.MaskedBinaryCrossentropy()
  assert float(loss(y, p)) == pytest.approx(float(loss(y, other)), rel=1e-6)
  known = y != M
  keras_bce = keras.losses.BinaryCrossentropy()(y[known][:, None],
                                                p[known][:, None])
  assert float(loss(y, p)) == pytest.approx(float(keras_bce), rel=1e-5)


def test_a_batch_without_known_entries_costs_nothing():
  y = np.full((4, 2), M, np.float32)
  p = np.full((4, 2), 0.3, np.float32)
  assert float(losses.MaskedBinaryCrossentropy([3.0, 1.0])(y, p)) == 0.0


def test_pos_weight_scales_only_the_positive_terms():
  y = np.array([[1.0, 0.0]], np.float32)
  p = np.array([[0.2, 0.6]], np.float32)
  plain = float(losses.MaskedBinaryCrossentropy()(y, p))
  weighted = float(losses.MaskedBinaryCrossentropy([3.0, 3.0])(y, p))
  positive, negative = -np.log(0.2), -np.log(1 - 0.6)
  assert plain == pytest.approx((positive + negative) / 2, rel=1e-6)
  assert weighted == pytest.approx((3 * positive + negative) / 2, rel=1e-6)


def test_labels_has_the_targets_of_each_policy_checks_allows():
  """checks declares the policies, labels their targets: the two agree."""
  assert tuple(labels._TARGETS) == checks.LABEL_POLICIES  # pylint: disable=protected-access
  assert checks.DEFAULT_LABEL_POLICY in checks.LABEL_POLICIES


def test_pos_weights_are_negatives_over_positives_of_the_known_targets():
  """The counts are of targets, made under the policy (test_selection
  checks DatasetBuilder.target_counts against a recount)."""
  counts = {'A': {'positive': 10, 'negative': 30},
            'B': {'positive': 4, 'negative': 5}}
  assert losses.pos_weights(counts, ['B', 'A'], 'txv') == [5 / 4, 3.0]


def test_pos_weights_refuse_a_label_without_positives_in_one_line():
  counts = {'A': {'positive': 3, 'negative': 3},
            'B': {'positive': 0, 'negative': 5}}
  with pytest.raises(dataset_info.DatasetError) as caught:
    losses.pos_weights(counts, ['A', 'B'], 'u_zeros')
  message = str(caught.value)
  assert '\n' not in message and "'B'" in message and '--labels' in message
  assert 'u_zeros' in message
  assert losses.pos_weights(counts, ['A'], 'u_zeros') == [1.0]


def test_pos_weights_are_capped():
  """--pos_weight_cap bounds the ratio (a rare label's 99 becomes 10); a
  ratio under the cap is left as it is."""
  counts = {'rare': {'positive': 1, 'negative': 99},
            'common': {'positive': 20, 'negative': 60}}
  assert losses.pos_weights(counts, ['rare', 'common'], 'u_ones',
                            cap=10.0) == [10.0, 3.0]
  assert losses.pos_weights(counts, ['rare', 'common'], 'u_ones') == [
      99.0, 3.0]


def _metric_value(y, p, num_bins=losses.DEFAULT_NUM_BINS, chunks=2):
  metric = losses.MaskedAUC(y.shape[1], num_bins=num_bins)
  for part in np.array_split(np.arange(len(y)), chunks):
    metric.update_state(y[part], p[part])
  return float(metric.result())


def _on_bins(p, num_bins):
  """Scores moved to bin centres: each bin holds one score value, so the
  binned AUC is the exact one, ties included."""
  return ((np.floor(p * num_bins) + 0.5) / num_bins).astype(np.float32)


def test_masked_auc_is_the_macro_mean_of_scikit_learns_per_label_aucs():
  rng = np.random.default_rng(2)
  y = rng.choice([0.0, 1.0, M], size=(80, 3)).astype(np.float32)
  p = _on_bins(rng.uniform(size=y.shape), losses.DEFAULT_NUM_BINS)
  expected = np.mean([roc_auc_score(y[y[:, l] != M, l], p[y[:, l] != M, l])
                      for l in range(3)])
  assert _metric_value(y, p) == pytest.approx(expected, abs=1e-6)


def test_each_labels_auc_is_scikit_learns_for_that_label():
  """label_metrics: the macro AUC, then one AUC per label, named after it
  (fit's logs show each label's validation AUC)."""
  rng = np.random.default_rng(3)
  y = rng.choice([0.0, 1.0, M], size=(80, 3)).astype(np.float32)
  p = _on_bins(rng.uniform(size=y.shape), losses.DEFAULT_NUM_BINS)
  metrics = losses.label_metrics(['Effusion', 'Pleural Effusion', 'C'])
  assert [m.name for m in metrics] == [
      'auc', 'auc_Effusion', 'auc_Pleural_Effusion', 'auc_C',
      'tp', 'fp', 'tn', 'fn', 'accuracy', 'precision', 'recall']
  for part in np.array_split(np.arange(len(y)), 2):
    for metric in metrics:
      metric.update_state(y[part], p[part])
  expected = [roc_auc_score(y[y[:, l] != M, l], p[y[:, l] != M, l])
              for l in range(3)]
  assert [float(m.result()) for m in metrics[1:4]] == pytest.approx(
      expected, abs=1e-6)
  assert float(metrics[0].result()) == pytest.approx(np.mean(expected),
                                                     abs=1e-6)
  with pytest.raises(ValueError, match='label_index'):
    losses.MaskedAUC(3, label_index=3)


def test_masked_auc_leaves_out_a_label_of_one_class_instead_of_a_zero():
  """Label 1 has no positive among its known entries (its positives are
  masked): Keras' AUC(multi_label=True) averages a 0 in for it; ours
  averages labels 0 and 2 only."""
  rng = np.random.default_rng(3)
  y = rng.choice([0.0, 1.0], size=(60, 3)).astype(np.float32)
  p = _on_bins(0.4 * y + 0.6 * rng.uniform(size=y.shape), 50)
  y[y[:, 1] == 1, 1] = M
  expected = np.mean([roc_auc_score(y[:, l], p[:, l]) for l in (0, 2)])
  assert _metric_value(y, p, num_bins=50) == pytest.approx(expected, abs=1e-6)
  keras_auc = keras.metrics.AUC(multi_label=True)
  keras_auc.update_state(np.where(y == M, 0, y), p)
  # The fake 0 we avoid: a third of the mean of the other two is lost.
  assert float(keras_auc.result()) == pytest.approx(expected * 2 / 3,
                                                    abs=0.02)


def test_masked_auc_without_any_label_of_both_classes_is_nan():
  y = np.array([[1.0, M], [1.0, 0.0]], np.float32)
  assert np.isnan(_metric_value(y, np.full((2, 2), 0.5, np.float32), chunks=1))


def test_metric_resets_between_epochs():
  y, p = _batch(4, (40, 2))
  metric = losses.MaskedAUC(2)
  metric.update_state(1 - np.where(y == M, 0, y), p)
  metric.reset_state()
  metric.update_state(y, p)
  assert float(metric.result()) == pytest.approx(_metric_value(y, p, chunks=1))


def test_a_model_with_both_saves_and_loads_with_plain_keras(tmp_path):
  """load_model finds the loss and the metric by their registered names,
  with their pos_weight and bins."""
  net = keras.Sequential([keras.Input((4,)),
                          keras.layers.Dense(2, activation='sigmoid')])
  net.compile('adam', loss=losses.MaskedBinaryCrossentropy([2.0, 0.5]),
              metrics=[losses.MaskedAUC(2, num_bins=10)])
  x = np.random.default_rng(5).normal(size=(8, 4)).astype(np.float32)
  y = np.array([[1, 0], [0, M], [1, 1], [0, 0]] * 2, np.float32)
  net.fit(x, y, epochs=1, verbose=0)
  path = str(tmp_path / 'net.keras')
  net.save(path)
  loaded = keras.models.load_model(path)
  assert isinstance(loaded.loss, losses.MaskedBinaryCrossentropy)
  assert loaded.loss.pos_weight == [2.0, 0.5]
  np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0, return_dict=True)
                             ['loss'],
                             net.evaluate(x, y, verbose=0, return_dict=True)
                             ['loss'], rtol=1e-6)


_ON_JAX = r'''
import sys
import numpy as np
import keras
from xray_tfdata import losses
assert keras.backend.backend() == 'jax' and 'tensorflow' not in sys.modules
y = np.array([[1, 0, -1], [0, 1, 1], [-1, 0, 1], [1, 1, 0]], np.float32)
p = np.array([[.9, .2, .5], [.3, .7, .6], [.1, .4, .8], [.6, .3, .2]],
             np.float32)
print(float(losses.MaskedBinaryCrossentropy([2., 1., .5])(y, p)))
metric = losses.MaskedAUC(3)
metric.update_state(y, p)
print(float(metric.result()))
'''


@pytest.mark.slow  # a subprocess that imports JAX
def test_loss_and_metric_agree_under_jax_without_tensorflow(tmp_path):
  script = tmp_path / 'on_jax.py'
  script.write_text(_ON_JAX)
  y = np.array([[1, 0, M], [0, 1, 1], [M, 0, 1], [1, 1, 0]], np.float32)
  p = np.array([[.9, .2, .5], [.3, .7, .6], [.1, .4, .8], [.6, .3, .2]],
               np.float32)
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'tests', 'no_tensorflow.py'),
       '--script', str(script)],
      capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
      env=dict(os.environ, KERAS_BACKEND='jax', JAX_PLATFORMS='cpu',
               PYTHONPATH=REPO_ROOT))
  assert result.returncode == 0, result.stderr
  loss, auc = (float(v) for v in result.stdout.split()[-2:])
  assert loss == pytest.approx(_reference_loss(y, p, [2., 1., .5]), rel=1e-5)
  expected = np.mean([roc_auc_score(y[y[:, l] != M, l], p[y[:, l] != M, l])
                      for l in range(3)])
  assert auc == pytest.approx(expected, abs=1e-6)


# -- saturated probabilities and undefined weights (issue 32) -----------------


def _float32_reference_loss(y, p):
  """_reference_loss with the clip bounds as float32 holds them (1 - 1e-7
  rounds to 1 - 2**-23 there), without pos_weight."""
  low, high = np.float32(losses.EPSILON), np.float32(1 - losses.EPSILON)
  clipped = np.clip(np.asarray(p, np.float32), low, high).astype(np.float64)
  return _reference_loss(y, clipped, [1.0] * np.shape(y)[1])


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_loss_at_probabilities_of_exactly_0_and_1_is_finite(dtype):
  """A saturated sigmoid gives p exactly 0 or 1 (float32 beyond a logit of
  about 17, bfloat16 much sooner): the loss stays finite, wrong answers
  cost the clipped -log(EPSILON), right ones about 0, and a masked entry at
  0 or 1 costs nothing (0 * inf would be NaN)."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top  (Keras needs it)
  as_dtype = np.float32 if dtype == 'float32' else ml_dtypes.bfloat16
  loss = losses.MaskedBinaryCrossentropy()
  y = np.array([[1.0, 0.0, M, M]], np.float32)
  wrong = np.array([[0.0, 1.0, 0.0, 1.0]]).astype(as_dtype)
  right = np.array([[1.0, 0.0, 1.0, 0.0]]).astype(as_dtype)
  got_wrong = float(loss(y, wrong))
  got_right = float(loss(y, right))
  assert np.isfinite(got_wrong) and np.isfinite(got_right)
  assert got_wrong == pytest.approx(_float32_reference_loss(y, wrong),
                                    rel=1e-5)
  assert got_wrong > 15  # -log(1e-7) = 16.1: the clip, not a small number
  assert got_right == pytest.approx(_float32_reference_loss(y, right),
                                    abs=1e-6)
  assert got_right < 1e-6
  # Under pos_weight too.
  weighted = float(losses.MaskedBinaryCrossentropy([2.0, 1, 1, 1])(y, wrong))
  assert np.isfinite(weighted) and weighted > got_wrong


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_masked_auc_counts_probabilities_of_exactly_0_and_1(dtype):
  """p exactly 1 falls in the top bin, not off the end (a positive scored 1
  must count), p exactly 0 in the bottom one; masked entries at 0 and 1
  count nowhere. Checked against scikit-learn."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  as_dtype = np.float32 if dtype == 'float32' else ml_dtypes.bfloat16
  y = np.array([[1, 0], [1, 1], [0, 1], [0, 0], [M, M], [1, 0], [0, M]],
               np.float32)
  p = np.array([[1, 0], [1, 1], [0, 0.5], [0.5, 0], [0, 1], [0.5, 1],
                [1, 0]]).astype(as_dtype)
  metric = losses.MaskedAUC(2)
  metric.update_state(y, p)
  positives = np.asarray(metric.positives).sum(axis=1)
  negatives = np.asarray(metric.negatives).sum(axis=1)
  np.testing.assert_array_equal(positives, (y == 1).sum(axis=0))
  np.testing.assert_array_equal(negatives, (y == 0).sum(axis=0))
  p64 = p.astype(np.float64)
  expected = np.mean([roc_auc_score(y[y[:, l] != M, l], p64[y[:, l] != M, l])
                      for l in range(2)])
  assert float(metric.result()) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize('policy', checks.LABEL_POLICIES)
def test_pos_weights_refuse_a_label_without_negatives_in_one_line(policy):
  """Positives but no known negative: pos_weight would be 0 (the label's
  positives weighed as nothing); refused, naming the label and the fix.
  The counts are of targets under the policy (DatasetBuilder.target_counts
  masks or maps the raw codes; test_selection recounts them)."""
  with pytest.raises(dataset_info.DatasetError) as caught:
    losses.pos_weights({'A': {'positive': 2, 'negative': 2},
                        'C': {'positive': 5, 'negative': 0}}, ['A', 'C'],
                       policy)
  message = str(caught.value)
  assert '\n' not in message and "'C'" in message
  assert 'no negative' in message and '--labels' in message


def test_sample_weights_weigh_each_entry_before_the_masked_mean():
  """fit's sample weights (the training batches' per-entry class weights,
  [B, L]; or [B] of one label, Keras' class_weight) multiply each known
  entry's term; the divisor stays the number of known entries (Keras' sum
  over the batch size when nothing is masked)."""
  y, p = _batch(4)
  rng = np.random.default_rng(5)
  weights = rng.uniform(0.2, 3.0, size=y.shape).astype(np.float32)
  loss = losses.MaskedBinaryCrossentropy()
  q = np.clip(p.astype(np.float64), losses.EPSILON, 1 - losses.EPSILON)
  terms = -(y * np.log(q) + (1 - y) * np.log(1 - q))
  known = y != M
  expected = (weights * terms)[known].sum() / known.sum()
  assert float(loss(y, p, sample_weight=weights)) == pytest.approx(
      expected, rel=1e-5)
  per_image = weights[:, 0]
  # One label, nothing masked: Keras' BinaryCrossentropy with the weights.
  one = np.where(y[:, :1] == M, 1.0, y[:, :1]).astype(np.float32)
  assert float(loss(one, p[:, :1], sample_weight=per_image)) == pytest.approx(
      float(keras.losses.BinaryCrossentropy()(one, p[:, :1],
                                              sample_weight=per_image)),
      rel=1e-5)


def test_one_labels_metrics_are_the_references_keras_metrics():
  """label_metrics of one label: the AUC and the reference notebook's
  counts at 0.5 under their names, the counts equal to Keras' own."""
  rng = np.random.default_rng(6)
  y = (rng.random((50, 1)) < 0.4).astype(np.float32)
  p = rng.uniform(size=(50, 1)).astype(np.float32)
  p[:3] = 0.5  # at the threshold: not a positive call, as in Keras
  metrics = losses.label_metrics(['PNEUMONIA'])
  assert [m.name for m in metrics] == ['auc', 'tp', 'fp', 'tn', 'fn',
                                       'accuracy', 'precision', 'recall']
  references = [keras.metrics.TruePositives(), keras.metrics.FalsePositives(),
                keras.metrics.TrueNegatives(), keras.metrics.FalseNegatives(),
                keras.metrics.BinaryAccuracy(), keras.metrics.Precision(),
                keras.metrics.Recall()]
  for part in np.array_split(np.arange(len(y)), 3):
    for metric in metrics + references:
      metric.update_state(y[part], p[part])
  assert [float(m.result()) for m in metrics[1:]] == pytest.approx(
      [float(m.result()) for m in references], abs=1e-6)
  assert float(metrics[0].result()) == pytest.approx(roc_auc_score(y, p),
                                                     abs=0.01)


def test_counts_over_several_labels_leave_masked_entries_out():
  """The counts of several labels: over the known entries of all of them,
  against a count written out in NumPy."""
  y, p = _batch(7, shape=(40, 3))
  metrics = {m.name: m for m in losses.label_metrics(['A', 'B', 'C'])}
  for name in losses.COUNTS:
    metrics[name].update_state(y, p)
  called, known = p > 0.5, y != M
  tp = int((called & (y == 1)).sum())
  fp = int((called & (y == 0)).sum())
  tn = int((~called & (y == 0)).sum())
  fn = int((~called & (y == 1)).sum())
  assert tp + fp + tn + fn == known.sum() < y.size
  got = {name: float(metrics[name].result()) for name in losses.COUNTS}
  assert got == pytest.approx({
      'tp': tp, 'fp': fp, 'tn': tn, 'fn': fn,
      'accuracy': (tp + tn) / known.sum(), 'precision': tp / (tp + fp),
      'recall': tp / (tp + fn)})
  with pytest.raises(ValueError, match='kind must be one of'):
    losses.MaskedCount('f1')
