"""Tests for xray_tfdata.config and checks: the settings declared once, their
flags, their checks, and the one base class of the package's errors."""

import dataclasses
import importlib
import os
import pkgutil
import subprocess
import sys

from absl import flags
import pytest

import xray_tfdata
from xray_tfdata import atomic
from xray_tfdata import checks
from xray_tfdata import config as config_lib
from xray_tfdata import errors
from xray_tfdata import reference as reference_lib
from xray_tfdata import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_TOOL = os.path.join(REPO, 'tools', 'train')


def _parse(args):
  """The TrainConfig that tools/train's flags give for args."""
  flag_values = flags.FlagValues()
  config_lib.define_flags(flag_values)
  flag_values(['train'] + runtime.expand_flagfiles(args))
  return config_lib.from_flags(flag_values)


def test_flags_round_trip_through_nested_flagfiles(tmp_path):
  config = config_lib.TrainConfig(
      data_dir=str(tmp_path / 'data'), image_size=64, batch_size=7,
      learning_rate=3e-4, weights='none', backbone='mini_vgg',
      frozen_blocks=2, dense_units=(32, 8, 4), dropout=0.25,
      augmentation='none', rotation_range=12.5, width_shift_range=0.05,
      zoom_range=0.1, horizontal_flip=False, class_weights=False,
      policy='mixed_bfloat16', jit_compile=True, strategy='one_device',
      data_service='localhost:5050', data_service_timeout=30,
      steps_per_epoch=3, bootstrap_resamples=500, seed=9, verbose=2,
      demo_images=100)
  lines = config_lib.to_flags(config)
  assert len(lines) == len(dataclasses.fields(config))
  # A base with everything but the last setting, and a variant that nests
  # it (relative to its own folder) and adds it: later flags win.
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs' / 'base.flags').write_text(
      '# base\n' + '\n'.join(lines[:-1]) + '\n--demo_images=1\n')
  variant = tmp_path / 'configs' / 'variant.flags'
  variant.write_text('--flagfile=base.flags\n' + lines[-1] + '\n')
  assert _parse([f'--flagfile={variant}']) == config
  assert _parse(lines) == config


def test_shipped_flagfiles_give_valid_configs(tmp_path):
  data_dir = f'--data_dir={tmp_path}'
  reference = _parse(['--flagfile=configs/kermany_vgg16.flags', data_dir])
  reference.validate()
  # The flagfile is the reference experiment, which the defaults are.
  assert reference == config_lib.TrainConfig(data_dir=str(tmp_path))
  assert reference.augmentation_kwargs() == reference_lib.AUGMENTATION
  demo = _parse(['--flagfile=configs/demo.flags', data_dir])
  demo.validate()
  assert (demo.backbone, demo.image_size) == ('mini_vgg', 64)
  # The field's recipes (issue 31), with the settings their sources give.
  chexnet = _parse(['--flagfile=configs/chexnet_nih.flags', data_dir])
  chexnet.validate()
  assert (chexnet.backbone, chexnet.image_size, chexnet.batch_size,
          chexnet.learning_rate, chexnet.lr_plateau_patience) == (
              'densenet121', 224, 16, 1e-3, 1)
  chexpert = _parse(['--flagfile=configs/chexpert_densenet121.flags',
                     data_dir])
  chexpert.validate()
  assert chexpert.labels == ('Atelectasis', 'Cardiomegaly', 'Consolidation',
                             'Edema', 'Pleural Effusion')
  assert (chexpert.label_policy, chexpert.views, chexpert.image_size) == (
      'u_ones', ('PA', 'AP'), 320)
  scratch = _parse(['--flagfile=configs/nih_synthetic_scratch.flags'])
  scratch.validate()
  assert (scratch.backbone, scratch.weights, scratch.label_weights) == (
      'mini_vgg', 'none', 'none')


@pytest.mark.parametrize('overrides, flag', [
    ({'zoom_range': 1.0}, 'zoom_range'),
    ({'zoom_range': -0.1}, 'zoom_range'),
    ({'rotation_range': -1.0}, 'rotation_range'),
    ({'width_shift_range': float('nan')}, 'width_shift_range'),
    ({'backbone': 'mini_vgg', 'weights': 'none', 'frozen_blocks': 5},
     'frozen_blocks'),
    ({'frozen_blocks': 6}, 'frozen_blocks'),
    ({'backbone': 'mini_vgg', 'frozen_blocks': 0}, 'weights'),
    ({'backbone': 'resnet'}, 'backbone'),
    ({'policy': 'float16'}, 'policy'),
    ({'head': 'flatten'}, 'head'),
    ({'label_weights': 'balanced'}, 'label_weights'),
    ({'pos_weight_cap': 0.5}, 'pos_weight_cap'),
    ({'lr_plateau_patience': -1}, 'lr_plateau_patience'),
    ({'strategy': 'tpu'}, 'strategy'),
    ({'augmentation': 'albumentations'}, 'augmentation'),
    ({'dense_units': (512, 0)}, 'dense_units'),
    ({'dropout': 1.0}, 'dropout'),
    ({'batch_size': 0}, 'batch_size'),
    ({'epochs': 0}, 'epochs'),
    ({'learning_rate': 0.0}, 'learning_rate'),
    ({'image_size': 16}, 'image_size'),
    ({'image_size': 8, 'backbone': 'mini_vgg', 'weights': 'none'},
     'image_size'),
    ({'steps_per_epoch': -1}, 'steps_per_epoch'),
    ({'verbose': 3}, 'verbose'),
    ({'bootstrap_resamples': 10}, 'bootstrap_resamples'),
    ({'weights': '/nowhere/vgg16.h5'}, 'weights'),
    ({'data_service': 'localhost'}, 'data_service'),
    ({'data_service': 'localhost:5050', 'data_service_timeout': 0},
     'data_service_timeout'),
    ({'data_dir': ''}, 'data_dir'),
    # keras.utils.set_random_seed seeds NumPy: 0..2**32 - 1.
    ({'seed': -1}, 'seed'),
    ({'seed': 2**32}, 'seed'),
])
def test_every_invalid_setting_fails_validate_in_one_line(
    tmp_path, overrides, flag):
  settings = dict(data_dir=str(tmp_path))
  settings.update(overrides)
  with pytest.raises(errors.XrayError) as caught:
    config_lib.TrainConfig(**settings).validate()
  message = str(caught.value)
  assert '\n' not in message
  assert flag in message
  assert f'--{flag}' in message or 'pass --' in message  # the fix


def test_seed_bounds_are_the_ones_keras_takes(tmp_path):
  """The bounds against Keras itself: the largest seed it takes passes
  validate, the next one fails in both."""
  import keras  # pylint: disable=g-import-not-at-top
  config_lib.TrainConfig(data_dir=str(tmp_path), seed=checks.MAX_SEED).validate()
  keras.utils.set_random_seed(checks.MAX_SEED)
  for seed in (-1, checks.MAX_SEED + 1):
    with pytest.raises(ValueError):
      keras.utils.set_random_seed(seed)
  keras.utils.set_random_seed(0)


def test_layers_and_model_run_the_same_checks():
  augment = importlib.import_module('xray_tfdata.augment')
  model = importlib.import_module('xray_tfdata.model')
  with pytest.raises(checks.SettingError) as from_config:
    config_lib.TrainConfig(data_dir='x', zoom_range=1.0).validate()
  with pytest.raises(checks.SettingError) as from_layer:
    augment.RandomAffine(zoom_range=1.0)
  assert str(from_layer.value) == str(from_config.value)
  with pytest.raises(checks.SettingError) as from_config:
    config_lib.TrainConfig(data_dir='x', backbone='mini_vgg', weights='none',
                           frozen_blocks=5).validate()
  with pytest.raises(checks.SettingError) as from_model:
    model.build_model(32, backbone='mini_vgg', frozen_blocks=5)
  assert str(from_model.value) == str(from_config.value)


def test_check_against_dataset():
  config = config_lib.TrainConfig(data_dir='x', batch_size=62)
  checks.check_against_dataset(config, {'train': 62, 'val': 10})
  with pytest.raises(checks.SettingError, match='--batch_size=40 or less'):
    checks.check_against_dataset(config, {'train': 40, 'val': 10})


def test_settings_and_checks_import_no_tensorflow_or_keras():
  code = ('import sys; import xray_tfdata.config, xray_tfdata.checks; '
          'heavy = {"tensorflow", "keras"} & set(sys.modules); '
          'sys.exit(sorted(heavy) or 0)')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=REPO,
                 env=dict(os.environ, PYTHONPATH=REPO))


def _train_tool(*args):
  return subprocess.run([sys.executable, TRAIN_TOOL, *args],
                        capture_output=True, text=True, cwd=REPO,
                        env=dict(os.environ, PYTHONPATH=REPO), timeout=60)


def test_train_tool_refuses_a_bad_setting_before_writing(tmp_path):
  model_dir = tmp_path / 'model'
  result = _train_tool('--zoom_range=1', f'--model_dir={model_dir}',
                       f'--data_dir={tmp_path / "data"}')
  assert result.returncode != 0
  assert result.stderr.count('\n') == 1, result.stderr
  assert result.stderr.startswith('error: zoom_range')
  assert not model_dir.exists()


def test_train_tool_help_lists_flags_by_group():
  result = _train_tool('--help')  # absl exits 1 after the help
  lines = result.stdout.splitlines()
  headings = [f'{group}:' for group in config_lib.GROUPS]
  positions = [lines.index(heading) for heading in headings]
  assert positions == sorted(positions)
  zoom = next(i for i, line in enumerate(lines) if '--zoom_range' in line)
  assert positions[2] < zoom < positions[3]  # under augmentation
  assert '95% interval' in result.stdout


def test_every_package_error_derives_from_xray_error():
  found = []
  # The library's modules; the tools (cli/) define flags, not errors.
  for info in pkgutil.iter_modules(xray_tfdata.__path__, 'xray_tfdata.'):
    if info.ispkg or info.name == 'xray_tfdata.augment_keras_cv':
      continue  # keras-cv: TensorFlow only, and it defines no error
    module = importlib.import_module(info.name)
    for value in vars(module).values():
      if (isinstance(value, type) and issubclass(value, Exception) and
          value.__module__ == module.__name__):
        found.append(value)
  # NoSpaceError is an OSError (ENOSPC), which no ValueError can also be;
  # runtime.tool_errors names it beside XrayError.
  assert atomic.NoSpaceError in found
  assert len(found) >= 13
  for error in found:
    if error is not atomic.NoSpaceError:
      assert issubclass(error, errors.XrayError), error


def test_defaults_are_the_reference_settings():
  """What tools/train builds without flags is the reference model and run
  (tests/test_model.py checks build_model's own defaults): VGG16 with
  ImageNet weights, blocks 1-4 frozen, Dense 512 and 64 with dropout 0.4,
  Adam at 1e-4, balanced class weights, early stopping after 10 epochs
  without a better val_loss."""
  config = config_lib.TrainConfig(data_dir='unused')
  assert (config.backbone, config.weights, config.frozen_blocks) == (
      'vgg16', 'imagenet', 4)
  assert tuple(config.dense_units) == (512, 64)
  assert config.dropout == 0.4
  assert config.learning_rate == 1e-4
  assert config.class_weights is True
  assert config.early_stopping_patience == 10
