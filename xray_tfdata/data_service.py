"""tf.data service: the input pipeline's reading and decoding on other hosts.

When the trainer's own CPUs cannot decode images as fast as its GPUs train,
`DatasetBuilder.as_dataset(..., data_service=ADDRESS)` runs the file reads
and PNG decoding on tf.data service workers; the shuffle, repeat, batch and
prefetch stay on the trainer. A service is one dispatcher and any number of
workers, started by `serve()` (tools/data_service):

  tools/data_service --port=5050                                 # dispatcher
  tools/data_service --dispatcher_address=HOST:5050 --worker_port=5051 \
      --worker_address=THIS_HOST:5051                            # each worker
  tools/train ... --data_service=HOST:5050

Processing mode: 'distributed_epoch' (ShardingPolicy.DYNAMIC). The
dispatcher hands out shard files one at a time to whichever worker asks, so
every example is read exactly once per epoch (the epoch, the class balance and
`steps_per_epoch` mean what they mean without the service), a slow worker
just takes fewer files, and workers can join at any time. The alternative,
'parallel_epochs', has every worker produce the whole split: K workers give K
copies of each example per epoch. The costs: a file is the unit of work, so
a split should have several shards per worker, and a worker that dies loses
the rest of the files it was reading for that epoch (at most once, not
exactly once, under failures).

Datasets with Python functions cannot run on the service; this project's
pipeline has none.

Failures: when the service's last worker (or the dispatcher) goes away, the
tf.data client does not fail: it waits, for ever, for a worker to come
back. `Watchdog` makes that visible: a line every `interval` seconds
without a batch, naming the dispatcher, and after `timeout` seconds one
error line and exit code 1 (training resumes from its last finished epoch
when rerun). The exit is `os._exit`: the training thread is blocked inside
TensorFlow, where no Python exception can reach it, and the resume state
is saved only at epoch ends, so nothing finished is lost.

Security: the service has no authentication and no encryption. Anyone who
can reach the dispatcher's or a worker's port can register workers, read
the data and run datasets (with file reads) on the workers. TensorFlow's
servers listen on every interface whatever `worker_address` says (that
is only the address the trainers are told), so keep the ports behind a
firewall or on a private network.
"""

import os
import socket
import sys
import threading
import time

import tensorflow as tf

from xray_tfdata import checks
from xray_tfdata import errors

PROCESSING_MODE = 'distributed_epoch'



DEFAULT_TIMEOUT = 600  # seconds without a batch before training gives up
WAIT_LINE_INTERVAL = 60  # seconds between the "waiting" lines
TIMEOUT_EXIT_CODE = 1
CONNECT_TIMEOUT_S = 10  # for the dispatcher to accept a connection, and answer
# A dispatcher RPC with an empty request; any server that is not a dispatcher
# (a worker, another gRPC service, something that only accepts TCP) fails it.
_DISPATCHER_VERSION_RPC = '/tensorflow.data.DispatcherService/GetVersion'


class DataServiceError(errors.XrayError):
  """A user-caused problem with a tf.data service address or setting."""


class Watchdog:
  """Reports a training input that stopped coming from the service.

  Call `progress()` at every batch, `pause()` while nothing is read from
  the service and `resume()` when reading starts again (see
  `callbacks.DataServiceProgress`); between `start()` and
  `stop()`, a thread prints a waiting line every `interval` seconds without
  progress and calls `on_timeout(message)` once after `timeout` seconds.
  The first batch after `start()` gets `first_batch_grace` seconds more:
  its step also traces and compiles the model, which is not the service's
  time.

  Args:
    address: the dispatcher, as the user gave it.
    timeout: seconds without a batch before giving up.
    interval: seconds between the waiting lines.
    log: prints a waiting line (default: stdout).
    on_timeout: called with the one-line error; default prints it on
      stderr and ends the process with TIMEOUT_EXIT_CODE.
    first_batch_grace: extra seconds for the first batch after `start()`.
  """

  def __init__(self, address, timeout=DEFAULT_TIMEOUT,
               interval=WAIT_LINE_INTERVAL, log=None, on_timeout=None,
               first_batch_grace=0.0):
    self.address = checks.service_address(address, error=DataServiceError)
    self.timeout = timeout
    self.interval = min(interval, timeout)
    self.log = log or (lambda line: print(line, flush=True))
    self.on_timeout = on_timeout or _exit_with
    self.first_batch_grace = first_batch_grace
    self._last = time.monotonic()
    self._grace = 0.0
    self._paused = False
    self._stopped = threading.Event()
    self._thread = None

  def progress(self):
    """A batch came: the clock restarts, and the first batch's grace ends."""
    self._last = time.monotonic()
    self._grace = 0.0
    self._paused = False

  def resume(self):
    """Reading from the service starts again (an epoch begins, validation
    ended): the clock restarts; the first batch's grace, if that batch has
    not come yet, is kept (an epoch begins before the compiling first
    step)."""
    self._last = time.monotonic()
    self._paused = False

  def pause(self):
    """Nothing is read from the service until the next `progress()`
    (validation reads locally; checkpoints are written at epoch ends)."""
    self._paused = True

  def start(self):
    self.resume()
    self._grace = self.first_batch_grace
    self._stopped.clear()
    self._thread = threading.Thread(target=self._watch, daemon=True,
                                    name='data-service-watchdog')
    self._thread.start()
    return self

  def stop(self):
    self._stopped.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None

  def _watch(self):
    reported = 0.0
    while not self._stopped.wait(min(1.0, self.interval / 4)):
      if self._paused:
        reported = 0.0
        continue
      idle = time.monotonic() - self._last
      if idle >= self.timeout + self._grace:
        self.on_timeout(
            f'error: no training data from the tf.data service at '
            f'{self.address} for {idle:.0f} s (its workers or dispatcher '
            'stopped?); restart tools/data_service there, then rerun the '
            'same command to resume from the last finished epoch (or raise '
            '--data_service_timeout)')
        return
      if idle < reported:
        reported = 0.0  # batches came again
      if idle - reported >= self.interval:
        reported = idle
        self.log(f'waiting for the tf.data service at {self.address}: no '
                 f'batch for {idle:.0f} s; giving up after {self.timeout} s '
                 '(--data_service_timeout)')


def _exit_with(message):
  print(message, file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(TIMEOUT_EXIT_CODE)  # pylint: disable=protected-access


def distribute(dataset, address, job_name=None):
  """Moves everything `dataset` does so far onto the service's workers.

  Args:
    dataset: a dataset whose source is a list of files
      (`from_tensor_slices`), so the dispatcher can hand files out.
    address: the dispatcher, 'host:port' or 'grpc://host:port'.
    job_name: trainers that pass the same name share one job, each reading a
      different part of every epoch (the workers of a multi-worker run); None
      gives this trainer a job of its own.

  Returns:
    A dataset that reads the elements from the service.
  Raises:
    DataServiceError: a malformed address, or no dispatcher answering
      there (`check_reachable`).
  """
  address = checks.service_address(address, error=DataServiceError)
  # `distribute` registers the dataset with the dispatcher now, and retries
  # for ever, inside TensorFlow and before any watchdog runs, if nothing
  # answers: a wrong address or a stopped service would hang silently.
  check_reachable(address)
  return dataset.apply(tf.data.experimental.service.distribute(
      processing_mode=PROCESSING_MODE, service=address, job_name=job_name))


def check_reachable(address, seconds=CONNECT_TIMEOUT_S):
  """Checks that a dispatcher at `address` accepts connections and answers.

  Args:
    address: 'grpc://host:port' (`checks.service_address`).
    seconds: how long a connection, and then the dispatcher's answer, may
      take.
  Raises:
    DataServiceError: naming the dispatcher and the fix.
  """
  import grpc  # pylint: disable=g-import-not-at-top  (TensorFlow's own)
  target = address[len('grpc://'):]
  host, _, port = target.rpartition(':')
  try:
    socket.create_connection((host.strip('[]'), int(port)), seconds).close()
  except OSError as e:
    reason = e.strerror or type(e).__name__
    raise DataServiceError(
        f'cannot reach the tf.data service dispatcher at {address} '
        f'({reason}); start tools/data_service there, or fix '
        '--data_service') from None
  # A server that accepts TCP but never answers as a dispatcher makes the
  # registration in `distribute` retry for ever, before any watchdog runs.
  with grpc.insecure_channel(target) as channel:
    try:
      channel.unary_unary(_DISPATCHER_VERSION_RPC)(b'', timeout=seconds)
    except grpc.RpcError as e:
      if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        reason = f'no answer in {seconds:g} s'
      else:
        reason = e.code().name.lower()
      raise DataServiceError(
          f'{address} accepted the connection but did not answer as a '
          f'tf.data service dispatcher ({reason}); check that '
          'tools/data_service runs a dispatcher at that address (a '
          "worker's port is not one), or fix --data_service") from None


def start_dispatcher(port=0, work_dir=None):
  """Starts a dispatcher in this process.

  Args:
    port: TCP port; 0 picks a free one (see the returned server's target).
    work_dir: a folder (local or gs://) where the dispatcher journals its
      state, so that a restarted dispatcher carries on; None keeps it in
      memory.

  Returns:
    The running `tf.data.experimental.service.DispatchServer`.
  """
  config = tf.data.experimental.service.DispatcherConfig(
      port=port, work_dir=work_dir, fault_tolerant_mode=bool(work_dir))
  return tf.data.experimental.service.DispatchServer(config)


def start_worker(dispatcher_address, port=0, worker_address=None):
  """Starts a worker in this process and registers it with the dispatcher.

  Args:
    dispatcher_address: 'host:port' or 'grpc://host:port'.
    port: TCP port; 0 picks a free one.
    worker_address: 'host:port' the trainers can reach this worker at
      ('%port%' stands for the bound port); default 'localhost:%port%',
      which only a trainer on the same host can reach.

  Returns:
    The running `tf.data.experimental.service.WorkerServer`.
  Raises:
    DataServiceError: a malformed dispatcher address.
  """
  dispatcher = checks.service_address(
      dispatcher_address, 'dispatcher_address',
      DataServiceError)[len('grpc://'):]
  config = tf.data.experimental.service.WorkerConfig(
      dispatcher_address=dispatcher, worker_address=worker_address,
      port=port)
  return tf.data.experimental.service.WorkerServer(config)


def serve(port=None, work_dir=None, dispatcher_address=None, num_workers=0,
          worker_port=0, worker_address=None, block=True, log=print):
  """Runs a dispatcher and/or workers until the process is killed.

  Args:
    port: start a dispatcher on this port (0: any free port); None: none.
    work_dir: the dispatcher's journal folder (see `start_dispatcher`).
    dispatcher_address: the dispatcher the workers register with; defaults
      to the one started here.
    num_workers: workers to start in this process (one per host is usual:
      each runs its datasets with all the host's cores).
    worker_port: port of the first worker, the next ones count up; 0: any.
    worker_address: see `start_worker`; used for a single worker.
    block: wait until the process is interrupted (Ctrl-C, or SIGTERM under
      `runtime.tool_errors`), then stop the servers and re-raise the
      KeyboardInterrupt.
    log: where the addresses are reported, one line each.

  Returns:
    The servers, dispatcher first (only when not `block`).
  Raises:
    KeyboardInterrupt: when `block`, once interrupted and the servers
      stopped.
    DataServiceError: nothing to start, workers without a dispatcher, or a
      malformed address.
  """
  if port is None and not num_workers:
    raise DataServiceError('nothing to start: pass --port for a dispatcher '
                           'and/or --num_workers with --dispatcher_address')
  if num_workers and port is None and not dispatcher_address:
    raise DataServiceError('workers need a dispatcher: pass '
                           '--dispatcher_address=HOST:PORT, or --port to '
                           'start one here')
  if num_workers > 1 and worker_address:
    raise DataServiceError('--worker_address names one worker; start one '
                           'worker per process (or host) to set it')
  servers = []
  if port is not None:
    dispatcher = start_dispatcher(port, work_dir)
    servers.append(dispatcher)
    log(f'dispatcher: {dispatcher.target}')
    dispatcher_address = dispatcher_address or dispatcher.target
  for i in range(num_workers):
    worker = start_worker(dispatcher_address,
                          worker_port + i if worker_port else 0,
                          worker_address)
    servers.append(worker)
    address = checks.service_address(dispatcher_address, 'dispatcher_address',
                                     DataServiceError)
    log(f'worker {i}: registered with {address}')
  if block:
    try:
      while True:
        time.sleep(3600)
    except KeyboardInterrupt:
      for server in reversed(servers):
        server.stop()
      raise  # the caller reports the interruption (runtime.tool_errors)
  return servers
