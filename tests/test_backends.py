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


@pytest.mark.slow
def test_parity_and_model_tests_pass_on_jax_without_tensorflow():
  result = subprocess.run(
      [sys.executable, _NO_TENSORFLOW, '-q', '-p', 'no:cacheprovider',
       os.path.join(REPO_ROOT, 'tests', 'test_backend_parity.py')],
      cwd=REPO_ROOT, env=_jax_env(), capture_output=True, text=True,
      timeout=600)
  output = result.stdout[-4000:] + result.stderr[-2000:]
  assert result.returncode == 0, output
  assert ' passed' in result.stdout, output
  for outcome in ('failed', 'skipped', 'error'):
    assert outcome not in result.stdout.splitlines()[-1], output


@pytest.mark.slow
def test_device_epoch_benchmark_runs_on_jax_without_tensorflow(tmp_path):
  output = tmp_path / 'result.json'
  result = subprocess.run(
      [sys.executable, _NO_TENSORFLOW, '--script',
       os.path.join(REPO_ROOT, 'tools', 'benchmark'), '--mode=device_epoch',
       f'--work_dir={tmp_path}', '--num_images=24', '--image_size=32',
       '--batch_size=4', '--train_images=8', '--val_images=6', '--repeats=1',
       '--variants=baseline,library,library_float32,floor',
       f'--output={output}'],
      cwd=REPO_ROOT, env=_jax_env(), capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

  report = json.loads(output.read_text())
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


@pytest.mark.slow
def test_tf_data_pipeline_feeds_a_jax_backend_model(tmp_path):
  """The README's "Other backends" example: tf.data on the host, JAX on the
  device."""
  result = subprocess.run(
      [sys.executable, '-c', _TF_DATA_TO_JAX, REPO_ROOT, str(tmp_path)],
      cwd=REPO_ROOT, env=dict(_jax_env(), TF_CPP_MIN_LOG_LEVEL='2'),
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'epochs 2' in result.stdout
  assert 'predictions (5, 1)' in result.stdout  # val: 2 + 3 images
