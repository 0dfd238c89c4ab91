"""Shared test setup: quiet TensorFlow, and isolate Keras' global policy."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # pylint: disable=g-import-not-at-top

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _reset_dtype_policy():
  """Keras dtype policies are process-global; no test leaks one."""
  yield
  import sys  # pylint: disable=g-import-not-at-top
  if 'keras' in sys.modules:
    sys.modules['keras'].mixed_precision.set_global_policy('float32')
