"""run_dir: the run directory's names and its one reader of results."""

import json
import os

import pytest

from xray_tfdata import run_dir

# One label's results entry, as the evaluation writes it.
_ENTRY = {'thresholds': {'youden': {'threshold': 0.31, 'rule': 'youden',
                                    'chosen_on': 'val',
                                    'calibrated_threshold': 0.42},
                         'sensitivity_90': {'threshold': 0.12}},
          'calibration': {'temperature': 1.7},
          'splits': {}}


def _run(tmp_path, config, results=None, model=True):
  folder = tmp_path / 'run'
  folder.mkdir()
  (folder / run_dir.CONFIG_JSON).write_text(json.dumps(config))
  if results is not None:
    (folder / run_dir.RESULTS_JSON).write_text(json.dumps(results))
  if model:
    (folder / run_dir.MODEL_FILE).write_text('')
  return str(folder)


def test_reads_thresholds_and_temperatures_of_the_one_layout(tmp_path):
  results = {run_dir.RESULTS_FORMAT_KEY: run_dir.RESULTS_FORMAT,
             'label_names': ['Effusion', 'Hernia'],
             'labels': {'Effusion': _ENTRY,
                        # Every key kept, null where it does not apply.
                        'Hernia': {'thresholds': {'youden': {
                            'threshold': 0.6, 'rule': 'youden',
                            'chosen_on': 'val',
                            'calibrated_threshold': None}},
                                   'calibration': None, 'splits': {}}}}
  run = run_dir.read(_run(tmp_path, {'data_dir': '/d', 'label_names':
                                     ['Effusion', 'Hernia']}, results))
  assert run.finished and run.data_dir == '/d'
  assert run.label_names == ('Effusion', 'Hernia')
  assert run.thresholds() == {'Effusion': 0.31, 'Hernia': 0.6}
  assert run.thresholds(calibrated=True) == {'Effusion': 0.42, 'Hernia': None}
  assert run.thresholds('sensitivity_90') == {'Effusion': 0.12,
                                              'Hernia': None}
  assert run.temperatures() == {'Effusion': 1.7, 'Hernia': None}


def test_reads_a_run_written_before_the_one_layout(tmp_path):
  # Before format 2 the same per-label entries sat under 'evaluation', and
  # a single-label run's config.json named no labels.
  results = {'youden': {'threshold': 0.9},
             'evaluation': {'labels': {'PNEUMONIA': _ENTRY}}}
  run = run_dir.read(_run(tmp_path, {'data_dir': '/d'}, results))
  assert run.label_names == ('PNEUMONIA',)  # the label its evaluation scored
  assert run.thresholds() == {'PNEUMONIA': 0.31}
  assert run.temperatures() == {'PNEUMONIA': 1.7}


def test_settings_leave_out_the_records(tmp_path):
  run = run_dir.read(_run(tmp_path, {'data_dir': '/d', 'epochs': 3,
                                     run_dir.DATASET_KEY: {'fingerprint': 'x'},
                                     run_dir.LABEL_NAMES_KEY: ['A']}),
                     finished=False)
  assert not run.finished
  assert run.settings == {'data_dir': '/d', 'epochs': 3}
  assert run.dataset == {'fingerprint': 'x'}


@pytest.mark.parametrize('missing', [run_dir.CONFIG_JSON, run_dir.MODEL_FILE,
                                     run_dir.RESULTS_JSON])
def test_a_missing_file_is_named(tmp_path, missing):
  folder = _run(tmp_path, {}, {run_dir.RESULTS_FORMAT_KEY: 2})
  os.remove(os.path.join(folder, missing))
  with pytest.raises(run_dir.RunDirError, match=missing):
    run_dir.read(folder)


def test_damaged_json_is_named(tmp_path):
  folder = _run(tmp_path, {}, {})
  with open(os.path.join(folder, run_dir.RESULTS_JSON), 'w') as f:
    f.write('{"cut')
  with pytest.raises(run_dir.RunDirError, match='not readable JSON'):
    run_dir.read(folder)


def test_a_single_label_run_without_names_is_named_by_its_positive_class(
    tmp_path):
  """A class-folder run of a version before the one label path recorded no
  label names: its one output is --positive_class, else the dataset's
  second class name, else PNEUMONIA (the dataset moved away)."""
  data_dir = tmp_path / 'data'
  data_dir.mkdir()
  (data_dir / 'xray_info.json').write_text(json.dumps(
      {'format_version': 2, 'class_names': ['healthy', 'sick'],
       'image': {'height': 16, 'width': 16}, 'splits': {}}))
  folder = _run(tmp_path, {'data_dir': str(data_dir), 'image_size': 16})
  run = run_dir.read(folder, finished=False)
  assert run.label_names == ('sick',) and run.image_size == 16
  (data_dir / 'xray_info.json').unlink()
  assert run_dir.read(folder, finished=False).label_names == ('PNEUMONIA',)
  with open(os.path.join(folder, run_dir.CONFIG_JSON), 'w') as f:
    json.dump({'data_dir': str(data_dir), 'positive_class': 'healthy'}, f)
  run = run_dir.read(folder, finished=False)
  assert run.label_names == ('healthy',) and run.image_size is None
