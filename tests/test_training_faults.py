"""Faults in training: a full disk at the state writes, damaged state files,
two trainers on one model_dir."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from conftest import REPO_ROOT
from conftest import assert_one_line_error
from records import write_dataset
from xray_tfdata import atomic
from xray_tfdata import cache as cache_lib
from xray_tfdata import callbacks
from xray_tfdata import config as config_lib
from xray_tfdata import resume
from xray_tfdata import runtime
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


def _tool_args(data_dir, model_dir):
  """tools/train's flags for _config's run."""
  return [f'--data_dir={data_dir}', f'--model_dir={model_dir}',
          f'--image_size={SIZE}', '--batch_size=8', '--epochs=2',
          '--weights=none', '--backbone=mini_vgg', '--dense_units=8',
          '--augmentation=none', '--bootstrap_resamples=100', '--verbose=0',
          '--policy=float32']


def _env(**extra):
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **extra)


def _train(*args, env=None):
  return subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'tools', 'train'), *args],
      capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
      env=env or _env())


@pytest.mark.slow
def test_full_disk_for_real_ends_in_one_line_and_a_rerun_resumes(
    data_dir, tmp_path):
  """model_dir on a 1 MB tmpfs: the first best checkpoint (about 1.3 MB)
  fills it. Before, the right line came, then h5py's "Exception ignored in
  ObjectID.__dealloc__" tracebacks, and sometimes a segmentation fault."""
  mount = str(tmp_path / 'tmpfs')
  os.makedirs(mount)
  made = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs',
                         mount], capture_output=True, check=False)
  if made.returncode:
    pytest.skip('cannot mount a tmpfs here; the simulated full disk covers it')
  try:
    model_dir = os.path.join(mount, 'model')
    full = _train(*_tool_args(data_dir, model_dir))
    assert full.returncode == 1, full.stderr[-3000:]  # not 139, a segfault
    assert_one_line_error(full, 'error: no space left on device writing '
                          f'{model_dir}/checkpoints/new-best.weights.h5',
                          'rerun the same command to resume')
    assert 'Exception ignored' not in full.stderr, full.stderr[-3000:]
    # The unfinished file is gone, the settings are kept for the rerun.
    assert os.listdir(os.path.join(model_dir, 'checkpoints')) == []
    assert os.path.exists(os.path.join(model_dir, 'config.json'))

    subprocess.run(['mount', '-o', 'remount,size=64m', mount], check=True)
    rerun = _train(*_tool_args(data_dir, model_dir))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert os.path.exists(os.path.join(model_dir, 'results.json'))
    assert _history_epochs(model_dir) == ['0', '1']
  finally:
    subprocess.run(['umount', mount], check=False)


# tools/train whose training never ends: it holds the lock until killed.
# argv: repo, a file to create once training has started, the tool's flags.
_HANGING_TRAINER = """
import os, runpy, sys, time
repo, started = sys.argv[1], sys.argv[2]
sys.argv = [os.path.join(repo, 'tools', 'train')] + sys.argv[3:]
sys.path.insert(0, repo)
from xray_tfdata import runtime
runtime.configure_tensorflow_env()
from xray_tfdata import training
def fit(*args, **kwargs):
  open(started, 'w').close()
  time.sleep(600)
training.fit = fit
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def _listing(folder):
  return sorted((os.path.relpath(os.path.join(d, f), folder),
                 os.path.getsize(os.path.join(d, f)))
                for d, _, files in os.walk(folder) for f in files)


@pytest.mark.slow
def test_second_trainer_on_a_model_dir_fails_at_once_and_a_kill_frees_it(
    data_dir, tmp_path):
  """Two tools/train on one --model_dir, HDF5's own file locking off (as on
  NFS): the second fails at once in one line naming the first's pid and
  changes nothing; once the first is SIGKILLed, a rerun trains to the end.
  Before, both ran and the survivor left a finished-looking mix of the
  two runs."""
  model_dir = str(tmp_path / 'model')
  args = _tool_args(data_dir, model_dir)
  env = _env(HDF5_USE_FILE_LOCKING='FALSE')
  spy = tmp_path / 'hanging_trainer.py'
  spy.write_text(_HANGING_TRAINER)
  started = tmp_path / 'started'
  first = subprocess.Popen(
      [sys.executable, str(spy), REPO_ROOT, str(started), *args],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO_ROOT,
      env=env)
  try:
    deadline = time.time() + 300
    while not started.exists() and first.poll() is None and (
        time.time() < deadline):
      time.sleep(0.2)
    assert started.exists(), 'the first trainer did not start training'
    before = _listing(model_dir)
    with open(os.path.join(model_dir, 'config.json')) as f:
      config_json = f.read()

    second = _train(*args, env=env)
    assert_one_line_error(second, f'another run (pid {first.pid}) is writing '
                          f'--model_dir {model_dir}')
    assert first.poll() is None  # the holder runs on, untouched
    assert _listing(model_dir) == before
    with open(os.path.join(model_dir, 'config.json')) as f:
      assert f.read() == config_json
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  rerun = _train(*args, env=env)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert _history_epochs(model_dir) == ['0', '1']
  assert not os.path.exists(model_dir + training.MODEL_DIR_LOCK_SUFFIX)


# --- the disk cache of a run (--cache_dir, --cache_limit) -------------------


def _read_only_folder(tmp_path):
  """A folder no file can be created in, for this user: permission bits for
  a plain user; root passes those, so a read-only tmpfs, or else /sys
  (read-only to root too)."""
  folder = tmp_path / 'read_only'
  folder.mkdir()
  if os.geteuid() != 0:
    folder.chmod(0o555)
  elif subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=64k', 'tmpfs',
                       str(folder)], capture_output=True).returncode:
    folder = Path('/sys')
  with pytest.raises(OSError):  # the case really is one
    (folder / 'probe').write_bytes(b'')
  return folder


def _unmount(folder):
  # Lazily: a failed pipeline may still hold a file there.
  subprocess.run(['umount', '-l', str(folder)], capture_output=True,
                 check=False)


@pytest.mark.parametrize('case', ['read_only', 'under_a_file'])
def test_cache_dir_that_cannot_be_written_fails_first_in_one_line(
    data_dir, tmp_path, case):
  """Issue 32: before, a raw OSError once the first pipeline was built,
  after config.json was written. Now one line before anything is written."""
  if case == 'read_only':
    parent = _read_only_folder(tmp_path)
  else:
    parent = tmp_path / 'a_file'
    parent.write_text('')
  cache_dir = str(parent / 'cache')
  model_dir = tmp_path / 'model'
  try:
    with pytest.raises(cache_lib.CacheError) as caught:
      training.train_and_evaluate(_config(data_dir, cache_dir=cache_dir),
                                  str(model_dir))
  finally:
    if case == 'read_only':
      _unmount(parent)
  message = str(caught.value)
  assert '\n' not in message
  assert message.startswith(f'--cache_dir {cache_dir} cannot be written (')
  assert message.endswith('pass a local folder you can write, or no '
                          '--cache_dir')
  assert not model_dir.exists()  # nothing written
  assert not os.path.exists(str(model_dir) + training.MODEL_DIR_LOCK_SUFFIX)


def test_cache_limit_default_is_the_reader_s():
  assert training.TrainConfig().cache_limit * 2**20 == (
      cache_lib.DEFAULT_CACHE_LIMIT_BYTES)


def test_full_disk_names_the_cache_folder_tf_data_was_writing(tmp_path):
  """The message tf.data gives (TF 2.21, seen on a full tmpfs) names the
  file; the cache folder it lies in is what `folder_named_by` finds."""
  run = str(tmp_path / 'cache' / 'xray_tfdata-train-16x16x1-abc' / 'run-1')
  cache_lib._writing.add(run)  # pylint: disable=protected-access
  try:
    error = tf.errors.ResourceExhaustedError(
        None, None, f'{run}/cache_0.data-00000-of-00001.tempstate123; No '
        'space left on device [Op:IteratorGetNext]')
    try:
      with atomic.naming(str(tmp_path / 'model')):
        raise error
    except atomic.NoSpaceError as named:
      assert cache_lib.folder_named_by(named) == run
    assert cache_lib.folder_named_by(
        OSError(errno.ENOSPC, 'No space left on device')) is None
  finally:
    cache_lib._writing.discard(run)  # pylint: disable=protected-access


@pytest.mark.slow
def test_full_disk_while_writing_the_cache_names_the_cache_folder(tmp_path):
  """Issue 32: --cache_dir on a 64 KB tmpfs, a training split of about
  100 KB decoded. Before, the error named model_dir, which had room."""
  cache_dir = tmp_path / 'tmpfs'
  cache_dir.mkdir()
  made = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs',
                         str(cache_dir)], capture_output=True, check=False)
  if made.returncode:
    pytest.skip('cannot mount a tmpfs here; '
                'test_full_disk_names_the_cache_folder_tf_data_was_writing '
                'covers the naming')
  try:
    data = str(tmp_path / 'data')
    os.makedirs(data)
    write_dataset(data, {'train': (200, 200), 'val': (4, 4), 'test': (4, 4)},
                  num_shards=1, size=(SIZE, SIZE), learnable=True)
    model_dir = str(tmp_path / 'model')
    with pytest.raises(atomic.NoSpaceError) as caught:
      training.train_and_evaluate(
          _config(data, cache_dir=str(cache_dir), cache_limit=0.),
          model_dir)
    assert caught.value.filename.startswith(
        os.path.join(str(cache_dir), 'xray_tfdata-train-'))
    assert f'writing {caught.value.filename};' in str(caught.value)
    assert os.path.exists(os.path.join(model_dir, 'config.json'))  # kept
    # Nothing a later run trusts: no complete cache.
    assert not [f for _, _, files in os.walk(cache_dir) for f in files
                if f == 'complete.json']
  finally:
    _unmount(cache_dir)


def test_cache_limit_is_a_flag_of_tools_train():
  """--cache_limit (MiB) is declared once in config.py like the others: the
  tool parses it, a resumed run may change it, and it is bounded."""
  flag_values = flags.FlagValues()
  config_lib.define_flags(flag_values)
  flag_values(['train', '--data_dir=d', '--cache_limit=0.5'])
  assert config_lib.from_flags(flag_values).cache_limit == 0.5
  assert 'cache_limit' in config_lib.RESUMABLE_CHANGES
  with pytest.raises(flags.IllegalFlagValueError):
    flag_values(['train', '--cache_limit=-1'])


@pytest.mark.slow
def test_sigterm_after_an_epoch_s_line_keeps_it_and_every_split_is_cached(
    data_dir, tmp_path, monkeypatch, capsys):
  """Issue 32, three cases in one run stopped and resumed:
  - --verbose=2 printed an epoch's line before the resume state saved that
    epoch, so SIGTERM right after the line (a scheduler's preemption) lost
    it and the rerun trained it again: each epoch whose line is out is kept
    (a real SIGTERM, to this process, through the tools' handler);
  - --cache_limit sends a small split to --cache_dir;
  - a run with --cache_dir said "no cache_dir was given" for its other
    pipelines (the evaluation's splits; the augmentation preview): now each
    split reads one disk cache, which the rerun and its evaluation reuse
    (train, val) or write once (test)."""
  model_dir, cache_dir = str(tmp_path / 'model'), str(tmp_path / 'cache')
  config = _config(data_dir, verbose=2, cache_dir=cache_dir, cache_limit=0.)
  line = callbacks.EpochSummary.on_epoch_end

  def then_sigterm(self, epoch, logs=None):
    line(self, epoch, logs)
    os.kill(os.getpid(), signal.SIGTERM)  # as soon as the line is out

  monkeypatch.setattr(callbacks.EpochSummary, 'on_epoch_end', then_sigterm)
  with pytest.raises(SystemExit) as stopped:
    with runtime.tool_errors():
      training.train_and_evaluate(config, model_dir)
  assert stopped.value.code == runtime.INTERRUPTED_EXIT_CODE
  out = capsys.readouterr().out
  assert [l for l in out.splitlines() if l.startswith('epoch ')] == [
      l for l in out.splitlines() if l.startswith('epoch 1:')]
  state = resume.ResumeState(os.path.join(model_dir, 'backup'))
  assert state.epoch() == 1  # before: 0, epoch 1 trained again

  monkeypatch.setattr(callbacks.EpochSummary, 'on_epoch_end', line)
  training.train_and_evaluate(config, model_dir)
  rerun = capsys.readouterr().out
  assert f'resuming {model_dir} after epoch 1' in rerun
  assert _history_epochs(model_dir) == ['0', '1']
  out += rerun
  assert 'no cache_dir was given' not in out
  lines = [l for l in out.splitlines() if l.startswith('cache of split')]
  assert all(': disk (' in l for l in lines), lines
  said = sorted((l.split("'")[1], 'writing it' in l) for l in lines)
  # The stopped run wrote train and val; the rerun read them (its
  # evaluation too: the same line, said once) and wrote test.
  assert said == [('test', True), ('train', False), ('train', True),
                  ('val', False), ('val', True)], lines
  folders = sorted(os.listdir(cache_dir))
  assert [f.split('-')[1] for f in folders] == ['test', 'train', 'val']
  for folder in folders:
    runs = [r for r in os.listdir(os.path.join(cache_dir, folder))
            if r.startswith('run-')]
    assert len(runs) == 1, (folder, runs)
    assert os.path.exists(os.path.join(cache_dir, folder, runs[0],
                                       'complete.json'))
