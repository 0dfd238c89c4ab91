"""Independent recounts of the results tables from raw predictions.

Plain NumPy and string parsing, sharing no code with xray_tfdata.evaluation,
so a results table can be checked cell by cell against what the predictions
say (issue 16).
"""

import itertools

import numpy as np

# Columns of the two tables of results.md (evaluation.markdown), in order.
MAIN_COLUMNS = ('auc', 'precision', 'sensitivity', 'tp', 'tn', 'fp', 'fn',
                'accuracy')
YOUDEN_COLUMNS = ('sensitivity', 'specificity', 'precision', 'tp', 'tn', 'fp',
                  'fn', 'accuracy')
_COUNTS = ('tp', 'tn', 'fp', 'fn')


def brute_force_auc(labels, probs):
  """P(positive scores above negative), ties 1/2, over all pairs."""
  positives = [p for p, y in zip(probs, labels) if y == 1]
  negatives = [p for p, y in zip(probs, labels) if y == 0]
  wins = sum(1.0 if p > n else 0.5 if p == n else 0.0
             for p, n in itertools.product(positives, negatives))
  return wins / (len(positives) * len(negatives))


def recount(labels, probs, threshold):
  """Counts and ratios at a threshold (positive when prob > threshold)."""
  labels = np.asarray(labels).reshape(-1).astype(bool)
  predicted = np.asarray(probs, np.float64).reshape(-1) > threshold
  tp = int(np.sum(labels & predicted))
  tn = int(np.sum(~labels & ~predicted))
  fp = int(np.sum(~labels & predicted))
  fn = int(np.sum(labels & ~predicted))

  def ratio(a, b):
    return a / b if b else 0.0

  return {'tp': tp, 'tn': tn, 'fp': fp, 'fn': fn,
          'sensitivity': ratio(tp, tp + fn),
          'specificity': ratio(tn, tn + fp),
          'precision': ratio(tp, tp + fp),
          'accuracy': ratio(tp + tn, labels.size),
          'auc': brute_force_auc(labels.astype(int), probs)}


def youden_j(labels, probs, threshold):
  m = recount(labels, probs, threshold)
  return m['sensitivity'] + m['specificity'] - 1


def best_youden_j(labels, probs):
  """The largest J over every threshold that splits the probabilities."""
  values = np.unique(np.asarray(probs, np.float64))
  candidates = np.concatenate([[values[0] - 1.0], values])
  return max(youden_j(labels, probs, t) for t in candidates)


def markdown_rows(text, heading):
  """{first cell: [other cells]} of the table in the section whose heading
  starts with `heading` ('## ' + heading)."""
  section = text.split('## ' + heading, 1)[1].split('\n## ', 1)[0]
  rows = {}
  for line in section.splitlines():
    if line.startswith('| ') and not line.startswith('| split |'):
      cells = [c.strip() for c in line.strip().strip('|').split('|')]
      rows[cells[0]] = cells[1:]
  return rows


def assert_row(cells, expected, columns, where):
  """Every cell equals the recount: counts exactly, ratios to 4 decimals."""
  assert len(cells) == len(columns), (where, cells)
  for column, cell in zip(columns, cells):
    want = expected[column]
    if column in _COUNTS:
      assert cell == str(want), (where, column, cell, want)
    else:
      assert abs(float(cell) - want) <= 0.5e-4 + 1e-9, (where, column, cell,
                                                        want)


def percentile_bootstrap_auc(labels, probs, num_resamples, seed, level=0.95):
  """The percentile bootstrap interval by its definition: the AUCs of
  `num_resamples` resamples with replacement (NumPy's default_rng(seed),
  one `integers(0, n, n)` draw per resample; resamples of one class have
  no AUC and are dropped), and their (1 - level) / 2 and (1 + level) / 2
  quantiles. AUCs by the Mann-Whitney U of SciPy's midranks, not by
  xray_tfdata.evaluation.

  Returns:
    (low, high, aucs): the interval and the resamples' AUCs.
  """
  from scipy.stats import rankdata  # pylint: disable=g-import-not-at-top
  labels = np.asarray(labels).reshape(-1).astype(int)
  probs = np.asarray(probs, np.float64).reshape(-1)
  rng = np.random.default_rng(seed)
  aucs = []
  for _ in range(num_resamples):
    index = rng.integers(0, labels.size, labels.size)
    resampled = labels[index] == 1
    positives = int(resampled.sum())
    negatives = resampled.size - positives
    if not positives or not negatives:
      continue
    ranks = rankdata(probs[index])  # ties share their mean rank
    u_statistic = ranks[resampled].sum() - positives * (positives + 1) / 2
    aucs.append(u_statistic / (positives * negatives))
  aucs = np.array(aucs)
  low, high = np.quantile(aucs, [(1 - level) / 2, (1 + level) / 2])
  return float(low), float(high), aucs


def noisy_scores(n, seed, separation=1.0, decimals=None):
  """(0/1 labels, probabilities) of a noisy classifier: logits N(0, 1)
  shifted by +-separation; rounded to `decimals` for many ties."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  logits = rng.normal(size=n) + separation * (2 * labels - 1)
  probs = 1 / (1 + np.exp(-logits))
  if decimals is not None:
    probs = np.round(probs, decimals)  # many ties
  return labels, probs
