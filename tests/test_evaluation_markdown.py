"""results.md (evaluation.markdown): every table a view of the one
evaluation, checked cell by cell against recounts from the predictions
that share no code with the evaluation (tests/recount.py)."""

import json

import numpy as np
import pytest

import recount
from evaluation_data import results_of
from recount import noisy_scores
from xray_tfdata import evaluation
from xray_tfdata.evaluation import markdown

MASKED = evaluation.MASKED_TARGET


def as_columns(predictions):
  return {s: (np.asarray(y, np.float64)[:, None],
              np.asarray(p, np.float64)[:, None])
          for s, (y, p) in predictions.items()}


def test_the_reference_table_is_the_fixed_point_and_agrees_with_counts():
  """Every cell of both tables (the reference's at 0.5 on train, val and
  test; Youden's threshold chosen on val), and J, against a recount."""
  predictions = {split: noisy_scores(n, seed)
                 for split, n, seed in (('train', 400, 6), ('val', 120, 7),
                                        ('test', 150, 8))}
  results = results_of(as_columns(predictions), ['PNEUMONIA'], 300,
                     interval_splits=('val', 'test'))
  json.dumps(results)
  table = markdown.results_markdown(results)

  main = recount.markdown_rows(table, 'Results at threshold 0.5')
  assert list(main) == ['train', 'val', 'test']  # the reference's order
  for split, (labels, probs) in predictions.items():
    expected = recount.recount(labels, probs, 0.5)
    recount.assert_row(main[split], expected, recount.MAIN_COLUMNS, split)

  youden = results['labels']['PNEUMONIA']['thresholds']['youden']
  threshold = youden['threshold']
  val_labels, val_probs = predictions['val']
  best = recount.best_youden_j(val_labels, val_probs)
  assert recount.youden_j(val_labels, val_probs, threshold) == pytest.approx(
      best)
  assert (f"Threshold {threshold:.4f} (J = sensitivity + specificity - 1 = "
          f"{best:.4f} on val).") in table
  expected = recount.recount(*predictions['test'], threshold)
  # Not a symmetric case: a swap of the two would show.
  assert abs(expected['sensitivity'] - expected['specificity']) > 1e-3
  rows = recount.markdown_rows(table, "Threshold chosen on val")
  assert list(rows) == ['train', 'test']
  recount.assert_row(rows['test'], expected, recount.YOUDEN_COLUMNS, 'youden')
  # Train gets point estimates only; val and test their intervals.
  test = results['labels']['PNEUMONIA']['splits']['test']
  low, high = test['auc']['ci']
  assert low < test['auc']['value'] < high
  assert results['labels']['PNEUMONIA']['splits']['train']['auc'][
      'ci'] is None
  assert (f"| test | 150 | 150 | {test['positives']} | "
          f"{test['auc']['value']:.3f} [{low:.3f}, {high:.3f}] |") in table


def test_subgroup_and_operating_point_tables():
  val = noisy_scores(150, seed=18)
  test = noisy_scores(160, seed=19)
  patients = np.arange(160) // 2
  view = np.where(np.arange(160) % 4 == 0, 'AP', 'PA')
  view[:3] = 'LL'  # three images: too few to score
  results = results_of(as_columns({'val': val, 'test': test}), ['PNEUMONIA'],
                     100, patient_ids={'test': patients},
                     subgroups={'test': {'view': view}}, min_subgroup=10)
  table = markdown.results_markdown(results)
  entry = results['labels']['PNEUMONIA']['splits']['test']
  auc = entry['auc']
  assert (f"| test | 160 | 80 | {entry['positives']} | {auc['value']:.3f} "
          f"[{auc['ci'][0]:.3f}, {auc['ci'][1]:.3f}] |") in table
  rows = recount.markdown_rows(table, 'PNEUMONIA: operating points on test')
  del rows['operating point']  # the header
  assert len(rows) == len(evaluation.OPERATING_POINTS)
  youden = entry['operating_points']['youden']
  assert rows["Youden's J"][-4:] == [str(youden[k]) for k in
                                     ('tp', 'fp', 'tn', 'fn')]
  fixed = recount.recount(*test, 0.5)
  assert rows[evaluation.OPERATING_POINTS[evaluation.FIXED][0]][-4:] == [
      str(fixed[k]) for k in ('tp', 'fp', 'tn', 'fn')]
  sub = recount.markdown_rows(table, 'PNEUMONIA: test by view')
  assert len(sub.pop('view')) == 9  # the header
  assert sub['LL'][0] == '3' and 'too few' in ' '.join(sub['LL'])
  # Every row has the header's number of cells.
  assert {len(cells) for cells in sub.values()} == {9}
  calibration = results['labels']['PNEUMONIA']['calibration']['splits'][
      'test']
  rows = recount.markdown_rows(table, 'PNEUMONIA: calibration')
  assert rows['test'][:2] == [f"{calibration['ece_before']:.4f}",
                              f"{calibration['ece_after']:.4f}"]


def test_several_labels_get_an_overview_and_a_reference_table_each():
  rng = np.random.default_rng(3)
  names = ['Effusion', 'Mass', 'Hernia']
  predictions = {}
  for split, n in (('val', 200), ('test', 240)):
    targets = rng.integers(0, 2, (n, 3)).astype(np.float64)
    targets[:, 2] = 0.0  # Hernia: no positive
    probs = 1 / (1 + np.exp(-(rng.normal(size=targets.shape) + targets)))
    targets[rng.random(targets.shape) < 0.2] = MASKED
    predictions[split] = (targets, probs)
  results = results_of(predictions, names, 50)
  text = markdown.results_markdown(results)
  for column, name in enumerate(names[:2]):
    rows = recount.markdown_rows(text, f'Results at threshold 0.5 ({name})')
    targets, probs = predictions['test']
    known = targets[:, column] != MASKED
    expected = recount.recount(targets[known, column], probs[known, column],
                               0.5)
    recount.assert_row(rows['test'], expected, recount.MAIN_COLUMNS, name)
  table = text.split('## Per label on test')[1].split('Macro mean')[0]
  rows = [l for l in table.splitlines() if l.startswith('| ') and
          not l.startswith('| label')]
  assert [r.split(' | ')[0][2:] for r in rows] == names
  assert 'AUC undefined' in rows[2]
  assert ('Macro mean on test: AUC ' in text and
          'over the 2 of 3 scored labels with a defined AUC') in text
  overview = recount.markdown_rows(text, 'AUC per label')
  assert overview['Mass'][1] == (
      f"{results['labels']['Mass']['splits']['test']['auc']['value']:.4f}")
  assert overview['Hernia'][1] == '-'
