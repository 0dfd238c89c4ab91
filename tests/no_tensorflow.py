"""Runs pytest with TensorFlow made unimportable, for the backend tests.

  KERAS_BACKEND=jax python tests/no_tensorflow.py tests/test_backend_parity.py
  KERAS_BACKEND=jax python tests/no_tensorflow.py --script tools/benchmark ...

The device side (augment, model, benchmark_device) must import and work on a
machine where TensorFlow is not installed, such as a JAX GPU host. Importing
tensorflow, tf_keras, keras_cv or tensorflow_datasets here raises
ModuleNotFoundError, as it would there.
"""

import importlib.abc
import importlib.machinery
import runpy
import sys

BLOCKED = ('tensorflow', 'tf_keras', 'keras_cv', 'tensorflow_datasets')


class _Unimportable(importlib.abc.Loader):
  """Fails the import itself. A finder that raised instead would also break
  libraries that only probe with importlib.util.find_spec (torch._dynamo
  does, for tensorflow)."""

  def create_module(self, spec):
    raise ModuleNotFoundError(
        f'No module named {spec.name!r} (blocked by tests/no_tensorflow.py)',
        name=spec.name)

  def exec_module(self, module):
    del module  # create_module never returns


class _BlockTensorFlow(importlib.abc.MetaPathFinder):

  def find_spec(self, name, path=None, target=None):
    del path, target
    if name.partition('.')[0] in BLOCKED:
      return importlib.machinery.ModuleSpec(name, _Unimportable())
    return None


def block_tensorflow():
  """Makes the BLOCKED packages unimportable in this process."""
  sys.meta_path.insert(0, _BlockTensorFlow())


def main(argv):
  """Runs pytest with argv, or with --script PATH ARGS... that script."""
  block_tensorflow()
  if argv[:1] == ['--script']:
    sys.argv = argv[1:]
    runpy.run_path(argv[1], run_name='__main__')
    return 0
  import pytest  # pylint: disable=g-import-not-at-top
  return pytest.main(argv)


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
