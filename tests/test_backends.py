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
