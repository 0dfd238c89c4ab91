"""runtime.configure_tensorflow_env: defaults set, user values kept, and the
allocator setting really reaches TensorFlow when it is called before the
import."""

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
