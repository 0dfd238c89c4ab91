"""Each label's evaluation (evaluation.per_label): one path for one label
and for several, each on its known targets, checked against scikit-learn;
operating points chosen on val; patient-level intervals shared by the
labels; a killed evaluation resumes at its split."""

import json
import math

import numpy as np
import pytest
from sklearn import metrics

import recount
from recount import noisy_scores
from xray_tfdata import evaluation

MASKED = evaluation.MASKED_TARGET
NAMES = ('Effusion', 'Cardiomegaly', 'Mass', 'Hernia')


def multilabel_split(n, seed, mask_share=0.3):
  """targets [n, 4] (some masked), probs [n, 4]; Hernia has no positive."""
  rng = np.random.default_rng(seed)
  targets = rng.integers(0, 2, (n, len(NAMES))).astype(np.float64)
  targets[:, 3] = 0.0
  probs = 1 / (1 + np.exp(-(rng.normal(size=targets.shape) +
                            (2 * targets - 1) * np.array([1.5, 0.8, 0.3, 0]))))
  targets[rng.random(targets.shape) < mask_share] = MASKED
  return targets, probs


@pytest.fixture(scope='module', params=[1, 4], ids=['L1', 'L4'])
def scored(request):
  """One label (L = 1: the first column, every target known, as a dataset
  of classes reads) or four (L = 4: some masked, Hernia one class)."""
  count = request.param
  predictions = {}
  for split, n, seed in (('val', 300, 1), ('test', 400, 2)):
    targets, probs = multilabel_split(n, seed,
                                      mask_share=0.3 if count > 1 else 0)
    predictions[split] = (targets[:, :count], probs[:, :count])
  ids = {s: np.arange(len(t)) // 3 for s, (t, _) in predictions.items()}
  result = evaluation.evaluate_labels(predictions, NAMES[:count],
                                      patient_ids=ids, num_resamples=100)
  return predictions, result


def test_every_label_matches_scikit_learn_on_its_known_targets(scored):
  predictions, result = scored
  names = list(result['labels'])
  for column, name in enumerate(names[:3]):
    for split, (targets, probs) in predictions.items():
      known = targets[:, column] != MASKED
      y, p = targets[known, column], probs[known, column]
      entry = result['labels'][name]['splits'][split]
      assert entry['n'] == known.sum()
      if len(names) > 1:
        assert entry['n'] < len(targets)
      assert result['labels'][name]['known'][split] == known.sum()
      assert entry['positives'] == y.sum()
      assert entry['auc']['value'] == pytest.approx(
          metrics.roc_auc_score(y, p), abs=1e-12)
      assert entry['average_precision']['value'] == pytest.approx(
          metrics.average_precision_score(y, p), abs=1e-12)
      low, high = entry['auc']['ci']
      assert low < entry['auc']['value'] < high
  if len(names) > 1:
    aucs = [result['labels'][n]['splits']['test']['auc']['value']
            for n in NAMES[:3]]
    assert aucs[0] > aucs[1] > aucs[2]  # the signal strengths drawn


def test_operating_points_are_chosen_on_val_per_label(scored):
  predictions, result = scored
  for column, name in enumerate(list(result['labels'])[:3]):
    targets, probs = predictions['val']
    known = targets[:, column] != MASKED
    want = evaluation.youden_threshold(targets[known, column],
                                       probs[known, column])
    label = result['labels'][name]
    assert label['thresholds']['youden']['threshold'] == want
    assert label['thresholds']['youden']['chosen_on'] == 'val'
    assert label['thresholds'][evaluation.FIXED]['threshold'] == 0.5
    targets, probs = predictions['test']
    known = targets[:, column] != MASKED
    for op in ('youden', evaluation.FIXED):
      threshold = label['thresholds'][op]['threshold']
      y, called = targets[known, column] == 1, probs[known, column] > threshold
      point = label['splits']['test']['operating_points'][op]
      assert point['sensitivity']['value'] == pytest.approx(
          (y & called).sum() / y.sum())
      assert point['specificity']['value'] == pytest.approx(
          (~y & ~called).sum() / (~y).sum())
      assert point['tp'] == (y & called).sum()
    assert label['calibration']['fitted_on'] == 'val'


def test_the_macro_mean_of_one_label_is_that_label():
  predictions = {'test': tuple(a[:, :1] for a in multilabel_split(
      120, 7, mask_share=0))}
  result = evaluation.evaluate_labels(
      predictions, NAMES[:1], thresholds={}, num_resamples=50,
      patient_ids={'test': np.arange(120) // 4})
  macro = result['macro']['test']
  entry = result['labels']['Effusion']['splits']['test']
  assert macro['auc'] == entry['auc']['value']
  assert macro['auc_ci'] == entry['auc']['ci']


def four_labels():
  predictions = {'val': multilabel_split(300, 1),
                 'test': multilabel_split(400, 2)}
  ids = {s: np.arange(len(t)) // 3 for s, (t, _) in predictions.items()}
  return predictions, evaluation.evaluate_labels(
      predictions, NAMES, patient_ids=ids, num_resamples=100)


def test_a_one_class_label_is_nan_with_a_reason_and_left_out_of_the_macro():
  predictions, result = four_labels()
  hernia = result['labels']['Hernia']
  test = hernia['splits']['test']
  assert math.isnan(test['auc']['value'])
  assert 'no positive among the' in test['auc']['reason']
  assert 'AUC undefined' in test['auc']['reason']
  assert math.isnan(test['average_precision']['value'])
  assert hernia['thresholds'] == {} and hernia['calibration'] is None
  assert any('val has one class only' in n for n in hernia['notes'])
  macro = result['macro']['test']
  assert macro['auc_labels'] == list(NAMES[:3])
  assert macro['labels_scored'] == 4
  assert macro['auc'] == pytest.approx(np.mean([
      result['labels'][n]['splits']['test']['auc']['value']
      for n in NAMES[:3]]))


def test_every_target_masked_is_not_scored():
  targets, probs = multilabel_split(50, 3)
  targets[:, 1] = MASKED
  result = evaluation.evaluate_labels(
      {'val': (targets, probs), 'test': (targets, probs)}, NAMES,
      scored=['Effusion', 'Cardiomegaly'], num_resamples=0)
  assert list(result['labels']) == ['Effusion', 'Cardiomegaly']
  assert result['labels']['Cardiomegaly']['splits'] == {}
  assert 'every target masked' in result['labels']['Cardiomegaly']['notes'][0]
  assert result['macro']['test']['auc_labels'] == ['Effusion']


def test_patient_level_intervals_are_wider_than_image_level_ones():
  """20 patients of 10 images each, every image of a patient scored alike
  and of the same class: the images are ten copies of one observation, so
  resampling images claims ten times the evidence there is."""
  rng = np.random.default_rng(4)
  patient_class = np.array([0, 1] * 10)
  patient_score = rng.normal(size=20) + 0.8 * patient_class
  ids = np.repeat(np.arange(20), 10)
  targets = np.repeat(patient_class, 10).astype(np.float64)[:, None]
  probs = 1 / (1 + np.exp(-np.repeat(patient_score, 10)))[:, None]
  targets[::7] = MASKED  # masked rows leave both bootstraps
  predictions = {'test': (targets, probs)}
  thresholds = {'Effusion': {'youden': 0.5}}
  by_patient = evaluation.evaluate_labels(
      predictions, ['Effusion'], thresholds=thresholds,
      patient_ids={'test': ids}, num_resamples=400)
  by_image = evaluation.evaluate_labels(
      predictions, ['Effusion'], thresholds=thresholds, num_resamples=400)
  patient_entry = by_patient['labels']['Effusion']['splits']['test']
  image_entry = by_image['labels']['Effusion']['splits']['test']
  assert patient_entry['patients'] == 20
  assert image_entry['patients'] == patient_entry['n']
  assert patient_entry['auc']['value'] == image_entry['auc']['value']
  width = lambda e: e['ci'][1] - e['ci'][0]
  assert width(patient_entry['auc']) > 2 * width(image_entry['auc'])
  # The same interval as the single-label bootstrap on the known rows.
  known = targets[:, 0] != MASKED
  want = evaluation.bootstrap_intervals(
      targets[known, 0].astype(int), probs[known, 0], ids[known],
      {'youden': 0.5}, num_resamples=400)
  assert patient_entry['auc']['ci'] == want['auc']


def test_a_split_without_positives_has_no_sensitivity_not_a_zero():
  val_targets, val_probs = multilabel_split(200, 5, mask_share=0)
  test_targets, test_probs = multilabel_split(100, 6, mask_share=0)
  test_targets[:, 0] = 0.0  # Effusion: no positive on test
  result = evaluation.evaluate_labels(
      {'val': (val_targets, val_probs), 'test': (test_targets, test_probs)},
      NAMES, scored=['Effusion'], num_resamples=20)
  label = result['labels']['Effusion']
  assert 'youden' in label['thresholds']  # chosen on val, which has both
  point = label['splits']['test']['operating_points']['youden']
  assert math.isnan(point['sensitivity']['value'])
  assert point['sensitivity']['reason'] == 'zero denominator: undefined'
  threshold = label['thresholds']['youden']['threshold']
  assert point['specificity']['value'] == pytest.approx(
      np.mean(test_probs[:, 0] <= threshold))
  assert point['specificity']['ci'] is not None
  assert math.isnan(label['splits']['test']['auc']['value'])
  assert result['macro']['test']['auc_labels'] == []
  assert math.isnan(result['macro']['test']['auc'])


def test_macro_interval_resamples_patients_once_for_all_labels():
  _, result = four_labels()
  macro = result['macro']['test']
  low, high = macro['auc_ci']
  assert low < macro['auc'] < high
  # One label without masks: the macro interval is that label's own.
  targets, probs = multilabel_split(120, 7, mask_share=0)
  ids = np.arange(120) // 4
  one = evaluation.evaluate_labels(
      {'test': (targets, probs)}, NAMES, scored=['Effusion'],
      thresholds={}, patient_ids={'test': ids}, num_resamples=200)
  assert one['macro']['test']['auc_ci'] == one['labels']['Effusion'][
      'splits']['test']['auc']['ci']
  # Two labels: the mean of the two AUCs, drawn on the same patients,
  # recomputed here with scikit-learn.
  two = evaluation.evaluate_labels(
      {'test': (targets, probs)}, NAMES, scored=['Effusion', 'Mass'],
      thresholds={}, patient_ids={'test': ids}, num_resamples=200)
  means = [np.mean([metrics.roc_auc_score(targets[index, c], probs[index, c])
                    for c in (0, 2)])
           for index in evaluation.patient_resamples(ids, 200, 0)]
  np.testing.assert_allclose(two['macro']['test']['auc_ci'],
                             np.percentile(means, [2.5, 97.5]), atol=1e-12)


def _as_text(result):
  import json  # pylint: disable=g-import-not-at-top
  return json.dumps(result, sort_keys=True, default=float)


class _Killed(Exception):
  pass


def test_a_run_killed_during_the_bootstrap_resumes_at_its_split(tmp_path):
  """Killed while bootstrapping test: the rerun reuses val's intervals
  from the checkpoint and redoes test; the result equals an uninterrupted
  run's. A checkpoint made from other predictions, another seed, or cut
  short is never reused."""
  predictions = {'val': multilabel_split(300, 1), 'test': multilabel_split(400, 2)}
  ids = {s: np.arange(len(t)) // 3 for s, (t, _) in predictions.items()}
  view = {s: np.where(np.arange(len(t)) % 2, 'PA', 'AP')
          for s, (t, _) in predictions.items()}
  options = dict(patient_ids=ids, subgroups={s: {'view': v}
                                             for s, v in view.items()},
                 num_resamples=60, min_subgroup=10)
  whole = evaluation.evaluate_labels(predictions, NAMES, **options)
  lines = []

  def kill_on_test(line):
    lines.append(line)
    if line.startswith('evaluation of test'):
      raise _Killed()

  with pytest.raises(_Killed):
    evaluation.evaluate_labels(predictions, NAMES, **options,
                                   checkpoint_dir=str(tmp_path),
                                   progress=kill_on_test)
  assert any('val by view: 2 subgroups done' in line for line in lines)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['bootstrap-val.json']
  lines.clear()
  resumed = evaluation.evaluate_labels(predictions, NAMES, **options,
                                           checkpoint_dir=str(tmp_path),
                                           progress=lines.append)
  assert 'evaluation of val: intervals reused' in lines[0]
  assert lines[1].startswith('evaluation of test: 400 images, 134 patients, '
                             '4 labels, 60 patient resamples')
  assert _as_text(resumed) == _as_text(whole)
  # Other test predictions (one probability moved): test is redone, val
  # is still reused; another seed redoes both.
  moved = dict(predictions)
  targets, probs = predictions['test']
  probs = probs.copy()
  probs[0, 0] = 0.5 * probs[0, 0]
  moved['test'] = (targets, probs)
  lines.clear()
  evaluation.evaluate_labels(moved, NAMES, **options,
                                 checkpoint_dir=str(tmp_path),
                                 progress=lines.append)
  reused = [line for line in lines if 'reused' in line]
  assert len(reused) == 1 and 'of val' in reused[0]
  lines.clear()
  reseeded = evaluation.evaluate_labels(
      predictions, NAMES, **options, seed=1, checkpoint_dir=str(tmp_path),
      progress=lines.append)
  assert not any('reused' in line for line in lines)
  assert _as_text(reseeded) != _as_text(whole)
  # Another min_subgroup measures other subgroups: redone.
  lines.clear()
  evaluation.evaluate_labels(
      predictions, NAMES, **{**options, 'min_subgroup': 160}, seed=1,
      checkpoint_dir=str(tmp_path), progress=lines.append)
  assert not any('reused' in line for line in lines)
  assert any('val by view: 0 subgroups done' in line for line in lines)
  evaluation.evaluate_labels(predictions, NAMES, **options, seed=1,
                                 checkpoint_dir=str(tmp_path))
  # A checkpoint cut short is recomputed, not trusted.
  (tmp_path / 'bootstrap-val.json').write_text('{"key": "')
  lines.clear()
  again = evaluation.evaluate_labels(
      predictions, NAMES, **options, seed=1, checkpoint_dir=str(tmp_path),
      progress=lines.append)
  assert 'evaluation of val: 300 images' in lines[0]
  assert _as_text(again) == _as_text(reseeded)


def test_evaluate_label_subgroups():
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
      metrics.roc_auc_score(*test))
  groups = entry['subgroups']['view']
  assert groups['LL'] == {'n': 3}
  for value in ('AP', 'PA'):
    mask = view == value
    assert groups[value]['n'] == mask.sum()
    assert groups[value]['positives'] == test[0][mask].sum()
    assert groups[value]['auc']['value'] == pytest.approx(
        metrics.roc_auc_score(test[0][mask], test[1][mask]))
    youden = groups[value]['operating_points']['youden']
    assert youden['sensitivity']['value'] == pytest.approx(
        recount.recount(test[0][mask], test[1][mask],
                        result['thresholds']['youden']['threshold'])[
                            'sensitivity'])
