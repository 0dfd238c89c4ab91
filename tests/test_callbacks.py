"""The callbacks a run gets (xray_tfdata.callbacks): early stopping as the
reference configures it, driven through the callbacks the trainer builds."""

import os

from absl import flags
import keras
import pytest

from xray_tfdata import callbacks
from xray_tfdata import config as config_lib
from xray_tfdata import resume
from xray_tfdata import runtime


def _config(args):
  """The TrainConfig that tools/train's flags give for args."""
  flag_values = flags.FlagValues()
  config_lib.define_flags(flag_values)
  flag_values(['train', '--data_dir=unused'] + runtime.expand_flagfiles(args))
  return config_lib.from_flags(flag_values)


def _tiny_model():
  net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  net.compile('adam', 'mse')
  return net


def _stop_epoch(early_stopping, net, val_losses):
  """Feeds early_stopping one epoch end per val_loss (training loss falling
  all along) and returns the 0-based epoch after which it stopped fit, or
  None."""
  early_stopping.set_model(net)
  net.stop_training = False
  early_stopping.on_train_begin()
  for epoch, val_loss in enumerate(val_losses):
    early_stopping.on_epoch_end(epoch, {'loss': 1.0 / (epoch + 1),
                                        'val_loss': val_loss})
    if net.stop_training:
      return epoch
  return None


@pytest.mark.parametrize('patience', [3, 7])
def test_the_configured_patience_reaches_early_stopping(tmp_path, patience):
  """--early_stopping_patience, through the flags and make_callbacks, is
  the EarlyStopping the run gets: it monitors val_loss (not the training
  loss, which falls every epoch here) and stops fit exactly `patience`
  epochs after the best one, by the definition of patience. Neither value
  is the default (10), so a setting dropped on its way shows."""
  config = _config([f'--early_stopping_patience={patience}'])
  assert config.early_stopping_patience == patience
  net = _tiny_model()
  state = resume.ResumeState(str(tmp_path / 'backup'))
  made = callbacks.make_callbacks(net, config, str(tmp_path), state, 8)
  stoppers = [c for c in made if isinstance(c, keras.callbacks.EarlyStopping)]
  assert len(stoppers) == 1
  early_stopping = stoppers[0]
  assert early_stopping.patience == patience
  assert early_stopping.monitor == 'val_loss'

  # Best at epoch 1, then worse for ever: stops after epoch 1 + patience.
  val_losses = [0.9, 0.5] + [0.6 + 0.01 * i for i in range(20)]
  assert _stop_epoch(early_stopping, net, val_losses) == 1 + patience
  # Improving by any amount resets the count (min_delta 0, Keras' default).
  val_losses = [0.9] + [0.9 - 1e-4 * i for i in range(1, 20)]
  assert _stop_epoch(early_stopping, net, val_losses) is None


def test_best_weights_are_kept_by_val_loss(tmp_path):
  """The reference restores the best val_loss epoch
  (EarlyStopping(restore_best_weights=True)); here the checkpoint keeps
  that epoch's weights, which train_and_evaluate loads before evaluating
  and exporting (tests/test_training.py checks the exported outputs)."""
  config = _config([])
  net = _tiny_model()
  state = resume.ResumeState(str(tmp_path / 'backup'))
  made = callbacks.make_callbacks(net, config, str(tmp_path), state, 8)
  checkpoints = [c for c in made
                 if isinstance(c, keras.callbacks.ModelCheckpoint)]
  assert len(checkpoints) == 1
  checkpoint = checkpoints[0]
  assert checkpoint.monitor == 'val_loss'
  assert checkpoint.save_best_only and checkpoint.save_weights_only
  assert checkpoint.filepath == os.path.join(str(tmp_path),
                                             callbacks.NEW_BEST_WEIGHTS)
  # Lower is better: a higher val_loss saves nothing.
  checkpoint.set_model(net)
  checkpoint.on_epoch_end(0, {'val_loss': 0.5})
  assert os.path.exists(checkpoint.filepath)
  os.remove(checkpoint.filepath)
  checkpoint.on_epoch_end(1, {'val_loss': 0.7})
  assert not os.path.exists(checkpoint.filepath)
  checkpoint.on_epoch_end(2, {'val_loss': 0.4})
  assert os.path.exists(checkpoint.filepath)
  # The resume state comes last (it restores the others after their
  # on_train_begin) and holds these two.
  assert isinstance(made[-1], resume.ResumeCallback)
  assert made[-1].checkpoint is checkpoint
  assert made[-1].early_stopping in made


def test_the_learning_rate_is_divided_by_ten_on_a_val_loss_plateau(tmp_path):
  """--lr_plateau_patience (CheXNet's schedule, configs/chexnet_nih.flags):
  after `patience` epochs without a better val_loss the optimizer's
  learning rate is a tenth of what it was; 0 (the default) adds nothing."""
  state = resume.ResumeState(str(tmp_path / 'backup'))
  net = _tiny_model()
  made = callbacks.make_callbacks(net, _config([]), str(tmp_path), state, 8)
  assert not [c for c in made
              if isinstance(c, keras.callbacks.ReduceLROnPlateau)]
  config = _config(['--flagfile=configs/chexnet_nih.flags'])
  assert config.lr_plateau_patience == 1 and config.learning_rate == 1e-3
  net = _tiny_model()
  net.optimizer.learning_rate = config.learning_rate
  made = callbacks.make_callbacks(net, config, str(tmp_path), state, 8)
  plateau, = [c for c in made
              if isinstance(c, keras.callbacks.ReduceLROnPlateau)]
  plateau.set_model(net)
  plateau.on_train_begin()
  rates = []
  for epoch, val_loss in enumerate([0.9, 0.5, 0.6, 0.4, 0.45, 0.5]):
    plateau.on_epoch_end(epoch, {'val_loss': val_loss})
    rates.append(float(net.optimizer.learning_rate))
  # Worse at epochs 2, 4 and 5: a tenth after each (patience 1).
  assert rates == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-6])
