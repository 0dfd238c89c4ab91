"""Resume state (xray_tfdata.resume): what a resumed run restores."""

import os
import signal
import sys

import keras
import numpy as np
import pytest

from xray_tfdata import resume

import relabel

PATIENCE = 3
# val_loss per epoch: best at epoch 0, then two epochs without improvement
# (the run is killed after epoch 2), then a third: patience runs out.
VAL_LOSSES = [0.5, 0.7, 0.8, 0.9, 0.95]
KILLED_AFTER = 2


def _model():
  net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  net.compile(keras.optimizers.Adam(1e-3), 'mse')
  net.optimizer.build(net.trainable_variables)
  return net


def _callbacks(net, tmp_path):
  """The run's early stopping, best checkpoint and resume callback, as
  callbacks.make_callbacks wires them (resume state last)."""
  early_stopping = keras.callbacks.EarlyStopping(monitor='val_loss',
                                                 patience=PATIENCE)
  os.makedirs(tmp_path / 'checkpoints', exist_ok=True)
  checkpoint = keras.callbacks.ModelCheckpoint(
      str(tmp_path / 'checkpoints' / 'new-best.weights.h5'),
      monitor='val_loss', save_best_only=True, save_weights_only=True)
  state = resume.ResumeState(str(tmp_path / 'backup'))
  resumer = state.callback(net, early_stopping, checkpoint,
                           str(tmp_path / 'checkpoints' / 'best.weights.h5'))
  made = [early_stopping, checkpoint, resumer]
  for callback in made:
    callback.set_model(net)
  return made


def _run(made, epochs, resumer_saves=True):
  """fit's callback calls for `epochs`: train begin, then epoch ends with
  VAL_LOSSES; with resumer_saves False the last epoch's end never reaches
  the resume callback (killed while the others ran)."""
  for callback in made:
    callback.on_train_begin()
  for epoch in epochs:
    logs = {'loss': 0.1, 'val_loss': VAL_LOSSES[epoch]}
    for callback in made[:-1]:
      callback.on_epoch_end(epoch, logs)
    if resumer_saves or epoch != epochs[-1]:
      made[-1].on_epoch_end(epoch, logs)
    if made[0].model.stop_training:
      return epoch
  return None


def _snapshot(early_stopping, checkpoint):
  return {'wait': early_stopping.wait, 'best': early_stopping.best,
          'best_epoch': early_stopping.best_epoch,
          'checkpoint_best': checkpoint.best}


def test_a_resumed_run_restores_patience_and_best_val_loss(tmp_path):
  """A run killed after epoch 2 (its state saved), rerun with fresh
  callbacks: EarlyStopping's wait, best and best_epoch and the checkpoint's
  best are those the killed run held after epoch 2 (wait 2, not 0; best
  0.5, not inf), and the resumed run stops after the same epoch as an
  uninterrupted one (the reference: the same callbacks never killed)."""
  net = _model()
  killed = _callbacks(net, tmp_path / 'killed')
  assert _run(killed, range(KILLED_AFTER + 1)) is None
  saved = _snapshot(*killed[:2])
  assert saved == {'wait': 2, 'best': 0.5, 'best_epoch': 0,
                   'checkpoint_best': 0.5}

  net.stop_training = False
  resumed = _callbacks(net, tmp_path / 'killed')  # the rerun's own objects
  for callback in resumed[:2]:
    callback.on_train_begin()  # Keras resets them here
  assert resumed[0].wait == 0 and resumed[0].best != saved['best']
  resumed[-1].on_train_begin()  # last: restores them
  assert _snapshot(*resumed[:2]) == saved

  # Go on from epoch 3, as fit(initial_epoch=3) does.
  for callback in resumed:
    callback.on_train_begin = lambda logs=None: None  # already begun
  stopped = _run(resumed, range(KILLED_AFTER + 1, len(VAL_LOSSES)))
  net.stop_training = False
  reference = _callbacks(_model(), tmp_path / 'reference')
  assert stopped == _run(reference, range(len(VAL_LOSSES))) == PATIENCE


def test_the_state_of_the_last_saved_epoch_wins_over_a_killed_one(tmp_path):
  """Killed during epoch 3's end, after EarlyStopping counted it but before
  its state was saved: the rerun restores epoch 2's wait, not epoch 3's."""
  net = _model()
  killed = _callbacks(net, tmp_path)
  assert _run(killed, range(KILLED_AFTER + 2),
              resumer_saves=False) == KILLED_AFTER + 1
  assert killed[0].wait == 3
  resumed = _callbacks(net, tmp_path)
  for callback in resumed:
    callback.on_train_begin()
  assert resume.ResumeState(str(tmp_path / 'backup')).epoch() == 3
  assert resumed[0].wait == 2 and resumed[0].best == pytest.approx(0.5)
  assert resumed[1].best == pytest.approx(0.5)


# --- A run killed with SIGKILL resumes to the uninterrupted run's weights --
#
# Each run is a process of its own (`_RUN`): the killed one sends itself
# SIGKILL right after the resume state of its second epoch is on disk (no
# exception, no cleanup runs), a rerun of the same command resumes it, and
# an uninterrupted run is the reference. Every run writes its weights and
# optimizer variables after each epoch (`epoch<N>.npz`).
#
# One step per epoch, the whole training split in one batch: the resumed
# run's input pipeline restarts its shuffle sequence, so its third epoch
# sees the 24 images in another order than the reference's third epoch,
# but the same batch; what differs is only the summation order (float32,
# op determinism on). No augmentation, no dropout: nothing else is drawn.

_RUN = r'''
import os, signal, sys
import numpy as np
import tensorflow as tf
tf.config.experimental.enable_op_determinism()
sys.path.insert(0, sys.argv[5])
from conftest import tiny_run_config
from xray_tfdata import resume, training

data_dir, model_dir, out_dir, kill_after = sys.argv[1:5]
save, begin = resume.ResumeCallback.on_epoch_end, resume.ResumeCallback.on_train_begin

def state(net):
  return [np.asarray(v) for v in net.weights + net.optimizer.variables]

def on_epoch_end(self, epoch, logs=None):
  save(self, epoch, logs)
  np.savez(os.path.join(out_dir, f'epoch{epoch}.npz'), *state(self.net))
  if epoch == int(kill_after):
    os.kill(os.getpid(), signal.SIGKILL)  # the state of this epoch is saved

def on_train_begin(self, logs=None):
  begin(self, logs)
  np.savez(os.path.join(out_dir, 'restored.npz'), *state(self.net))

resume.ResumeCallback.on_epoch_end = on_epoch_end
resume.ResumeCallback.on_train_begin = on_train_begin
training.train_and_evaluate(tiny_run_config(
    data_dir, batch_size=24, epochs=3, augmentation='none', dropout=0.0,
    frozen_blocks=0, bootstrap_resamples=100), model_dir)
'''
KILL_AFTER_EPOCH = 1  # the second epoch (0-based)


def _load(path):
  with np.load(path) as saved:
    return [saved[f'arr_{i}'] for i in range(len(saved.files))]


@pytest.mark.slow  # three training processes of three one-step epochs
def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_weights(
    tiny_records, tmp_path):
  """After kill -9 and a rerun, the third epoch's weights equal the
  uninterrupted run's (within float32 summation order), which needs Adam's
  moments back: a fresh optimizer's step moves each weight by about the
  learning rate. The rerun restores the killed run's state bit for bit
  (weights, iteration count, Adam's moments) and Keras no longer warns
  that it skipped the optimizer's variables."""
  from processes import run_at_once  # pylint: disable=g-import-not-at-top
  from conftest import REPO_ROOT  # pylint: disable=g-import-not-at-top
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  env = {**os.environ, 'PYTHONPATH': REPO_ROOT}
  dirs = {name: tmp_path / name for name in ('killed', 'resumed', 'reference')}
  for d in dirs.values():
    d.mkdir()

  def command(name, model_dir, kill_after):
    return ([sys.executable, '-c', _RUN, tiny_records, str(model_dir),
             str(dirs[name]), str(kill_after), tests_dir], {'env': env})

  first = run_at_once({
      'killed': command('killed', tmp_path / 'run', KILL_AFTER_EPOCH),
      'reference': command('reference', tmp_path / 'reference_run', -1)})
  assert first['killed'].returncode == -signal.SIGKILL, first['killed'].stderr
  assert first['reference'].returncode == 0, first['reference'].stderr
  assert not os.path.exists(tmp_path / 'run' / resume.RESULTS_JSON)
  assert resume.ResumeState(str(tmp_path / 'run' / 'backup')).epoch() == 2

  rerun = run_at_once({'resumed': command('resumed', tmp_path / 'run', -1)})
  result = rerun['resumed']
  assert result.returncode == 0, result.stderr
  assert 'resuming' in result.stdout
  assert 'Skipping variable loading for optimizer' not in result.stderr
  assert sorted(os.listdir(dirs['resumed'])) == ['epoch2.npz', 'restored.npz']

  killed = _load(dirs['killed'] / f'epoch{KILL_AFTER_EPOCH}.npz')
  restored = _load(dirs['resumed'] / 'restored.npz')
  assert len(restored) == len(killed)
  for got, want in zip(restored, killed):
    np.testing.assert_array_equal(got, want)
  reference = _load(dirs['reference'] / 'epoch2.npz')
  resumed = _load(dirs['resumed'] / 'epoch2.npz')
  before = _load(dirs['reference'] / 'epoch1.npz')
  # The third epoch moves the first conv kernel by about the learning rate
  # (1e-4): a step with other moments would move it by another such
  # amount. The runs agree to float32 rounding of a reordered sum (measured
  # on an AVX512_BF16 host: at most 3.6e-7 on a trainable weight, 1.9e-5
  # on a batch-norm variance of 32.5).
  assert np.abs(reference[0] - before[0]).max() > 5e-5
  assert len(resumed) == len(reference)
  for got, want in zip(resumed, reference):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope='module')
def relabelled(tmp_path_factory):
  """(data_dir, {case: DatasetInfo}): relabel's source converted into one
  data_dir as it is ('original') and then relabelled each way; each info
  read just after its conversion."""
  from xray_tfdata import dataset_info  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.mktemp('relabel')
  root = str(base / 'data')
  infos = {}
  for case, rows in [('original', relabel.ROWS), *relabel.CASES.items()]:
    relabel.convert(str(base / 'src'), root, rows)
    infos[case] = dataset_info.load_info(root)
  return root, infos


@pytest.mark.parametrize('case', sorted(relabel.CASES))
def test_a_run_on_a_relabelled_dataset_is_not_resumed(relabelled, tmp_path,
                                                      case):
  """Issue 32: a killed run's data_dir converted again with other labels
  (shard names, sizes and counts kept) refuses the resume in one line and
  leaves config.json as it was."""
  from xray_tfdata import config as config_lib  # pylint: disable=g-import-not-at-top
  root, infos = relabelled
  model_dir = str(tmp_path / 'model')
  config = config_lib.TrainConfig(data_dir=root)
  assert not resume.prepare_model_dir(model_dir, config,
                                      dataset=infos['original'])
  config_json = os.path.join(model_dir, resume.CONFIG_JSON)
  with open(config_json) as f:
    recorded = f.read()
  with pytest.raises(config_lib.TrainingError) as caught:
    resume.prepare_model_dir(model_dir, config, dataset=infos[case])
  message = str(caught.value)
  assert '\n' not in message
  assert f'{model_dir} holds an unfinished run on another dataset' in message
  assert 'its records hold other labels or images (content hash ' in message
  assert '--overwrite' in message
  with open(config_json) as f:
    assert f.read() == recorded  # nothing lost
  # The dataset it started on resumes.
  assert resume.prepare_model_dir(model_dir, config,
                                  dataset=infos['original'])
