"""The loss and metrics of every model, L = 1 (PNEUMONIA) or L = 14:
masked per-label binary cross-entropy (weighted per entry by the training
data's sample weights, or a pos_weight), a masked AUC, macro or of one
label, and the reference's counts at 0.5 over the known entries.

A target is 1, 0, or `labels.MASKED` (-1: uncertain or not mentioned under
a multi-label run's label policy, see `xray_tfdata.labels`). Keras' own
pieces get such targets wrong: `BinaryCrossentropy` counts -1 as a target,
rejects a (B, L) sample weight, and `AUC(multi_label=True)` counts a label
without positives as an AUC of 0 in its mean. Here a masked entry takes no
part in the loss or the metrics, and the AUC's macro mean is over the
labels with both classes. With one label and no masked target, the loss is
Keras' `BinaryCrossentropy` (with `fit(class_weight=...)`'s weights when
given the same weights as sample weights) and the counts are Keras'
`TruePositives`, ..., `Recall` (tests/test_losses.py checks both).

  net.compile(loss=losses.MaskedBinaryCrossentropy(),
              metrics=losses.label_metrics(names))

Device side, any Keras backend: Keras ops only, no TensorFlow. Both classes
are registered Keras serializables, so `keras.models.load_model` of a saved
model works after `import xray_tfdata`.
"""

import re

import keras
from keras import ops
import numpy as np

from xray_tfdata import labels as labels_lib
from xray_tfdata.dataset_info import DatasetError

# Probabilities are clipped to [EPSILON, 1 - EPSILON] before the log, as
# keras.ops.binary_crossentropy clips them (keras.config.epsilon()).
EPSILON = 1e-7
# Score bins of MaskedAUC, as many as Keras' AUC has thresholds.
DEFAULT_NUM_BINS = 200


def pos_weights(target_counts, label_names, policy, cap=None):
  """Per-label pos_weight: negatives / positives among the known targets,
  at most `cap`.

  Uncapped, the ratio of a rare label dominates the loss (NIH's Hernia:
  about 490; 1,999 on a 2,000-image synthetic stand-in with one positive),
  and the model collapses to the base rates (BUILD_NOTES.md, Session 9
  (h1)); the multi-label default is no weighting at all
  (`--label_weights=none`).

  Args:
    target_counts: {label: {'positive': n, 'negative': n}}, the known
      targets of the training split under the policy
      (`DatasetBuilder.target_counts`: with txv's No Finding step a count
      per raw code would not be exact).
    label_names: the labels the model outputs, in order.
    policy: the `checks.LABEL_POLICIES` policy the targets were made with
      (named in the error).
    cap: the largest weight (--pos_weight_cap), or None for none.

  Returns:
    A list of floats, one per label name.

  Raises:
    DatasetError: a label without a positive or without a negative among
      its known training targets (its pos_weight is undefined).
  """
  weights = []
  for name in label_names:
    positives = target_counts[name]['positive']
    negatives = target_counts[name]['negative']
    if not positives or not negatives:
      missing = 'positive' if not positives else 'negative'
      raise DatasetError(
          f'label {name!r} has no {missing} among the known targets of the '
          f'training split under --label_policy={policy} ({positives} '
          f'positive, {negatives} negative): leave it out with --labels=..., '
          'or train without pos_weight (--label_weights=none)')
    ratio = negatives / positives
    weights.append(ratio if cap is None else min(ratio, cap))
  return weights


@keras.saving.register_keras_serializable(package='xray_tfdata')
class MaskedBinaryCrossentropy(keras.losses.Loss):
  """Binary cross-entropy per label, masked entries left out, pos_weight on
  the positives.

  loss = sum over known (b, l) of s_bl * -(w_l y log p + (1 - y) log(1 - p)),
  divided by the number of known entries (as torch's
  BCEWithLogitsLoss(pos_weight) with mean reduction, over known entries
  only); 0 for a batch without any known entry. y is the target [B, L]
  (`labels.MASKED` where unknown), p the model's probabilities [B, L], w
  the pos_weight (1 when None), s the sample weight fit passes (1 when
  none): [B, L] per entry, or [B] of a model of one label (Keras'
  class_weight). The training pipeline's
  per-label class weights come as s (`training.create_inputs`), so that,
  as with Keras' class_weight, they weigh the training loss and not
  val_loss.
  """

  def __init__(self, pos_weight=None, name='masked_binary_crossentropy',
               **kwargs):
    """Args:
      pos_weight: one weight per label (see `pos_weights`), or None for 1.
      name: the loss's name.
      **kwargs: `keras.losses.Loss`'s (reduction, dtype).
    """
    super().__init__(name=name, **kwargs)
    self.pos_weight = (None if pos_weight is None else
                       [float(w) for w in pos_weight])

  def call(self, y_true, y_pred):
    """Per entry [B, L]: its term, scaled so that Keras' reduction (the sum
    of the sample-weighted entries over their number, then over the
    replicas of a tf.distribute strategy) gives the mean over the known
    entries."""
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.reshape(y_true, ops.shape(y_pred)), y_pred.dtype)
    known = ops.cast(ops.not_equal(y_true, labels_lib.MASKED), y_pred.dtype)
    # Masked targets become 0 before the log terms, so that -1 cannot
    # reach them (known zeroes their terms anyway).
    y = y_true * known
    p = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
    positive = y * ops.log(p)
    if self.pos_weight is not None:
      positive = positive * ops.convert_to_tensor(self.pos_weight,
                                                  y_pred.dtype)
    terms = -(positive + (1.0 - y) * ops.log(1.0 - p)) * known
    # The mean over the known entries of the batch, not a mean per image
    # (an image with one known label would weigh as one with 14): Keras
    # divides by the number of entries, so each is scaled by entries /
    # known. Keras also applies fit's sample weights to these entries ([B, L]
    # per entry, or [B] of one label) and the 1 / replicas of a strategy.
    entries = ops.cast(ops.size(terms), y_pred.dtype)
    return terms * (entries / ops.maximum(ops.sum(known), 1.0))

  def get_config(self):
    config = super().get_config()
    config.update(pos_weight=self.pos_weight)
    return config


@keras.saving.register_keras_serializable(package='xray_tfdata')
class MaskedAUC(keras.metrics.Metric):
  """Macro mean of per-label ROC AUCs, masked entries left out; or, with
  label_index, the AUC of that one label.

  Per label it counts the positives and the negatives in each of num_bins
  equal score bins of [0, 1]; the AUC is the Mann-Whitney statistic on the
  binned scores (scores in one bin count as ties, a half each), exact when
  no two scores of different classes share a bin. The result is the mean
  over the labels that had both classes; NaN when none had.
  """

  def __init__(self, num_labels, num_bins=DEFAULT_NUM_BINS, name='auc',
               label_index=None, **kwargs):
    """Args:
      num_labels: the model's outputs L.
      num_bins: score bins.
      name: the metric's name (its key in fit's logs).
      label_index: None for the macro mean over the L labels, or the
        output 0..L-1 whose AUC alone this metric gives.
      **kwargs: `keras.metrics.Metric`'s (dtype).
    """
    super().__init__(name=name, **kwargs)
    self.num_labels = int(num_labels)
    self.num_bins = int(num_bins)
    self.label_index = None if label_index is None else int(label_index)
    if self.label_index is not None and not (
        0 <= self.label_index < self.num_labels):
      raise ValueError(f'label_index must be in 0..{self.num_labels - 1}, '
                       f'got {label_index}')
    shape = (self.num_labels if self.label_index is None else 1,
             self.num_bins)
    self.positives = self.add_variable(shape=shape, initializer='zeros',
                                       name='positives')
    self.negatives = self.add_variable(shape=shape, initializer='zeros',
                                       name='negatives')

  def update_state(self, y_true, y_pred, sample_weight=None):
    del sample_weight  # the mask is in the targets
    y_pred = ops.cast(y_pred, self.dtype)
    y_true = ops.cast(ops.reshape(y_true, ops.shape(y_pred)), self.dtype)
    if self.label_index is not None:
      column = slice(self.label_index, self.label_index + 1)
      y_pred, y_true = y_pred[:, column], y_true[:, column]
    bins = ops.clip(ops.floor(y_pred * self.num_bins), 0, self.num_bins - 1)
    one_hot = ops.one_hot(ops.cast(bins, 'int32'), self.num_bins,
                          dtype=self.dtype)  # [B, L, bins]
    positive = ops.cast(ops.equal(y_true, 1.0), self.dtype)[..., None]
    negative = ops.cast(ops.equal(y_true, 0.0), self.dtype)[..., None]
    self.positives.assign_add(ops.sum(one_hot * positive, axis=0))
    self.negatives.assign_add(ops.sum(one_hot * negative, axis=0))

  def result(self):
    return macro_auc_of_bins(self.positives, self.negatives)

  def reset_state(self):
    for variable in (self.positives, self.negatives):
      variable.assign(ops.zeros(variable.shape, self.dtype))

  def get_config(self):
    config = super().get_config()
    config.update(num_labels=self.num_labels, num_bins=self.num_bins,
                  label_index=self.label_index)
    return config


def metric_name(label):
  """The fit-log key of one label's AUC: 'auc_' + the label, characters
  other than letters, digits and '_' as '_' (TensorBoard's tag rule)."""
  return 'auc_' + re.sub(r'[^A-Za-z0-9_]', '_', label)


def label_metrics(label_names):
  """A model's metrics, for every L: the masked macro AUC as 'auc'; with
  several labels each label's AUC as `metric_name(label)`, so that every
  epoch's line, history.csv and TensorBoard show each label's validation
  AUC (a label that collapses to chance is visible, not averaged away; one
  label's AUC is 'auc' itself); then the reference notebook's counts at
  0.5 ('tp', 'fp', 'tn', 'fn', 'accuracy', 'precision', 'recall'), over
  the known entries of all labels."""
  num_labels = len(label_names)
  per_label = [
      MaskedAUC(num_labels, name=metric_name(label), label_index=index)
      for index, label in enumerate(label_names)] if num_labels > 1 else []
  return ([MaskedAUC(num_labels, name='auc')] + per_label +
          [MaskedCount(kind) for kind in COUNTS])


# The reference notebook's metrics at 0.5, by their names there.
COUNTS = ('tp', 'fp', 'tn', 'fn', 'accuracy', 'precision', 'recall')


@keras.saving.register_keras_serializable(package='xray_tfdata')
class MaskedCount(keras.metrics.Metric):
  """One of the reference's metrics at the threshold 0.5 (`COUNTS`), over
  the known entries of every label: true or false positives or negatives
  (counts), accuracy, precision or recall (0 where undefined, as Keras').

  A probability above the threshold is a positive call, as in Keras'
  `TruePositives` and `BinaryAccuracy`; with one label and no masked
  target the values are Keras'.
  """

  def __init__(self, kind, threshold=0.5, name=None, **kwargs):
    """Args:
      kind: one of `COUNTS`.
      threshold: the call's threshold on the probability.
      name: the metric's name; None: `kind`.
      **kwargs: `keras.metrics.Metric`'s (dtype).
    """
    if kind not in COUNTS:
      raise ValueError(f'kind must be one of {", ".join(COUNTS)}, got '
                       f'{kind!r}')
    super().__init__(name=name or kind, **kwargs)
    self.kind = kind
    self.threshold = float(threshold)
    # tp, fp, tn, fn
    self.counts = self.add_variable(shape=(4,), initializer='zeros',
                                    name='counts')

  def update_state(self, y_true, y_pred, sample_weight=None):
    del sample_weight  # the mask is in the targets
    y_pred = ops.cast(y_pred, self.dtype)
    y_true = ops.cast(ops.reshape(y_true, ops.shape(y_pred)), self.dtype)
    called = ops.cast(y_pred > self.threshold, self.dtype)
    positive = ops.cast(ops.equal(y_true, 1.0), self.dtype)
    negative = ops.cast(ops.equal(y_true, 0.0), self.dtype)
    self.counts.assign_add(ops.stack([
        ops.sum(called * positive), ops.sum(called * negative),
        ops.sum((1.0 - called) * negative),
        ops.sum((1.0 - called) * positive)]))

  def result(self):
    tp, fp, tn, fn = (self.counts[i] for i in range(4))
    if self.kind in ('tp', 'fp', 'tn', 'fn'):
      return self.counts[('tp', 'fp', 'tn', 'fn').index(self.kind)]
    numerator, denominator = {
        'accuracy': (tp + tn, tp + fp + tn + fn),
        'precision': (tp, tp + fp),
        'recall': (tp, tp + fn)}[self.kind]
    return ops.divide_no_nan(numerator, denominator)

  def reset_state(self):
    self.counts.assign(ops.zeros((4,), self.dtype))

  def get_config(self):
    config = super().get_config()
    config.update(kind=self.kind, threshold=self.threshold)
    return config


def macro_auc_of_bins(positives, negatives):
  """MaskedAUC's result from its counts [L, bins] (Keras ops)."""
  num_positives = ops.sum(positives, axis=1)
  num_negatives = ops.sum(negatives, axis=1)
  # Negatives in lower bins rank below a positive; in its own bin, a half.
  below = ops.cumsum(negatives, axis=1) - negatives
  wins = ops.sum(positives * (below + 0.5 * negatives), axis=1)
  defined = ops.logical_and(num_positives > 0, num_negatives > 0)
  pairs = ops.where(defined, num_positives * num_negatives, 1.0)
  aucs = ops.where(defined, wins / pairs, 0.0)
  count = ops.sum(ops.cast(defined, aucs.dtype))
  return ops.where(count > 0, ops.sum(aucs) / ops.maximum(count, 1.0),
                   ops.convert_to_tensor(np.nan, aucs.dtype))
