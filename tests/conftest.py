"""Shared test setup: TensorFlow set up as the tools set it, and Keras'
global policy isolated."""

import os

from xray_tfdata import runtime

runtime.configure_tensorflow_env()  # as the tools: quiet logs, BFC allocator

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def assert_one_line_error(result, *needles):
  """Non-zero exit, no traceback, and one line naming the problem (absl's
  flag errors add a second line pointing at --helpfull). TensorFlow's C++
  start-up lines (CUDA probing, oneDNN notice), which it writes before its
  logging reads TF_CPP_MIN_LOG_LEVEL, are not counted."""
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr, result.stderr
  lines = [l for l in result.stderr.strip().splitlines()
           if l.strip() and not l.startswith(('WARNING', 'I0000', 'E0000'))]
  assert 1 <= len(lines) <= 2, result.stderr
  assert any(all(n in l for n in needles) for l in lines), lines


@pytest.fixture(autouse=True)
def _reset_dtype_policy():
  """Keras dtype policies are process-global; no test leaks one."""
  yield
  import sys  # pylint: disable=g-import-not-at-top
  if 'keras' in sys.modules:
    sys.modules['keras'].mixed_precision.set_global_policy('float32')


# XRAY_TFDATA_TEST_CPU_FLAGS=avx512_bf16 pytest -m "not slow" runs the
# in-process tests as an AVX512_BF16 host would: policy 'auto' then picks
# mixed_bfloat16 (issue 14: results must not depend on the host). Processes
# the tests start still read the real /proc/cpuinfo.
_EXTRA_CPU_FLAGS = set(os.environ.get('XRAY_TFDATA_TEST_CPU_FLAGS', '').split(
    ',')) - {''}


@pytest.fixture(autouse=True)
def _extra_cpu_flags(monkeypatch):
  if _EXTRA_CPU_FLAGS:
    from xray_tfdata import model  # pylint: disable=g-import-not-at-top
    real = model.read_cpu_flags
    # Only this host's flags: a test reading a cpuinfo file of its own gets
    # what the file says.
    monkeypatch.setattr(
        model, 'read_cpu_flags',
        lambda *args, **kwargs: real(*args, **kwargs) | (
            set() if args or kwargs else _EXTRA_CPU_FLAGS))
  yield
