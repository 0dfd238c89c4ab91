"""Shared test setup: TensorFlow set up as the tools set it, and Keras'
global policy isolated."""

import os
import typing

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
# mixed_bfloat16 (issue 14: results must not depend on the host); a flag
# with a leading '-' is taken away (-avx512_bf16,-amx_bf16: as an AVX2-only
# host, 'auto' is float32). Processes the tests start still read the real
# /proc/cpuinfo.
_CPU_FLAG_CHANGES = set(os.environ.get('XRAY_TFDATA_TEST_CPU_FLAGS',
                                       '').split(',')) - {''}
_EXTRA_CPU_FLAGS = {f for f in _CPU_FLAG_CHANGES if not f.startswith('-')}
_REMOVED_CPU_FLAGS = {f[1:] for f in _CPU_FLAG_CHANGES if f.startswith('-')}


@pytest.fixture(autouse=True)
def _extra_cpu_flags(monkeypatch):
  if _CPU_FLAG_CHANGES:
    from xray_tfdata import model  # pylint: disable=g-import-not-at-top
    real = model.read_cpu_flags
    # Only this host's flags: a test reading a cpuinfo file of its own gets
    # what the file says.
    monkeypatch.setattr(
        model, 'read_cpu_flags',
        lambda *args, **kwargs: real(*args, **kwargs) if args or kwargs else (
            real() | _EXTRA_CPU_FLAGS) - _REMOVED_CPU_FLAGS)
  yield


# One tiny finished run for the tests that only read one (results, model
# files, serving, predict, evaluate): trained once per session instead of
# once per test module. The records are records.write_dataset's learnable
# 32 px images (test_training's and test_distribute's counts); mini_vgg
# with its last two blocks and a small head trained, two epochs, float32
# pinned ('auto' picks mixed_bfloat16 on AVX512_BF16 hosts, and the tests
# compare numbers across reloads and exports).
TINY_RUN_SIZE = 32
TINY_RUN_SPLITS = {'train': (10, 14), 'val': (5, 6), 'test': (6, 5)}


@pytest.fixture(scope='session')
def tiny_records(tmp_path_factory):
  """The folder of the shared tiny records (two shards a split); read only."""
  from records import write_dataset  # pylint: disable=g-import-not-at-top
  root = str(tmp_path_factory.mktemp('tiny_records'))
  write_dataset(root, TINY_RUN_SPLITS, num_shards=2,
                size=(TINY_RUN_SIZE, TINY_RUN_SIZE), learnable=True)
  return root


def tiny_run_config(data_dir, **overrides):
  """The shared run's TrainConfig (with overrides, for a run of a test's
  own that should differ from it in a few settings only)."""
  from xray_tfdata import config as config_lib  # pylint: disable=g-import-not-at-top
  settings = dict(
      data_dir=data_dir, image_size=TINY_RUN_SIZE, batch_size=8, epochs=2,
      weights='none', backbone='mini_vgg', frozen_blocks=2,
      dense_units=(16, 8), bootstrap_resamples=200, verbose=0,
      policy='float32')
  settings.update(overrides)
  return config_lib.TrainConfig(**settings)


class TinyRun(typing.NamedTuple):
  """A finished run: its records, model_dir, results and config, and the
  keyword arguments of each keras.Model.fit call it made."""
  data_dir: str
  model_dir: str
  results: dict
  config: object
  fit_calls: list


@pytest.fixture(scope='session')
def tiny_run(tiny_records, tmp_path_factory):
  """The shared finished run; read only (`tiny_run_copy` to change it)."""
  import keras  # pylint: disable=g-import-not-at-top
  from xray_tfdata import training  # pylint: disable=g-import-not-at-top
  model_dir = str(tmp_path_factory.mktemp('tiny_run') / 'model')
  config = tiny_run_config(tiny_records)
  fit_calls = []
  fit = keras.Model.fit

  def spy(self, *args, **kwargs):
    fit_calls.append(kwargs)
    return fit(self, *args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(keras.Model, 'fit', spy)
    results = training.train_and_evaluate(config, model_dir)
  keras.mixed_precision.set_global_policy('float32')
  return TinyRun(tiny_records, model_dir, results, config, fit_calls)


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path):
  """The shared run with its model_dir copied into the test's tmp_path, for
  a test that writes into it or removes from it."""
  import shutil  # pylint: disable=g-import-not-at-top
  model_dir = str(tmp_path / 'tiny_run')
  shutil.copytree(tiny_run.model_dir, model_dir)
  return tiny_run._replace(model_dir=model_dir)
