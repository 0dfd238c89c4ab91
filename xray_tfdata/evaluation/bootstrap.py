"""The patient-level bootstrap: percentile intervals that resample
patients, not images, shared by every label scored on a split.

Images of one patient are correlated; resampling them one by one makes
intervals too narrow. A resample draws as many patients as there are, with
replacement, and takes every image of each patient drawn.
"""

import math

import numpy as np

from xray_tfdata import labels as labels_lib
from xray_tfdata.evaluation.calibration import CALIBRATION_BINS
from xray_tfdata.evaluation.calibration import UPPER_EDGES
from xray_tfdata.evaluation.curves import POINT_METRICS
from xray_tfdata.evaluation.curves import as_arrays

# The statistics of a whole curve, in the bootstrap's column order.
CURVE_METRICS = ('auc', 'average_precision', 'brier', 'ece')

# The bootstrap works on weights, not copies: a resample that draws patient
# k twice counts each of k's images twice, so its statistics are weighted
# ones (weight = how often the image's patient was drawn), computed for a
# block of resamples at once with one sort per label instead of one per
# resample. One resample of a split's patients serves every label scored on
# it (each on its own known rows), as it serves the macro mean.

# Resamples per block: about this many (resample, image) pairs at once
# (1M: a block's [levels, resamples] arrays stay in the CPU's caches at
# NIH's sizes).
_BLOCK_WEIGHTS = 1_000_000


def _patient_groups(patient_ids):
  """(group of each example, number of groups): patients numbered in the
  order of their sorted ids, as `patient_resamples` numbers them."""
  _, group = np.unique(np.asarray(patient_ids), return_inverse=True)
  group = group.reshape(-1)
  return group, int(group.max()) + 1 if group.size else 0


def patient_weights(patient_ids, num_resamples, seed=0):
  """Blocks of a patient-level bootstrap as counts: `patient_resamples`'
  resamples (the same patients drawn, same seed), each as how often each
  patient is drawn; each of a patient's examples is taken that often.

  Args:
    patient_ids: one id per example.
    num_resamples, seed: as `patient_resamples`.

  Yields:
    float64 arrays [resamples in the block, patients], patients numbered
    as `_patient_groups` numbers them.
  """
  if num_resamples < 1:
    raise ValueError(f'num_resamples must be positive, got {num_resamples}')
  group, num_groups = _patient_groups(patient_ids)
  rng = np.random.default_rng(seed)
  block = max(1, min(num_resamples, _BLOCK_WEIGHTS // max(group.size, 1)))
  for start in range(0, num_resamples, block):
    size = min(block, num_resamples - start)
    # One draw of [size, patients] is the stream of `size` draws of
    # [patients] (checked against patient_resamples in the tests); each
    # row's counts in one bincount, rows offset apart.
    drawn = rng.integers(0, num_groups, (size, num_groups))
    drawn += np.arange(size)[:, None] * num_groups
    yield np.bincount(drawn.reshape(-1), minlength=size * num_groups).reshape(
        size, num_groups).astype(np.float64)


class _LabelColumn:
  """What the bootstrap needs of one label, sorted once: sparse patient x
  position tables, so that a block of resamples is a few products with
  the patients' counts.

  Args:
    rows: int indices of the examples the label is scored on (into the
      bootstrap's examples).
    labels, probs: of those rows.
    thresholds: float array of the operating points' thresholds.
    group: the patient of each of the bootstrap's examples
      (`_patient_groups`), and num_groups.
  """

  def __init__(self, rows, labels, probs, thresholds, group, num_groups):
    from scipy import sparse  # pylint: disable=g-import-not-at-top
    labels = np.asarray(labels).astype(bool)
    probs = np.asarray(probs, np.float64)
    order = np.argsort(-probs, kind='stable')
    sorted_probs, truth = probs[order], labels[order]
    patient = group[np.asarray(rows)[order]]
    size = sorted_probs.size
    # The ROC's points are the runs of equal probabilities (levels); AUC
    # and AP move only at levels holding a positive: its positives beat
    # the negatives below the level and tie the negatives in it. So the
    # weights are needed summed per positive level, and summed between
    # those levels, never one by one.
    ends = np.append(np.flatnonzero(np.diff(sorted_probs) != 0), size - 1)
    level = np.repeat(np.arange(ends.size), np.diff(np.append(-1, ends)))
    positive_levels = np.unique(level[truth])
    starts = np.append(0, ends + 1)[positive_levels]
    stops = ends[positive_levels] + 1
    cuts = np.unique(np.concatenate([[0], starts, stops]))
    segment = np.searchsorted(cuts, np.arange(size), side='right') - 1
    self.segments = sparse.csr_matrix(
        (np.ones(size), (segment, patient)), shape=(cuts.size, num_groups))
    # Rows of the cumulative sums (a zero row first) at each positive
    # level's start and stop.
    self.before = np.searchsorted(cuts, starts)
    self.through = np.searchsorted(cuts, stops)
    self.level_positives = sparse.csr_matrix(
        (np.ones(int(truth.sum())),
         (np.searchsorted(positive_levels, level[truth]), patient[truth])),
        shape=(positive_levels.size, num_groups))
    # Sums linear in the weights, per patient: 1, label, squared error,
    # residual per calibration bin, then true and false positives at each
    # threshold.
    thresholds = np.asarray(thresholds, np.float64)
    residual = sorted_probs - truth
    bins = np.minimum(np.searchsorted(UPPER_EDGES, sorted_probs,
                                      side='left'), CALIBRATION_BINS - 1)
    in_bin = np.zeros((size, CALIBRATION_BINS))
    in_bin[np.arange(size), bins] = residual
    predicted = sorted_probs[:, None] > thresholds[None, :]
    per_example = np.concatenate([
        np.ones((size, 1)), truth[:, None].astype(np.float64),
        (residual ** 2)[:, None], in_bin,
        (predicted & truth[:, None]).astype(np.float64),
        (predicted & ~truth[:, None]).astype(np.float64)], axis=1)
    self.sums = np.zeros((num_groups, per_example.shape[1]))
    np.add.at(self.sums, patient, per_example)
    self.num_thresholds = thresholds.size

  def statistics(self, counts, sums):
    """[resamples, statistics]: CURVE_METRICS, then POINT_METRICS at each
    threshold, of each resample; NaN where undefined.

    Args:
      counts: a block of `patient_weights`, transposed: [patients,
        resamples], C-contiguous.
      sums: the block's counts times `self.sums`: [resamples, sums].
    """
    total, positives = sums[:, 0], sums[:, 1]
    negatives = total - positives
    # Levels down the rows, resamples across; row 0 of the cumulative sums
    # is before the first example.
    cumulative = np.zeros((self.segments.shape[0] + 1, counts.shape[1]))
    np.cumsum(self.segments @ counts, axis=0, out=cumulative[1:])
    tp_gain = self.level_positives @ counts
    tp_through = np.cumsum(tp_gain, axis=0)
    called = cumulative[self.through]
    above = cumulative[self.before]

    def dot(a, b):  # per resample, without [levels, resamples] temporaries
      return np.einsum('kr,kr->r', a, b)

    with np.errstate(invalid='ignore', divide='ignore'):
      # Mann-Whitney in weighted counts, ties 1/2: a positive at a level
      # beats the negatives below it (negatives - fp_through) and ties the
      # level's own (fp_gain), where fp_through = called - tp_through and
      # fp_gain = called - above - tp_gain.
      gain_called = dot(tp_gain, called)
      wins = (positives * negatives - gain_called + dot(tp_gain, tp_through)
              + 0.5 * (gain_called - dot(tp_gain, above)
                       - dot(tp_gain, tp_gain)))
      auc = wins / (positives * negatives)
      precision = np.divide(tp_through, called,
                            out=np.zeros_like(tp_through), where=called > 0)
      ap = dot(tp_gain, precision) / positives
      brier = sums[:, 2] / total
      ece = np.sum(np.abs(sums[:, 3:3 + CALIBRATION_BINS]), axis=1) / total
      t = self.num_thresholds
      tp_at = sums[:, 3 + CALIBRATION_BINS:3 + CALIBRATION_BINS + t]
      fp_at = sums[:, 3 + CALIBRATION_BINS + t:]
      fn_at = positives[:, None] - tp_at
      tn_at = negatives[:, None] - fp_at
      points = np.stack([tp_at / (tp_at + fn_at), tn_at / (tn_at + fp_at),
                         tp_at / (tp_at + fp_at), tn_at / (tn_at + fn_at),
                         2 * tp_at / (2 * tp_at + fp_at + fn_at)], axis=2)
    auc[(positives == 0) | (negatives == 0)] = math.nan
    ap[positives == 0] = math.nan
    return np.concatenate([np.stack([auc, ap, brier, ece], axis=1),
                           points.reshape(len(sums), -1)], axis=1)


def shared_bootstrap(columns, patient_ids, num_resamples, seed=0):
  """Every label's statistics on one patient-level bootstrap.

  Args:
    columns: per label (rows, labels, probs, thresholds): the indices of
      the examples it is scored on (its known targets), their 0/1 labels and
      probabilities, and a float array of operating-point thresholds.
    patient_ids: one id per example (all of them, whatever the labels).
    num_resamples, seed: as `patient_resamples`.

  Returns:
    Per label a float array [num_resamples, statistics]: CURVE_METRICS,
    then POINT_METRICS at each threshold; NaN where undefined (one class,
    a zero denominator, no known row drawn).
  """
  group, num_groups = _patient_groups(patient_ids)
  prepared = [_LabelColumn(*column, group, num_groups) for column in columns]
  # Every label's linear sums in one matrix product per block: one wide
  # product reads the counts once, where one per label would read them
  # once per label.
  linear = np.concatenate([column.sums for column in prepared], axis=1)
  bounds = np.cumsum([0] + [column.sums.shape[1] for column in prepared])
  draws = [[] for _ in prepared]
  for counts in patient_weights(patient_ids, num_resamples, seed):
    sums = counts @ linear
    counts = np.ascontiguousarray(counts.T)
    for index, (column, out) in enumerate(zip(prepared, draws)):
      out.append(column.statistics(
          counts, sums[:, bounds[index]:bounds[index + 1]]))
  return [np.concatenate(out) for out in draws]


def _percentile_interval(values, level):
  """([low, high], valid count) of the non-NaN values; [NaN, NaN] if none."""
  values = values[~np.isnan(values)]
  if not values.size:
    return [math.nan, math.nan], 0
  tail = 100 * (1 - level) / 2
  low, high = np.percentile(values, [tail, 100 - tail])
  return [float(low), float(high)], int(values.size)


def _percentile_columns(draws, level):
  """`_percentile_interval` of every column at once: (intervals [columns,
  2], valid counts), np.percentile's linear rule on each column's non-NaN
  values."""
  ordered = np.sort(draws, axis=0)  # NaN last
  valid = np.sum(~np.isnan(draws), axis=0)
  columns = np.arange(draws.shape[1])
  tail = 100 * (1 - level) / 2
  last = np.maximum(valid - 1, 0)
  bounds = []
  for q in np.true_divide([tail, 100 - tail], 100):
    # np.percentile's linear rule, its operations in its order, so that
    # the bounds agree to the last bit.
    position = (valid - 1) * q
    below = np.clip(np.floor(position), 0, last).astype(np.int64)
    above = np.clip(below + 1, 0, last)
    t = position - np.floor(position)
    a, b = ordered[below, columns], ordered[above, columns]
    with np.errstate(invalid='ignore'):
      # np.percentile's _lerp, the same rounding.
      value = np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)
    bounds.append(np.where(valid > 0, value, math.nan))
  return np.stack(bounds, axis=1), valid


def intervals_from_draws(draws, operating_points, level=0.95):
  """`bootstrap_intervals`' dict from one label's `shared_bootstrap` draws.

  Args:
    draws: [resamples, statistics].
    operating_points: the names of the thresholds, in the draws' order.
    level: the confidence level.
  """
  bounds, valid = _percentile_columns(draws, level)
  bounds, valid = bounds.tolist(), valid.tolist()
  out = {'operating_points': {op: {} for op in operating_points},
         'valid_resamples': {}}
  for column, name in enumerate(CURVE_METRICS):
    out[name], out['valid_resamples'][name] = bounds[column], valid[column]
  column = len(CURVE_METRICS)
  for op in operating_points:
    for m in POINT_METRICS:
      out['operating_points'][op][m] = bounds[column]
      out['valid_resamples'][f'{op}/{m}'] = valid[column]
      column += 1
  return out


def macro_interval(draws, level):
  """Percentile interval of the per-resample mean AUC over labels (a label
  with one class in a resample left out of that resample's mean)."""
  aucs = np.stack([d[:, 0] for d in draws], axis=1)
  defined = ~np.isnan(aucs)
  any_defined = defined.any(axis=1)
  means = (np.where(defined, aucs, 0.0).sum(axis=1)[any_defined] /
           defined.sum(axis=1)[any_defined])
  interval, _ = _percentile_interval(means, level)
  return interval


def patient_resamples(patient_ids, num_resamples, seed=0):
  """Index arrays of a bootstrap that resamples patients, not images.

  Each resample draws as many patients as there are, with replacement, and
  takes every image of each patient drawn (a patient drawn twice counts
  twice): images of one patient are correlated, and resampling them one by
  one makes intervals too narrow. `patient_weights` gives the same
  resamples as counts per image.

  Args:
    patient_ids: one id per example (any hashable values); None: each
      example is its own patient (the ordinary bootstrap).
    num_resamples: how many resamples.
    seed: NumPy random seed.

  Yields:
    int arrays of example indices.
  """
  if num_resamples < 1:
    raise ValueError(f'num_resamples must be positive, got {num_resamples}')
  rng = np.random.default_rng(seed)
  if patient_ids is None:
    raise ValueError('patient_ids is None; pass np.arange(n) for images')
  group, num_groups = _patient_groups(patient_ids)
  order = np.argsort(group, kind='stable')
  sizes = np.bincount(group)
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  for _ in range(num_resamples):
    drawn = rng.integers(0, num_groups, num_groups)
    lengths = sizes[drawn]
    # Positions start, start+1, ... of each drawn group, in one gather.
    offsets = np.repeat(starts[drawn] - np.cumsum(lengths) + lengths, lengths)
    yield order[offsets + np.arange(lengths.sum())]


def bootstrap_intervals(labels, probs, patient_ids=None, thresholds=None,
                        num_resamples=2000, level=0.95, seed=0):
  """Percentile intervals of every statistic, resampling patients.

  Args:
    labels, probs: as `confusion_counts`.
    patient_ids: one per example; None resamples examples (each its own
      patient).
    thresholds: {operating point name: threshold} whose sensitivity,
      specificity, PPV, NPV and F1 get intervals.
    num_resamples: bootstrap resamples.
    level: the intervals' confidence level (0.95: the 2.5th and 97.5th
      percentiles).
    seed: NumPy random seed.

  Returns:
    {'auc': [low, high], 'average_precision': ..., 'brier': ..., 'ece': ...,
     'operating_points': {name: {metric: [low, high]}},
     'valid_resamples': {statistic: count}}. A resample where a statistic is
    undefined (AUC with one class, PPV with no predicted positive) is left
    out of that statistic's interval, and its count says so; an interval
    with no valid resample is [NaN, NaN].

  Raises:
    ValueError: level outside (0, 1), num_resamples < 1, or as
      `confusion_counts`.
  """
  labels, probs = as_arrays(labels, probs)
  if not 0 < level < 1:
    raise ValueError(f'level must be in (0, 1), got {level}')
  if patient_ids is None:
    patient_ids = np.arange(labels.size)
  elif len(patient_ids) != labels.size:
    raise ValueError(f'{len(patient_ids)} patient ids for {labels.size} '
                     'examples')
  thresholds = thresholds or {}
  names = list(thresholds)
  column = (np.arange(labels.size), labels, probs,
            np.array([thresholds[op] for op in names], np.float64))
  draws, = shared_bootstrap([column], patient_ids, num_resamples, seed)
  return intervals_from_draws(draws, names, level)



def macro_auc_interval(targets, probs, columns, patient_ids=None,
                       num_resamples=2000, level=0.95, seed=0):
  """Percentile interval of the macro mean AUC over columns, resampling
  patients once for all labels (their AUCs share images, so they are not
  resampled apart); a label with one class in a resample is left out of
  that resample's mean.

  Args:
    targets, probs: [N, L], labels_lib.MASKED where unknown.
    columns: the labels averaged.
    patient_ids: one per row; None: each row its own patient.
    num_resamples, level, seed: as `bootstrap_intervals`.

  Returns:
    [low, high].
  """
  targets = np.asarray(targets, np.float64)
  probs = np.asarray(probs, np.float64)
  ids = np.arange(len(targets)) if patient_ids is None else patient_ids
  label_columns = []
  for column in columns:
    known = targets[:, column] != labels_lib.MASKED
    label_columns.append((np.flatnonzero(known), targets[known, column],
                          probs[known, column], np.zeros(0)))
  return macro_interval(shared_bootstrap(label_columns, ids, num_resamples,
                                          seed), level)


# Localization (issue 21): the pointing game (Zhang et al., ECCV 2016) on
# the positive images of a dataset that stores boxes: a hit when the
# heatmap's maximum lies inside one of the image's boxes, no tolerance.

