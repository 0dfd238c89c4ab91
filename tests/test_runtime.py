"""runtime.configure_tensorflow_env: defaults set, user values kept, and the
allocator setting really reaches TensorFlow when it is called before the
import; the import hook, the tools' ending, cpu_count."""

import ast
import contextlib
import glob
import importlib
import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from xray_tfdata import runtime


def test_sets_defaults_and_keeps_the_users_values():
  environ = {'TF_CPU_ALLOCATOR_USE_BFC': 'false'}
  in_force = runtime.configure_tensorflow_env(environ)
  assert environ['TF_CPU_ALLOCATOR_USE_BFC'] == 'false'  # the user's wins
  assert environ['TF_CPP_MIN_LOG_LEVEL'] == '2'
  assert in_force == {'TF_CPU_ALLOCATOR_USE_BFC': 'false',
                      'TF_CPP_MIN_LOG_LEVEL': '2'}


_PROBE = """
from xray_tfdata import runtime
runtime.configure_tensorflow_env()
import tensorflow as tf
tf.constant(1.0)
try:
  tf.config.experimental.get_memory_info('CPU:0')  # only a BFC pool has stats
  allocator = 'bfc'
except ValueError:
  allocator = 'default'
print(allocator)
"""


def _probe(**user_env):
  # oneDNN pinned off (TensorFlow's default here): it brings an allocator
  # of its own.
  env = {k: v for k, v in os.environ.items() if k not in runtime.TF_ENV_DEFAULTS}
  env['TF_ENABLE_ONEDNN_OPTS'] = '0'
  env.update(user_env)
  result = subprocess.run([sys.executable, '-c', _PROBE], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=120,
                          check=True)
  return result.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_settings_are_in_force_unless_the_user_says_otherwise():
  assert _probe() == 'bfc'
  assert _probe(TF_CPU_ALLOCATOR_USE_BFC='false') == 'default'


# Lines TensorFlow 2.21 writes while it loads on a machine without a GPU,
# as captured from `import tensorflow` here.
_STARTUP_LINES = [
    'WARNING: All log messages before absl::InitializeLog() is called are '
    'written to STDERR',
    'I0000 00:00:1796296382.379260   17461 cudart_stub.cc:31] Could not find '
    'cuda drivers on your machine, GPU will not be used.',
    'E0000 00:00:1796296388.995822   17461 cuda_platform.cc:52] failed call '
    'to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR '
    '(303)',
    # At levels below 2, on CPUs with instructions the build does not use:
    'I0000 00:00:1796296390.123456   17461 cpu_feature_guard.cc:210] This '
    'TensorFlow binary is optimized to use available CPU instructions in '
    'performance-critical operations.',
    'To enable the following instructions: AVX2 FMA, in other operations, '
    'rebuild TensorFlow with the appropriate compiler flags.',
]


def test_startup_noise_is_named_and_cuda_errors_kept_where_gpus_exist():
  assert all(runtime.is_startup_noise(line, gpu_device_files=False)
             for line in _STARTUP_LINES)
  # With GPU device files, a failing cuInit is a real problem.
  assert not runtime.is_startup_noise(_STARTUP_LINES[2], gpu_device_files=True)
  for line in ('error: data_dir x has no dataset',
               'W0000 00:00:1.0   1 some_kernel.cc:12] a real warning',
               'Traceback (most recent call last):'):
    assert not runtime.is_startup_noise(line, gpu_device_files=False)


def test_filtered_stderr_drops_the_noise_and_keeps_the_rest_in_order(capfd):
  with runtime._filtered_stderr():  # pylint: disable=protected-access
    for line in [_STARTUP_LINES[0], 'first real line', _STARTUP_LINES[1],
                 'second real line']:
      os.write(2, (line + '\n').encode())
  assert capfd.readouterr().err == 'first real line\nsecond real line\n'



def test_level_0_keeps_every_line(monkeypatch):
  monkeypatch.delitem(sys.modules, 'tensorflow', raising=False)
  monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', '0')
  monkeypatch.setattr(sys, 'meta_path', [
      f for f in sys.meta_path
      if type(f).__name__ != '_QuietTensorflowImport'])
  runtime.quiet_tensorflow_startup()
  assert not any(type(f).__name__ == '_QuietTensorflowImport'
                 for f in sys.meta_path)
  monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', '2')
  runtime.quiet_tensorflow_startup()
  assert any(type(f).__name__ == '_QuietTensorflowImport'
             for f in sys.meta_path)


@pytest.mark.slow  # starts a tool
def test_a_tool_that_imports_tensorflow_prints_only_its_own_line(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in runtime.TF_ENV_DEFAULTS}
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'tools', 'predict'),
       f'--model_dir={tmp_path}', str(tmp_path / 'x.png')],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert result.stderr.splitlines() == [
      f'error: {tmp_path / "serving"} has no exported model: pass --model_dir '
      'of a finished run (its serving/)'], result.stderr


class _ProbeHook(runtime.FirstImportHook):
  name = 'xray_hook_probe'
  events = []

  @contextlib.contextmanager
  def around(self, module):
    self.events.append(('enter', hasattr(module, 'VALUE')))
    yield
    self.events.append(('exit', module.VALUE))


def test_first_import_hook_wraps_the_first_import_only(tmp_path, monkeypatch):
  (tmp_path / 'xray_hook_probe.py').write_text('VALUE = 7\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setattr(sys, 'meta_path', list(sys.meta_path))
  monkeypatch.delitem(sys.modules, 'xray_hook_probe', raising=False)
  _ProbeHook.events.clear()
  _ProbeHook.install()
  _ProbeHook.install()  # once is enough
  assert sum(isinstance(f, _ProbeHook) for f in sys.meta_path) == 1
  # A bare find_spec does not use it up.
  assert importlib.util.find_spec('xray_hook_probe') is not None
  assert any(isinstance(f, _ProbeHook) for f in sys.meta_path)
  module = importlib.import_module('xray_hook_probe')
  # Entered before the module's code ran, left after it.
  assert _ProbeHook.events == [('enter', False), ('exit', 7)]
  assert not any(isinstance(f, _ProbeHook) for f in sys.meta_path)
  assert type(module.__loader__).__name__ == 'SourceFileLoader'
  assert importlib.util.find_spec('some_other_module') is None


def _with_calls(function):
  """The dotted names of the context managers `with` enters in function."""
  names = []
  for node in ast.walk(function):
    if isinstance(node, ast.With):
      for item in node.items:
        call = item.context_expr
        if isinstance(call, ast.Call):
          names.append(ast.unparse(call.func))
  return names


def test_every_tool_ends_through_tool_errors():
  tools = sorted(glob.glob(os.path.join(REPO_ROOT, 'xray_tfdata', 'cli',
                                        '[!_]*.py')))
  assert len(tools) >= 7
  for path in tools:
    with open(path, encoding='utf-8') as f:
      tree = ast.parse(f.read())
    main = [node for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name == 'main']
    assert main, path
    assert 'runtime.tool_errors' in _with_calls(main[0]), path


def test_cpu_count_is_the_processs_affinity(monkeypatch):
  monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 3},
                      raising=False)
  assert runtime.cpu_count() == 2
  monkeypatch.delattr(os, 'sched_getaffinity', raising=False)
  monkeypatch.setattr(os, 'cpu_count', lambda: None)
  assert runtime.cpu_count() == 1
