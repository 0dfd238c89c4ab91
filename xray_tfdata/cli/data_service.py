"""Runs a tf.data service dispatcher and/or workers until killed.

  tools/data_service --port=5050                         # the dispatcher
  tools/data_service --dispatcher_address=HOST:5050 \\
      --worker_port=5051 --worker_address=THIS_HOST:5051  # on each data host
  tools/data_service --port=5050 --num_workers=1         # both, one host

Then train with tools/train --data_service=HOST:5050. All logic is in
xray_tfdata.data_service.serve.
"""

import os
import sys

from xray_tfdata import runtime  # pylint: disable=g-import-not-at-top  (imports no TF)
runtime.configure_tensorflow_env()  # before TensorFlow is imported

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

_PORT = flags.DEFINE_integer(
    'port', None, 'Start a dispatcher on this port (0: any free port).',
    lower_bound=0, upper_bound=65535)
_WORK_DIR = flags.DEFINE_string(
    'work_dir', None, 'Folder (local or gs://) where the dispatcher journals '
    'its state, so that it can be restarted without losing the jobs.')
_DISPATCHER_ADDRESS = flags.DEFINE_string(
    'dispatcher_address', None, 'HOST:PORT of the dispatcher the workers '
    'register with (default: the one --port starts).')
_NUM_WORKERS = flags.DEFINE_integer(
    'num_workers', None, 'Workers to start here (default: 1 with '
    '--dispatcher_address, else 0). One per host uses all its cores.',
    lower_bound=0)
_WORKER_PORT = flags.DEFINE_integer(
    'worker_port', 0, 'Port of the first worker; the next count up (0: any).',
    lower_bound=0, upper_bound=65535)
_WORKER_ADDRESS = flags.DEFINE_string(
    'worker_address', None, 'HOST:PORT the trainers reach the worker at '
    "('%port%' stands for its port); default localhost:%port%, for trainers "
    'on this host only. It does not limit where the worker listens: '
    "TensorFlow's servers listen on every interface, without authentication "
    '(see README, "Faults").')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  from xray_tfdata import data_service  # pylint: disable=g-import-not-at-top

  num_workers = _NUM_WORKERS.value
  if num_workers is None:
    num_workers = 1 if _DISPATCHER_ADDRESS.value else 0
  # SIGTERM, the usual way to stop a service, ends as Ctrl-C does: the
  # servers are stopped, then one line and exit code 130.
  with runtime.tool_errors():
    if _WORK_DIR.value and _PORT.value is None:
      raise data_service.DataServiceError(
          '--work_dir belongs to a dispatcher: pass --port')
    data_service.serve(port=_PORT.value, work_dir=_WORK_DIR.value,
                       dispatcher_address=_DISPATCHER_ADDRESS.value,
                       num_workers=num_workers, worker_port=_WORKER_PORT.value,
                       worker_address=_WORKER_ADDRESS.value,
                       log=lambda line: print(line, flush=True))

def run():
  """The console script (xray-data-service) and tools/data_service."""
  runtime.run_tool(main, __name__)


if __name__ == '__main__':
  run()
