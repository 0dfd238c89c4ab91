"""The device side on the JAX backend, in a process where TensorFlow cannot
be imported (as on a JAX GPU host): the ImageDataGenerator parity tests, the
model, and the device epoch benchmark."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

_NO_TENSORFLOW = os.path.join(REPO_ROOT, 'tests', 'no_tensorflow.py')


def _jax_env():
  return dict(os.environ, KERAS_BACKEND='jax', JAX_PLATFORMS='cpu')


_TIMEOUT_S = 600

_TF_DATA_TO_JAX = r'''
import os, sys
sys.path.insert(0, os.path.join(sys.argv[1], 'tests'))
import keras
import records
from xray_tfdata import model, pipeline

assert keras.backend.backend() == 'jax'
records.write_dataset(sys.argv[2], size=(32, 32), learnable=True)
builder = pipeline.DatasetBuilder(sys.argv[2])
train = builder.as_dataset('train', batch_size=4, training=True)
val = builder.as_dataset('val', batch_size=4)
net = model.build_model(32, dense_units=(8, 4), augmentation='fused',
                        policy='float32')
model.compile_model(net)
history = net.fit(train, steps_per_epoch=builder.steps_per_epoch('train', 4),
                  epochs=2, validation_data=val,
                  class_weight=builder.info.class_weights(), verbose=0)
print('epochs', len(history.history['val_loss']))
print('predictions', net.predict(val, verbose=0).shape)
'''


# The backbones of issue 20 on JAX without TensorFlow: each builds with the
# keras_core augmentation (which leaves XLA on), matches its
# preprocess_input, saves, reloads and predicts. Training is left to the
# TensorFlow tests: XLA-compiling DenseNet's train step took over 2 minutes
# on 2 cores, and running it op by op longer.
_BACKBONES_ON_JAX = r'''
import sys
import keras
import numpy as np
from xray_tfdata import model

assert keras.backend.backend() == 'jax' and 'tensorflow' not in sys.modules
images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 1), np.uint8)
rgb = np.repeat(images, 3, axis=-1).astype('float32')
# DenseNet-121 only (CheXNet's; torch preprocessing): the three took 2.4
# CPU-minutes here, this one about a third (BUILD_NOTES, issue 20).
for backbone, module in (('densenet121', 'densenet'),):
  net = model.build_model(32, backbone=backbone, frozen_blocks=1,
                          policy='float32', augmentation='keras_core')
  preprocess = keras.Model(net.input,
                           net.get_layer(backbone + '_preprocess').output)
  # Equal to the bit under TensorFlow (test_model); XLA-compiled on the CPU,
  # torch mode's / 255 and / std come out up to 1 ulp off (7e-7 seen).
  np.testing.assert_allclose(
      preprocess.predict(images, verbose=0),
      getattr(keras.applications, module).preprocess_input(rgb.copy()),
      rtol=1e-6, atol=1e-6)
  model.compile_model(net)
  assert net.jit_compile is True  # 'auto' under JAX: XLA, augmentation too
  path = f'{sys.argv[1]}/{backbone}.keras'
  net.save(path)
  np.testing.assert_allclose(
      keras.models.load_model(path).predict(images, verbose=0),
      net.predict(images, verbose=0), atol=1e-6)
  # Grad-CAM through its concatenations (issue 31), at its last map.
  from xray_tfdata import gradcam
  maps = gradcam.heatmaps(net, images)
  assert gradcam.find_target(net).name == 'relu', gradcam.find_target(net)
  assert maps.shape == (4, 32, 32) and np.isfinite(maps).all()
  print(backbone, 'ok')

# Overfitting a fixed batch, as tests/test_model.py does on TensorFlow
# (same batch, settings and factor): the JAX training path (loss, masking,
# optimizer) learns. mini_vgg only: DenseNet-121's XLA train step alone
# takes minutes here, and VGG16's 20 steps took 19 s of this process's 82
# (session 11) for the same path; the tf_data process trains VGG16 on JAX.
rng = np.random.default_rng(0)
batch = rng.integers(0, 256, (8, 32, 32, 1), np.uint8)
targets = rng.integers(0, 2, (8, 2)).astype(np.float32)
targets[0, 1] = -1.0  # labels.MASKED
for backbone, learning_rate, steps in (('mini_vgg', 1e-3, 12),):
  for policy in ('float32',):  # both policies: test_model_multilabel (TF)
    net = model.build_model(32, backbone=backbone, frozen_blocks=0,
                            policy=policy, num_labels=2, augmentation='none')
    model.compile_model(net, learning_rate=learning_rate,
                        pos_weight=[1.0, 1.0])
    losses = [float(net.train_on_batch(batch, targets)[0])
              for _ in range(steps)]
    assert np.isfinite(losses).all(), losses
    assert min(losses[-3:]) <= losses[0] / 10, (backbone, policy, losses)
    print(backbone, policy, 'overfits', losses[0], min(losses[-3:]))
'''

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The JAX processes, started at once: each spends much of its time
  importing and compiling on one core, so together they take about the time
  of the longest rather than the sum (as test_distribute's runs do)."""
  root = tmp_path_factory.mktemp('backends')
  (root / 'data').mkdir()
  script = root / 'backbones_on_jax.py'
  script.write_text(_BACKBONES_ON_JAX)
  commands = {
      # One process: xdist's workers would import JAX and Keras again.
      'parity': ([sys.executable, _NO_TENSORFLOW, '-q', '-p',
                  'no:cacheprovider', '-n', '0',
                  os.path.join(REPO_ROOT, 'tests', 'test_backend_parity.py'),
                  os.path.join(REPO_ROOT, 'tests',
                               'test_augment_keras_core.py')],
                 _jax_env()),
      'backbones': ([sys.executable, _NO_TENSORFLOW, '--script', str(script),
                     str(root)], _jax_env()),
      'device_epoch': (
          [sys.executable, _NO_TENSORFLOW, '--script',
           os.path.join(REPO_ROOT, 'tools', 'benchmark'),
           '--mode=device_epoch', f'--work_dir={root}', '--num_images=24',
           '--image_size=32', '--batch_size=4', '--train_images=8',
           '--val_images=6', '--repeats=1',
           '--variants=baseline,library,library_float32,floor',
           f'--output={root / "result.json"}'],
          _jax_env()),
      'tf_data': ([sys.executable, '-c', _TF_DATA_TO_JAX, REPO_ROOT,
                   str(root / 'data')],
                  dict(_jax_env(), TF_CPP_MIN_LOG_LEVEL='2')),
  }
  processes, files = {}, []
  for name, (command, env) in commands.items():
    out = open(root / f'{name}.out', 'w')  # pylint: disable=consider-using-with
    err = open(root / f'{name}.err', 'w')  # pylint: disable=consider-using-with
    files += [out, err]
    processes[name] = subprocess.Popen(  # pylint: disable=consider-using-with
        command, cwd=REPO_ROOT, env=env, stdout=out, stderr=err)
  try:
    for process in processes.values():
      process.wait(timeout=_TIMEOUT_S)
  finally:
    for process in processes.values():
      if process.poll() is None:
        process.kill()
    for f in files:
      f.close()
  results = {name: subprocess.CompletedProcess(
      process.args, process.returncode, (root / f'{name}.out').read_text(),
      (root / f'{name}.err').read_text())
             for name, process in processes.items()}
  results['report'] = root / 'result.json'
  return results


@pytest.mark.slow
def test_parity_and_model_tests_pass_on_jax_without_tensorflow(runs):
  result = runs['parity']
  output = result.stdout[-4000:] + result.stderr[-2000:]
  assert result.returncode == 0, output
  assert ' passed' in result.stdout, output
  for outcome in ('failed', 'skipped', 'error'):
    assert outcome not in result.stdout.splitlines()[-1], output


@pytest.mark.slow
def test_device_epoch_benchmark_runs_on_jax_without_tensorflow(runs):
  result = runs['device_epoch']
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

  report = json.loads(runs['report'].read_text())
  assert report['mode'] == 'device_epoch'
  assert report['machine']['backend'] == 'jax'
  assert report['machine']['versions']['tensorflow'] is None
  assert report['machine']['versions']['jax']
  auto = report['policies']['library']  # float32, or bf16 on AVX512_BF16
  expected = {'baseline': 'float32', 'library': auto,
              'library_float32': 'float32', 'floor': auto}
  if auto == 'float32':  # the same model as 'library': not run twice
    del expected['library_float32']
    assert report['same_as_library'] == 'library_float32'
  assert report['policies'] == expected
  assert report['train_images'] == 8 and report['val_images'] == 6
  for name in report['policies']:
    assert len(report['epoch_seconds'][name]) == 1
    assert report['epoch_seconds'][name][0] > 0
  assert report['speedup_vs_baseline']['baseline'] == 1.0
  assert report['median_idg_images_per_s'] > 0
  assert 'library' in result.stdout and 'x baseline' in result.stdout


@pytest.mark.slow
def test_tf_data_pipeline_feeds_a_jax_backend_model(runs):
  """The README's "Other backends" example: tf.data on the host, JAX on the
  device."""
  result = runs['tf_data']
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'epochs 2' in result.stdout
  assert 'predictions (5, 1)' in result.stdout  # val: 2 + 3 images


@pytest.mark.slow
def test_new_backbones_predict_and_reload_on_jax_without_tensorflow(runs):
  result = runs['backbones']
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert 'densenet121 ok' in result.stdout


@pytest.mark.slow
def test_mini_vgg_overfits_a_fixed_batch_on_jax(runs):
  """tests/test_model.py's overfit check under JAX, float32 (the run
  asserts the loss falls to a tenth; the TensorFlow test covers 'auto' and
  every backbone: each XLA compile of a train step costs about a minute
  here)."""
  result = runs['backbones']
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  for backbone in ('mini_vgg',):
    assert f'{backbone} float32 overfits' in result.stdout, result.stdout
