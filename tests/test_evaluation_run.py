"""The run evaluator (evaluation.run) and tools/evaluate: each split
predicted once, targets, patients and subgroups from the same records;
a run's own evaluation and a finished run scored on its own dataset and on
external ones with other label sets; results.json in format 2."""

import json
import os
import subprocess
import sys
import types

import numpy as np
from PIL import Image
import pytest
from sklearn import metrics

import recount
from evaluation_data import kermany_name
from evaluation_data import quarter_model
from evaluation_data import relabel
from evaluation_data import two_per_patient
from evaluation_data import write_boxes_dataset
from evaluation_data import write_multilabel
from evaluation_data import write_run
from records import write_dataset
from xray_tfdata import checks
from xray_tfdata import dataset_info
from xray_tfdata import labels as labels_lib
from xray_tfdata import pipeline
from xray_tfdata import run_dir
from xray_tfdata import schema
from xray_tfdata.evaluation import markdown
from xray_tfdata.evaluation import matching
from xray_tfdata.evaluation import localization
from xray_tfdata.evaluation import plots
from xray_tfdata.evaluation import run

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NIH = ('Effusion', 'Pleural_Thickening', 'Cardiomegaly', 'Mass')
CHEXPERT = ('Pleural Effusion', 'Cardiomegaly', 'Edema')
FORMAT_2_KEYS = {'format', 'label_names', 'label_policy', 'views',
                 'label_methods', 'config', 'data', 'bootstrap', 'labels',
                 'macro', 'localization', 'training'}


def evaluate_tool(*args):
  return subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'tools', 'evaluate'), *args],
      capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
      env={**os.environ, 'PYTHONPATH': REPO_ROOT})


# A multi-label run around a model of quarter means: no training.


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('multilabel')
  nih = str(root / 'nih')
  chexpert = str(root / 'chexpert')
  # Spelled as NIH and CheXpert spell them: matched through the vocabulary.
  nih_data = write_multilabel(nih, NIH, {'train': 12, 'val': 60, 'test': 60}, 0,
                              layout='nih')
  chexpert_data = write_multilabel(chexpert, CHEXPERT,
                                   {'val': 60, 'test': 72}, 1,
                                   layout='chexpert')
  net = quarter_model(len(NIH))
  # The run's own evaluation, as tools/train makes it at the end of a run.
  own, predictions = run.evaluate_model(
      net, pipeline.DatasetBuilder(nih), label_names=NIH, batch_size=8,
      config={'data_dir': nih}, splits=('val', 'test'),
      label_policy='u_ones', num_resamples=50)
  model_dir = str(root / 'run')
  write_run(model_dir, net, nih, NIH, own)
  return {'root': root, 'nih': nih, 'chexpert': chexpert, 'net': net,
          'model_dir': model_dir, 'own': own, 'predictions': predictions,
          'nih_data': nih_data, 'chexpert_data': chexpert_data}


def test_the_runs_own_evaluation_per_label(runs):
  """Targets from the records as the reader reads them equal a recount
  from the written codes; per label the numbers are scikit-learn's on its
  known targets; patients and subgroups from the same records."""
  own = runs['own']
  assert set(own) == FORMAT_2_KEYS
  assert own['format'] == run_dir.RESULTS_FORMAT
  assert own['label_names'] == list(NIH) and own['label_policy'] == 'u_ones'
  codes, images, ids = runs['nih_data']['test']
  targets, probs = runs['predictions']['test']
  np.testing.assert_array_equal(targets,
                                labels_lib.apply_policy(codes, 'u_ones'))
  np.testing.assert_allclose(probs, runs['net'].predict(images, verbose=0),
                             atol=1e-6)
  for column, name in enumerate(NIH):
    known = targets[:, column] != labels_lib.MASKED
    entry = own['labels'][name]['splits']['test']
    assert entry['n'] == known.sum()
    assert entry['patients'] == len(set(ids[known]))
    assert entry['auc']['value'] == pytest.approx(metrics.roc_auc_score(
        targets[known, column], probs[known, column]), abs=1e-12)
    assert set(entry['subgroups']) == {'view', 'sex', 'age_group'}
    assert own['labels'][name]['thresholds']['youden']['chosen_on'] == 'val'
  assert own['macro']['test']['auc_labels'] == list(NIH)


def test_the_threshold_comes_from_val_and_test_is_scored_at_it(monkeypatch):
  """evaluate_model on a constructed val/test pair whose optimal thresholds
  differ (predictions stubbed): Youden's threshold is val's (0.30; test's
  best would be 0.66), test is scored at it; the 0.5 point on every split
  is the reference's table; train has no interval, test has one."""
  predictions = {
      'train': ([0, 1, 0, 1], [0.2, 0.7, 0.4, 0.9]),
      'val': ([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.28, 0.32, 0.5, 0.9]),
      'test': ([0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 1],
               [0.1, 0.35, 0.4, 0.5, 0.6, 0.72, 0.8, 0.9, 0.45, 0.55, 0.3]),
  }

  def predict(net, builder, split, batch_size, **options):
    del net, builder, batch_size, options
    labels, probs = predictions[split]
    names = np.array([f'{split}/{i}.png' for i in range(len(labels))])
    return (np.array(labels, np.float64)[:, None],
            np.array(probs)[:, None],
            {'filename': names, 'patient_id': names})

  monkeypatch.setattr(run, 'predict_split', predict)
  info = types.SimpleNamespace(
      class_names=('NORMAL', 'PNEUMONIA'), is_multilabel=False,
      label_names=(), layout='pool', extra_features=())
  builder = types.SimpleNamespace(info=info, data_dir='data')
  results, _ = run.evaluate_model(None, builder, label_names=['PNEUMONIA'],
                                  batch_size=4, config={},
                                  num_resamples=400, seed=5)
  label = results['labels']['PNEUMONIA']
  threshold = label['thresholds']['youden']['threshold']
  assert recount.youden_j(*predictions['val'], threshold) == 1.0
  assert threshold == pytest.approx(0.30)
  expected = recount.recount(*predictions['test'], threshold)
  got = label['splits']['test']['operating_points']['youden']
  assert {k: got[k] for k in ('tp', 'tn', 'fp', 'fn')} == {
      k: expected[k] for k in ('tp', 'tn', 'fp', 'fn')}
  for split, (labels, probs) in predictions.items():
    fixed = label['splits'][split]['operating_points']['fixed_0.5']
    want = recount.recount(labels, probs, 0.5)
    assert {k: fixed[k] for k in ('tp', 'tn', 'fp', 'fn')} == {
        k: want[k] for k in ('tp', 'tn', 'fp', 'fn')}
  low, high = label['splits']['test']['auc']['ci']
  assert low < label['splits']['test']['auc']['value'] < high
  assert label['splits']['train']['auc']['ci'] is None
  assert results['macro']['train']['auc_ci'] is None


def test_external_dataset_with_another_label_set(runs):
  out_dir = str(runs['root'] / 'external')
  results = run.evaluate_run(runs['model_dir'], runs['chexpert'],
                             out_dir=out_dir, num_resamples=50)
  assert set(results) == FORMAT_2_KEYS
  mapping = results['data']['label_mapping']
  assert mapping['unmatched_model_labels'] == ['Pleural_Thickening', 'Mass']
  assert mapping['unmatched_data_labels'] == ['Edema']
  assert list(results['labels']) == ['Effusion', 'Cardiomegaly']
  codes, images, _ = runs['chexpert_data']['test']
  probs = runs['net'].predict(images, verbose=0)
  for name, model_column, data_column in (('Effusion', 0, 0),
                                          ('Cardiomegaly', 2, 1)):
    targets = labels_lib.apply_policy(codes[:, data_column], 'u_ones')
    entry = results['labels'][name]['splits']['test']
    assert entry['auc']['value'] == pytest.approx(metrics.roc_auc_score(
        targets, probs[:, model_column]), abs=1e-6)
    # The run's thresholds and temperature, not new ones.
    run_label = runs['own']['labels'][name]
    got = results['labels'][name]
    assert {k: v['threshold'] for k, v in got['thresholds'].items()} == {
        k: v['threshold'] for k, v in run_label['thresholds'].items()}
    assert got['calibration']['temperature'] == (
        run_label['calibration']['temperature'])
    assert got['calibration']['fitted_on'] == 'given'
  text = markdown.summary(results, 'where')
  assert text.splitlines()[0] == (
      'labels scored: Effusion as Pleural Effusion, Cardiomegaly; model '
      'labels not in the dataset: Pleural_Thickening, Mass; dataset labels '
      'without a model output: Edema')
  assert 'macro mean on test: AUC' in text
  assert 'localization: ' in text and 'stores no boxes' in text
  table = open(os.path.join(out_dir, run_dir.RESULTS_MD)).read()
  assert '| Effusion | Pleural Effusion | ' in table
  for name in (plots.ROC, plots.PR, plots.RELIABILITY, plots.CONFUSION):
    with Image.open(os.path.join(out_dir, name)) as image:
      assert image.size == (2 * 320, 320)  # two labels in one row
    assert f']({name})' in table
  saved = json.load(open(os.path.join(out_dir, run_dir.RESULTS_JSON)))
  assert saved['data']['label_mapping']['unmatched_data_labels'] == [
      'Edema']
  with pytest.raises(localization.LocalizationError, match='stores no boxes'):
    run.evaluate_run(runs['model_dir'], runs['chexpert'],
                     out_dir=str(runs['root'] / 'x'), num_resamples=0,
                     localization=True)


def test_a_binary_model_on_a_dataset_of_labels(runs):
  """A PNEUMONIA run (L = 1) scored on a dataset of labels: its label
  against the label of that name, the other labels named."""
  binary_data = str(runs['root'] / 'rsna-for-binary')
  write_boxes_dataset(binary_data)
  model_dir = str(runs['root'] / 'binary-on-labels')
  net = quarter_model(1)
  write_run(model_dir, net, binary_data)
  labelled = str(runs['root'] / 'labelled')
  data = write_multilabel(labelled, ('Pneumonia', 'Effusion'),
                          {'val': 40, 'test': 40}, 2)
  results = run.evaluate_run(model_dir, labelled, out_dir=str(
      runs['root'] / 'binary-out'), num_resamples=0)
  assert results['data']['label_mapping']['matched'] == {
      'PNEUMONIA': 'Pneumonia'}
  assert results['data']['label_mapping']['unmatched_data_labels'] == [
      'Effusion']
  codes, images, _ = data['test']
  targets = labels_lib.apply_policy(codes[:, 0], checks.DEFAULT_LABEL_POLICY)
  entry = results['labels']['PNEUMONIA']['splits']['test']
  assert entry['auc']['value'] == pytest.approx(metrics.roc_auc_score(
      targets, net.predict(images, verbose=0)[:, 0]), abs=1e-6)
  # The run chose no thresholds (an empty results.json): chosen on val.
  assert results['labels']['PNEUMONIA']['thresholds'][
      'youden']['chosen_on'] == 'val'


def test_evaluate_with_views_scores_only_those_images(runs, capsys):
  """tools/evaluate --views=PA (in process): the external test's AUCs are
  sklearn's on the PA rows alone (write_multilabel: odd rows PA), at the
  run's thresholds; the results and their folder name the views; views
  that keep nothing fail in one line before the model loads."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from xray_tfdata.cli import evaluate as evaluate_tool_module  # pylint: disable=g-import-not-at-top
  flags.FLAGS(['evaluate', f'--model_dir={runs["model_dir"]}',
               f'--data_dir={runs["chexpert"]}', '--bootstrap_resamples=20',
               '--views=PA'])
  try:
    evaluate_tool_module.main(['evaluate'])
  finally:
    flags.FLAGS.unparse_flags()
  out_dir = run.default_out_dir(runs['model_dir'], runs['chexpert'], 'test',
                                ['PA'])
  assert out_dir.endswith('chexpert-test-PA')
  printed = capsys.readouterr().out
  assert 'views PA: kept 36 of 72 test images (dropped 36: AP 36)' in printed
  results = json.load(open(os.path.join(out_dir, run_dir.RESULTS_JSON)))
  assert results['views'] == ['PA']
  codes, images, _ = runs['chexpert_data']['test']
  pa = np.arange(len(codes)) % 2 == 1
  probs = runs['net'].predict(images[pa], verbose=0)
  for name, model_column, data_column in (('Effusion', 0, 0),
                                          ('Cardiomegaly', 2, 1)):
    targets = labels_lib.apply_policy(codes[pa, data_column], 'u_ones')
    entry = results['labels'][name]['splits']['test']
    assert entry['n'] == pa.sum()
    assert entry['auc']['value'] == pytest.approx(metrics.roc_auc_score(
        targets, probs[:, model_column]), abs=1e-6)
    assert set(entry['subgroups']['view']) == {'PA'}
  with pytest.raises(dataset_info.DatasetError) as caught:
    run.evaluate_run(runs['model_dir'], runs['chexpert'],
                     out_dir=str(runs['root'] / 'none'), num_resamples=0,
                     views=['LL'])
  assert '\n' not in str(caught.value) and '--views=VIEW,VIEW' in str(
      caught.value)
  assert not os.path.exists(runs['root'] / 'none')


@pytest.mark.slow  # starts tools/evaluate
def test_tool_on_another_label_set_and_localization_without_boxes(runs):
  from conftest import assert_one_line_error  # pylint: disable=g-import-not-at-top
  args = [f'--model_dir={runs["model_dir"]}',
          f'--data_dir={runs["chexpert"]}', '--bootstrap_resamples=20']
  result = evaluate_tool(*args)
  assert result.returncode == 0, result.stderr
  assert ('labels scored: Effusion as Pleural Effusion, Cardiomegaly; model '
          'labels not in the dataset: Pleural_Thickening, Mass; dataset '
          'labels without a model output: Edema') in result.stdout
  assert 'Cardiomegaly (as Cardiomegaly) on test: ' in result.stdout
  result = evaluate_tool(*args, '--localization')
  assert_one_line_error(result, 'error: --localization:', 'stores no boxes')


# A dataset of classes (L = 1): a tiny trained run.


@pytest.fixture(scope='module')
def datasets(tmp_path_factory):
  root = tmp_path_factory.mktemp('scoring')
  raw = str(root / 'raw')
  os.makedirs(raw)
  write_dataset(raw, {'train': (12, 14), 'val': (10, 10), 'test': (12, 12)},
                num_shards=2, size=(32, 32), learnable=True)
  own = relabel(raw, str(root / 'own'), schema.DEFAULT_CLASS_NAMES,
                lambda y: y, kermany_name, two_per_patient, layout='kaggle')
  # The same images under another label set, in the other order: class 0
  # is PNEUMONIA here, and the negatives are called 'no_finding'; its names
  # the vocabulary's own ('csv'), so Kermany's PNEUMONIA is its Pneumonia.
  swapped = relabel(own, str(root / 'swapped'), ('Pneumonia', 'no_finding'),
                    lambda y: 1 - y, layout='csv')
  unrelated = relabel(own, str(root / 'unrelated'), ('CAT', 'DOG'),
                      lambda y: y)
  return {'own': own, 'swapped': swapped, 'unrelated': unrelated,
          'root': root}


@pytest.fixture(scope='module')
def trained(datasets):
  from xray_tfdata import training  # pylint: disable=g-import-not-at-top
  model_dir = str(datasets['root'] / 'run')
  config = training.TrainConfig(
      data_dir=datasets['own'], image_size=32, batch_size=8, epochs=2,
      weights='none', backbone='mini_vgg', dense_units=(16, 8),
      bootstrap_resamples=200, verbose=0, policy='float32')
  results = training.train_and_evaluate(config, model_dir)
  return model_dir, results


def test_subgroup_fields_from_kermany_names():
  info = pipeline.DatasetInfo(data_dir='x', name='x', class_names=('A', 'B'),
                              image_height=1, image_width=1, channels=1,
                              splits={}, raw={}, layout='split')
  metadata = {'filename': np.array(['test/NORMAL/IM-1-1.jpeg',
                                    'val/PNEUMONIA/person3_bacteria_9.jpeg',
                                    'test/PNEUMONIA/person4_virus_2.jpeg',
                                    'test/PNEUMONIA/odd.jpeg']),
              'patient_id': np.array(['1', '3', '', '4'])}
  positive = np.array([False, True, True, True])
  fields = run.subgroup_fields(info, metadata, positive)
  assert fields['kermany_subtype'].tolist() == ['normal', 'bacteria', 'virus',
                                                'unknown']
  assert fields['source_folder'].tolist() == ['test', 'val', 'test', 'test']
  assert run.patient_ids(metadata).tolist() == [
      '1', '3', 'file:test/PNEUMONIA/person4_virus_2.jpeg', '4']
  info = pipeline.DatasetInfo(data_dir='x', name='x', class_names=('A', 'B'),
                              image_height=1, image_width=1, channels=1,
                              splits={}, raw={}, layout='pool')
  assert 'source_folder' not in run.subgroup_fields(info, metadata, positive)


def test_label_method_view_and_sex_are_subgroups_unknown_where_blank():
  info = pipeline.DatasetInfo(data_dir='x', name='x', class_names=('A', 'B'),
                              image_height=1, image_width=1, channels=1,
                              splits={}, raw={}, layout='padchest',
                              label_names=('A', 'B'))
  metadata = {'filename': np.array(['a.png', 'b.png', 'c.png']),
              'patient_id': np.array(['1', '2', '3']),
              'view': np.array(['PA', 'L', '']),
              'sex': np.array(['', '', '']),
              'label_method': np.array(['Physician', '', 'RNN_model'])}
  fields = run.subgroup_fields(info, metadata)
  assert fields['label_method'].tolist() == ['Physician', 'unknown',
                                             'RNN_model']
  assert fields['view'].tolist() == ['PA', 'L', 'unknown']
  assert 'sex' not in fields  # none stored: no subgroup of all 'unknown'


@pytest.mark.slow  # trains a tiny model
def test_run_results_hold_the_one_evaluation(trained, datasets):
  model_dir, results = trained
  assert set(results) == FORMAT_2_KEYS
  assert results['label_names'] == ['PNEUMONIA']
  assert results['label_policy'] is None and results['views'] is None
  assert results['training']['epochs_run'] >= 1
  assert results['config']['data_dir'] == datasets['own']
  result = results['labels']['PNEUMONIA']
  assert set(result['splits']) == {'train', 'val', 'test'}
  test = result['splits']['test']
  assert (test['n'], test['patients'], test['positives']) == (24, 12, 12)
  groups = test['subgroups']['kermany_subtype']
  labels = [int(y[0]) for _, y in pipeline.DatasetBuilder(  # y: [L = 1]
      datasets['own']).as_dataset('test').as_numpy_iterator()]
  names = [kermany_name('test', i, y) for i, y in enumerate(labels)]
  assert {k: v['n'] for k, v in groups.items()} == {
      'normal': 12, 'bacteria': sum('bacteria' in n for n in names),
      'virus': sum('virus' in n for n in names)}
  with open(os.path.join(model_dir, 'results.md')) as f:
    table = f.read()
  assert '## Results at threshold 0.5 (PNEUMONIA)' in table
  assert '## PNEUMONIA: operating points on test' in table
  with open(os.path.join(model_dir, 'results.json')) as f:
    assert json.load(f) == json.loads(json.dumps(results, default=float))
  for name in (plots.ROC, plots.CONFUSION, 'training_curves.png',
               'augmentation_preview.png'):
    assert os.path.exists(os.path.join(model_dir, name))
    assert f']({name})' in table


@pytest.mark.slow  # trains a tiny model, runs tools/evaluate
def test_tool_on_its_own_dataset_and_an_external_one(trained, datasets):
  model_dir, results = trained
  # In-process on its own dataset, through the real tool on the external
  # one (each tool start costs tens of seconds here).
  run.evaluate_run(model_dir, datasets['own'], num_resamples=100)
  out_dir = os.path.join(model_dir, 'evaluation', 'own-test')
  with open(os.path.join(out_dir, 'results.json')) as f:
    scored = json.load(f)
  # The run's thresholds, and the run's test numbers.
  want = results['labels']['PNEUMONIA']
  got = scored['labels']['PNEUMONIA']
  for op, entry in want['thresholds'].items():
    assert got['thresholds'][op]['threshold'] == entry['threshold']
  for key in ('auc', 'average_precision', 'brier', 'ece'):
    assert got['splits']['test'][key]['value'] == pytest.approx(
        want['splits']['test'][key]['value'], abs=1e-6), key
  assert got['splits']['test']['operating_points']['youden']['tp'] == (
      want['splits']['test']['operating_points']['youden']['tp'])

  swapped = evaluate_tool(f'--model_dir={model_dir}',
                          f'--data_dir={datasets["swapped"]}',
                          '--bootstrap_resamples=100', '--split=test')
  assert swapped.returncode == 0, swapped.stderr
  assert 'PNEUMONIA (as Pneumonia) on test: 24 images, 12 patients, 12 ' \
         'positive, AUC' in swapped.stdout
  assert 'wrote ' + os.path.join(model_dir, 'evaluation', 'swapped-test',
                                 'results.md') in swapped.stdout
  assert ('note: dataset classes no_finding taken as negatives'
          in swapped.stdout)
  with open(os.path.join(model_dir, 'evaluation', 'swapped-test',
                         'results.json')) as f:
    external = json.load(f)
  assert external['data']['label_mapping']['matched'] == {
      'PNEUMONIA': 'Pneumonia'}
  ext = external['labels']['PNEUMONIA']['splits']['test']
  # Same images, the label ids flipped: the mapped numbers are the same.
  for key in ('auc', 'average_precision', 'brier'):
    assert ext[key]['value'] == pytest.approx(
        want['splits']['test'][key]['value'], abs=1e-6), key
  for picture in (plots.ROC, plots.RELIABILITY):
    assert os.path.exists(os.path.join(model_dir, 'evaluation',
                                       'swapped-test', picture))

  # The user's errors, in-process (the tool shows them as one line, as
  # every tool does through runtime.tool_errors).
  with pytest.raises(matching.MatchingError, match=(
      r"no label of the model \(PNEUMONIA\) is among the dataset's labels "
      r'\(CAT, DOG\): nothing to score')):
    run.evaluate_run(model_dir, datasets['unrelated'])
  with pytest.raises(run_dir.RunDirError,
                     match='must be a finished tools/train run'):
    run.evaluate_run(datasets['own'], datasets['own'])
  with pytest.raises(pipeline.DatasetError, match="split 'holdout'"):
    run.evaluate_run(model_dir, datasets['own'], split='holdout')


@pytest.mark.slow  # runs tools/evaluate
def test_tool_error_is_one_line(trained, datasets):
  from conftest import assert_one_line_error  # pylint: disable=g-import-not-at-top
  model_dir, _ = trained
  result = evaluate_tool(f'--model_dir={model_dir}',
                         f'--data_dir={datasets["unrelated"]}')
  assert_one_line_error(result, 'error: no label of the model (PNEUMONIA)',
                        '(CAT, DOG)')
  assert not os.path.exists(os.path.join(model_dir, 'evaluation',
                                         'unrelated-test'))
