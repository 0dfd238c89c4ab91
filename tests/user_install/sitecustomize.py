"""Tool processes started by the tests see what a user's install has.

`pip install -e .` installs no test extras; the tests add jax and
scikit-learn. When they are there, `import tensorflow` imports jax (its lite
converter looks for it) and `import keras` imports scikit-learn (its
wrappers), about 1.5 s of each tool process's 6-7 s start on a 2-core host
(session 11, BUILD_NOTES). `tests/test_end_to_end._tool_env` puts this
folder first on PYTHONPATH, so that Python runs this file at start-up and
those imports fail as on a user's machine. A process on the JAX backend
(KERAS_BACKEND=jax) keeps jax.
"""

import os
import sys

_HIDDEN = {'sklearn'} | (set() if os.environ.get('KERAS_BACKEND') == 'jax'
                         else {'jax', 'jaxlib'})


class _TestExtrasHidden:
  """A meta path finder that refuses the hidden top-level packages."""

  def find_spec(self, name, path=None, target=None):  # pylint: disable=unused-argument
    if name.partition('.')[0] in _HIDDEN:
      raise ImportError(f'{name} is a test extra, not installed for users')
    return None


sys.meta_path.insert(0, _TestExtrasHidden())
