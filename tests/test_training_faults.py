"""Faults in training: a full disk at the state writes, damaged state files."""

import errno
import os

import numpy as np
import pytest

from records import write_dataset
from xray_tfdata import atomic
from xray_tfdata import callbacks
from xray_tfdata import resume
from xray_tfdata import training

SIZE = 16


def _config(data_dir, **overrides):
  """A tiny from-scratch run: 16 px, mini_vgg, two epochs."""
  config = training.TrainConfig(
      data_dir=data_dir, image_size=SIZE, batch_size=8, epochs=2,
      weights='none', backbone='mini_vgg', dense_units=(8,),
      augmentation='none', bootstrap_resamples=100, verbose=0)
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('records'))
  write_dataset(root, {'train': (8, 8), 'val': (4, 4), 'test': (4, 4)},
                num_shards=1, size=(SIZE, SIZE), learnable=True)
  return root


def _history_epochs(model_dir):
  with open(os.path.join(model_dir, 'history.csv')) as f:
    return [row.split(',')[0] for row in f.read().strip().splitlines()[1:]]


@pytest.mark.slow
def test_full_disk_at_an_epoch_end_keeps_the_last_epoch_and_resumes(
    data_dir, tmp_path, monkeypatch):
  model_dir = str(tmp_path / 'model')
  savez = np.savez
  calls = []

  def full_on_second_epoch(path, **arrays):
    calls.append(path)
    if len(calls) == 2:
      with open(path, 'wb') as f:
        f.write(b'PK')  # what a full disk leaves: a cut-short file
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return savez(path, **arrays)

  monkeypatch.setattr(np, 'savez', full_on_second_epoch)
  with pytest.raises(atomic.NoSpaceError, match='no space left') as caught:
    training.train_and_evaluate(_config(data_dir), model_dir)
  assert caught.value.filename == calls[1]
  state = resume.ResumeState(os.path.join(model_dir, 'backup'))
  assert state.epoch() == 1  # epoch 1's state is whole
  assert os.path.exists(os.path.join(model_dir, callbacks.BEST_WEIGHTS))

  monkeypatch.setattr(np, 'savez', savez)  # space freed
  results = training.train_and_evaluate(_config(data_dir), model_dir)
  assert results['training']['epochs_run'] == 2
  assert _history_epochs(model_dir)[-1] == '1'


def _warnings(capsys):
  return [l for l in capsys.readouterr().err.splitlines()
          if l.startswith('warning:')]


def test_damaged_resume_state_is_reported_and_rebuilt(tmp_path, capsys):
  backup = tmp_path / 'backup'
  backup.mkdir()
  (backup / 'state.json').write_bytes(b'')  # a write cut short
  (backup / 'weights-1.weights.h5').write_bytes(b'old')
  state = resume.ResumeState(str(backup))
  assert state.epoch() == 0 and not state.stopped()  # starts over
  warnings = _warnings(capsys)
  assert len(warnings) == 1, warnings
  assert 'state.json is damaged: empty' in warnings[0]
  assert not backup.exists()  # not trusted again


def test_damaged_config_json_is_reported_and_the_run_starts_over(
    data_dir, tmp_path, capsys):
  model_dir = tmp_path / 'model'
  (model_dir / 'backup').mkdir(parents=True)
  (model_dir / 'backup' / 'state.json').write_text('{"epoch": 3}')
  (model_dir / resume.CONFIG_JSON).write_bytes(b'{"data_dir": ')
  config = _config(data_dir)
  assert not resume.prepare_model_dir(str(model_dir), config)  # no resume
  warnings = _warnings(capsys)
  assert len(warnings) == 1 and 'config.json is damaged' in warnings[0]
  assert not (model_dir / 'backup').exists()
  assert atomic.read_json(str(model_dir / resume.CONFIG_JSON)) == (
      config.to_json())
  assert resume.prepare_model_dir(str(model_dir), config)  # rebuilt


def test_model_dir_that_is_a_file_is_one_error(data_dir, tmp_path):
  path = tmp_path / 'model'
  path.write_text('not a folder')
  with pytest.raises(training.TrainingError, match='is a file'):
    resume.prepare_model_dir(str(path), _config(data_dir))


@pytest.mark.parametrize('below', ['', 'run'])
def test_model_dir_that_is_a_file_fails_first_in_one_line(tmp_path, below):
  """Checked before anything else: data_dir here does not even exist."""
  path = tmp_path / 'model'
  path.write_text('not a folder')
  model_dir = str(path / below) if below else str(path)
  config = _config(str(tmp_path / 'nowhere'))
  with pytest.raises(training.TrainingError) as caught:
    training.train_and_evaluate(config, model_dir)
  message = str(caught.value)
  expected = (f'--model_dir {model_dir} lies under {path}, which is a file'
              if below else f'--model_dir {model_dir} is a file')
  assert message == f'{expected}; pass a folder, or move the file away'
  assert os.listdir(tmp_path) == ['model']
  assert path.read_text() == 'not a folder'
