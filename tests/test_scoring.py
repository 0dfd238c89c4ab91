"""tools/evaluate and scoring: a tiny run scored on its own dataset and on
external ones with other label sets."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from records import write_dataset
from xray_tfdata import pipeline
from xray_tfdata import schema
from xray_tfdata import scoring

SIZE = 32
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def relabel(src_dir, dst_dir, class_names, label_of, name_of=None,
            patient_of=None):
  """Copies a records.write_dataset dataset, with other class names, label
  ids, file names or patient ids (the same images, in the same order).

  label_of(old label) -> new label; name_of(split, i, label), patient_of(
  split, i, label) -> str, i the example's index in its split.
  """
  info = json.load(open(os.path.join(src_dir, schema.INFO_FILENAME)))
  os.makedirs(dst_dir)
  for split, entry in info['splits'].items():
    index = 0
    counts = dict.fromkeys(class_names, 0)
    for shard in entry['shards']:
      path = os.path.join(dst_dir, shard['filename'])
      with tf.io.TFRecordWriter(path) as writer:
        for record in tf.data.TFRecordDataset(
            os.path.join(src_dir, shard['filename'])).as_numpy_iterator():
          example = tf.train.Example.FromString(record)
          feature = example.features.feature
          old = feature[schema.LABEL].int64_list.value[0]
          new = label_of(old)
          feature[schema.LABEL].int64_list.value[:] = [new]
          feature[schema.CLASS_TEXT].bytes_list.value[:] = [
              class_names[new].encode()]
          if name_of:
            feature[schema.FILENAME].bytes_list.value[:] = [
                name_of(split, index, old).encode()]
          if patient_of:
            feature[schema.PATIENT_ID].bytes_list.value[:] = [
                patient_of(split, index, old).encode()]
          counts[class_names[new]] += 1
          writer.write(example.SerializeToString())
          index += 1
      shard['num_bytes'] = os.path.getsize(path)
    entry['class_counts'] = counts
  info['class_names'] = list(class_names)
  with open(os.path.join(dst_dir, schema.INFO_FILENAME), 'w') as f:
    json.dump(info, f)
  return dst_dir


def kermany_name(split, i, label):
  """Kermany-like names: two images per patient, pneumonia bacterial for
  even patients, viral for odd ones."""
  patient = i // 2
  if label == 0:
    return f'{split}/NORMAL/IM-{patient:04d}-{i:04d}.jpeg'
  kind = 'bacteria' if patient % 2 == 0 else 'virus'
  return f'{split}/PNEUMONIA/person{patient}_{kind}_{i}.jpeg'


def two_per_patient(split, i, label):
  return f'{split}-{i // 2}'


@pytest.fixture(scope='module')
def datasets(tmp_path_factory):
  root = tmp_path_factory.mktemp('scoring')
  raw = str(root / 'raw')
  os.makedirs(raw)
  write_dataset(raw, {'train': (12, 14), 'val': (10, 10), 'test': (12, 12)},
                num_shards=2, size=(SIZE, SIZE), learnable=True)
  own = relabel(raw, str(root / 'own'), schema.DEFAULT_CLASS_NAMES,
                lambda y: y, kermany_name, two_per_patient)
  # The same images under another label set, in the other order: class 0
  # is PNEUMONIA here, and the negatives are called 'no_finding'.
  swapped = relabel(own, str(root / 'swapped'), ('Pneumonia', 'no_finding'),
                    lambda y: 1 - y)
  unrelated = relabel(own, str(root / 'unrelated'), ('CAT', 'DOG'),
                      lambda y: y)
  return {'own': own, 'swapped': swapped, 'unrelated': unrelated,
          'root': root}


@pytest.fixture(scope='module')
def run(datasets):
  from xray_tfdata import training  # pylint: disable=g-import-not-at-top
  model_dir = str(datasets['root'] / 'run')
  config = training.TrainConfig(
      data_dir=datasets['own'], image_size=SIZE, batch_size=8, epochs=2,
      weights='none', backbone='mini_vgg', dense_units=(16, 8),
      bootstrap_resamples=200, verbose=0, policy='float32')
  results = training.train_and_evaluate(config, model_dir)
  return model_dir, results


def evaluate_tool(*args):
  return subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'tools', 'evaluate'), *args],
      capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
      env={**os.environ, 'PYTHONPATH': REPO_ROOT})


def test_map_labels_by_name():
  mapping = scoring.map_labels(('NORMAL', 'PNEUMONIA'),
                               (' pneumonia', 'healthy'))
  assert mapping['matched'] == {'PNEUMONIA': ' pneumonia'}
  assert mapping['positive_class_id'] == {'PNEUMONIA': 0}
  assert mapping['notes'] == [
      "dataset classes healthy taken as negatives (the model's negative "
      'class is NORMAL)']
  assert scoring.map_labels(('NORMAL', 'PNEUMONIA'),
                            ('normal', 'PNEUMONIA'))['notes'] == []
  with pytest.raises(scoring.ScoringError,
                     match=r'no label of the model \(PNEUMONIA\) is among '
                     r"the dataset's classes \(CAT, DOG\)"):
    scoring.map_labels(('NORMAL', 'PNEUMONIA'), ('CAT', 'DOG'))


def test_subgroup_fields_from_kermany_names():
  info = pipeline.DatasetInfo(data_dir='x', name='x', class_names=('A', 'B'),
                              image_height=1, image_width=1, channels=1,
                              splits={}, raw={}, layout='split')
  metadata = {'label': np.array([0, 1, 1, 1]),
              'filename': np.array(['test/NORMAL/IM-1-1.jpeg',
                                    'val/PNEUMONIA/person3_bacteria_9.jpeg',
                                    'test/PNEUMONIA/person4_virus_2.jpeg',
                                    'test/PNEUMONIA/odd.jpeg']),
              'patient_id': np.array(['1', '3', '', '4'])}
  fields = scoring.subgroup_fields(info, metadata)
  assert fields['kermany_subtype'].tolist() == ['normal', 'bacteria', 'virus',
                                                'unknown']
  assert fields['source_folder'].tolist() == ['test', 'val', 'test', 'test']
  assert scoring.patient_ids(metadata).tolist() == [
      '1', '3', 'file:test/PNEUMONIA/person4_virus_2.jpeg', '4']
  info = pipeline.DatasetInfo(data_dir='x', name='x', class_names=('A', 'B'),
                              image_height=1, image_width=1, channels=1,
                              splits={}, raw={}, layout='pool')
  assert 'source_folder' not in scoring.subgroup_fields(info, metadata)


@pytest.mark.slow  # trains a tiny model, runs tools/evaluate
def test_run_results_hold_the_clinical_evaluation(run, datasets):
  model_dir, results = run
  evaluation_results = results['evaluation']
  result = evaluation_results['labels']['PNEUMONIA']
  test = result['splits']['test']
  assert (test['n'], test['patients'], test['positives']) == (24, 12, 12)
  # The same numbers as the reference's table where both report one.
  assert test['auc']['value'] == pytest.approx(
      results['splits']['test']['auc'])
  assert result['thresholds']['youden']['threshold'] == pytest.approx(
      results['youden']['threshold'])
  groups = test['subgroups']['kermany_subtype']
  labels = [int(y) for _, y in pipeline.DatasetBuilder(
      datasets['own']).as_dataset('test').as_numpy_iterator()]
  names = [kermany_name('test', i, y) for i, y in enumerate(labels)]
  assert {k: v['n'] for k, v in groups.items()} == {
      'normal': 12, 'bacteria': sum('bacteria' in n for n in names),
      'virus': sum('virus' in n for n in names)}
  with open(os.path.join(model_dir, 'results.md')) as f:
    table = f.read()
  assert '## PNEUMONIA: operating points on test' in table
  for name in ('roc_pneumonia.png', 'training_curves.png',
               'augmentation_preview.png'):
    assert os.path.exists(os.path.join(model_dir, name))
    assert f']({name})' in table


@pytest.mark.slow  # trains a tiny model, runs tools/evaluate
def test_tool_on_its_own_dataset_and_an_external_one(run, datasets):
  model_dir, results = run
  # In-process on its own dataset, through the real tool on the external
  # one (each tool start costs tens of seconds here).
  scoring.evaluate_run(model_dir, datasets['own'], num_resamples=100)
  out_dir = os.path.join(model_dir, 'evaluation', 'own-test')
  with open(os.path.join(out_dir, 'results.json')) as f:
    scored = json.load(f)['evaluation']
  # The run's thresholds, and the run's test numbers.
  want = results['evaluation']['labels']['PNEUMONIA']
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
  assert 'PNEUMONIA (as Pneumonia) on test: 24 images, 12 patients, AUC' in (
      swapped.stdout)
  assert 'wrote ' + os.path.join(model_dir, 'evaluation', 'swapped-test',
                                 'results.md') in swapped.stdout
  assert ("note: dataset classes no_finding taken as negatives (the "
          "model's negative class is NORMAL)") in swapped.stdout
  with open(os.path.join(model_dir, 'evaluation', 'swapped-test',
                         'results.json')) as f:
    external = json.load(f)['evaluation']
  assert external['label_mapping']['matched'] == {'PNEUMONIA': 'Pneumonia'}
  ext = external['labels']['PNEUMONIA']['splits']['test']
  # Same images, the label ids flipped: the mapped numbers are the same.
  for key in ('auc', 'average_precision', 'brier'):
    assert ext[key]['value'] == pytest.approx(
        want['splits']['test'][key]['value'], abs=1e-6), key
  for pictures in ('roc_pneumonia.png', 'reliability_pneumonia.png'):
    assert os.path.exists(os.path.join(model_dir, 'evaluation',
                                       'swapped-test', pictures))

  # The user's errors, in-process (the tool shows them as one line, as
  # every tool does through runtime.tool_errors).
  with pytest.raises(scoring.ScoringError, match=(
      r"no label of the model \(PNEUMONIA\) is among the dataset's classes "
      r'\(CAT, DOG\): nothing to score')):
    scoring.evaluate_run(model_dir, datasets['unrelated'])
  with pytest.raises(scoring.ScoringError,
                     match='must be a finished tools/train run'):
    scoring.evaluate_run(datasets['own'], datasets['own'])
  with pytest.raises(pipeline.DatasetError, match="split 'holdout'"):
    scoring.evaluate_run(model_dir, datasets['own'], split='holdout')


@pytest.mark.slow  # runs tools/evaluate
def test_tool_error_is_one_line(run, datasets):
  from conftest import assert_one_line_error  # pylint: disable=g-import-not-at-top
  model_dir, _ = run
  result = evaluate_tool(f'--model_dir={model_dir}',
                         f'--data_dir={datasets["unrelated"]}')
  assert_one_line_error(result, 'error: no label of the model (PNEUMONIA)',
                        '(CAT, DOG)')
  assert not os.path.exists(os.path.join(model_dir, 'evaluation',
                                         'unrelated-test'))
