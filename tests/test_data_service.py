"""tf.data service on loopback: the same examples as a local read, each once
per epoch; a job shared by two trainers; the tool; training through it."""

import collections
import gc
import hashlib
import os
import queue
import socket
import subprocess
import sys
import threading
import time

import pytest
import tensorflow as tf

from conftest import REPO_ROOT
from records import write_dataset
from xray_tfdata import checks
from xray_tfdata import data_service
from xray_tfdata import pipeline
from xray_tfdata import training

TIMEOUT_S = 120


@pytest.fixture(scope='module')
def service():
  """A dispatcher and two workers in this process, on free local ports.

  A worker still running a job takes seconds (up to a minute) to stop, so
  jobs without readers are dropped within a second here, not minutes.
  """
  tf_service = tf.data.experimental.service
  dispatcher = tf_service.DispatchServer(tf_service.DispatcherConfig(
      port=0, job_gc_check_interval_ms=200, job_gc_timeout_ms=200))
  workers = [tf_service.WorkerServer(tf_service.WorkerConfig(
      dispatcher_address=dispatcher.target.split('://')[1],
      heartbeat_interval_ms=200)) for _ in range(2)]
  yield dispatcher.target
  gc.collect()  # drops the readers no test holds any more
  time.sleep(1)  # and the dispatcher their jobs
  # A worker still finishing a job can take seconds to stop (12 s seen in
  # a CI run): stop both at once.
  stopping = [threading.Thread(target=worker.stop) for worker in workers]
  for thread in stopping:
    thread.start()
  for thread in stopping:
    thread.join()
  dispatcher.stop()


@pytest.fixture(scope='module')
def builder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('records'))
  # Image i of a split is filled with i: every example is distinct.
  write_dataset(root, {'train': (7, 11), 'val': (4, 5)}, num_shards=4,
                size=(12, 10))
  return pipeline.DatasetBuilder(root)


def _examples(dataset):
  """The multiset of (file name, label, pixel digest) a dataset yields."""
  return collections.Counter(
      (metadata['filename'].decode(), tuple(label.tolist()),
       hashlib.sha1(image.tobytes()).hexdigest())
      for image, label, metadata in dataset.as_numpy_iterator())


def test_service_reads_each_example_once(service, builder):
  local = _examples(builder.as_dataset('val', with_metadata=True))
  assert sum(local.values()) == 9 and max(local.values()) == 1
  served = _examples(builder.as_dataset('val', with_metadata=True,
                                        data_service=service))
  assert served == local


@pytest.mark.slow
def test_training_pipeline_through_the_service_sees_each_example_once_per_epoch(
    service, builder):
  local = _examples(builder.as_dataset('train', with_metadata=True))
  n = sum(local.values())
  dataset = builder.as_dataset('train', training=True, seed=1, repeat=True,
                               with_metadata=True, data_service=service)
  first, second = (_examples(dataset.skip(i * n).take(n)) for i in (0, 1))
  # Each epoch on its own: the shuffle does not mix one into the next.
  assert first == local
  assert second == local


def test_trainers_sharing_a_job_split_each_epoch(service, builder):
  """What the workers of a multi-worker run do: together once, no overlap."""
  iterators = [iter(builder.as_dataset('val', with_metadata=True,
                                       data_service=service,
                                       data_service_job='shared-val'))
               for _ in range(2)]
  got = [collections.Counter(), collections.Counter()]
  running = [True, True]
  while any(running):
    for i, iterator in enumerate(iterators):
      if running[i]:
        try:
          _, _, metadata = next(iterator)
          got[i][metadata['filename'].numpy().decode()] += 1
        except StopIteration:
          running[i] = False
  local = collections.Counter(
      m['filename'].decode() for _, _, m in
      builder.as_dataset('val', with_metadata=True).as_numpy_iterator())
  assert got[0] + got[1] == local
  assert not set(got[0]) & set(got[1])


@pytest.mark.slow
def test_training_reads_through_the_service(service, tmp_path, monkeypatch):
  data_dir = str(tmp_path / 'data')
  os.makedirs(data_dir)
  write_dataset(data_dir, {'train': (10, 14), 'val': (5, 6), 'test': (6, 5)},
                num_shards=2, size=(32, 32), learnable=True)
  jobs = []
  distribute = data_service.distribute

  def spy(dataset, address, job_name=None):
    jobs.append((address, job_name))
    return distribute(dataset, address, job_name)

  monkeypatch.setattr(data_service, 'distribute', spy)
  config = training.TrainConfig(
      data_dir=data_dir, image_size=32, batch_size=8, epochs=2,
      weights='none', frozen_blocks=5, dense_units=(16, 8),
      augmentation='none', bootstrap_resamples=100, verbose=0,
      data_service=service)
  results = training.train_and_evaluate(config, str(tmp_path / 'model'))
  # The training split, and only it: evaluation needs the disk order.
  assert len(jobs) == 1
  address, job_name = jobs[0]
  assert address == service and job_name.startswith('xray_tfdata-train-')
  assert results['training']['epochs_run'] == 2
  assert results['labels']['PNEUMONIA']['splits']['test']['n'] == 11
  assert os.path.exists(tmp_path / 'model' / 'results.json')


def test_job_name_is_shared_by_one_runs_workers_only():
  """Every worker of a run (same model_dir and settings) joins one job; a
  different run, or the same folder with other settings, gets another, so
  two runs never split each other's epochs."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  config = training.TrainConfig(data_dir='/data', data_service='host:5050')

  def job(model_dir='/runs/a', **changes):
    options = training._data_service_options(  # pylint: disable=protected-access
        dataclasses.replace(config, **changes), model_dir)
    assert options['data_service'] == changes.get('data_service', 'host:5050')
    return options['data_service_job']

  name = job()
  assert name.startswith('xray_tfdata-train-') and len(name) > 20
  assert job() == name
  # A resumed run may be watched or fed differently: still the same run.
  assert job(verbose=2, data_service='other:6060') == name
  others = [job('/runs/b'), job(seed=1), job(learning_rate=1e-3),
            job(batch_size=16), job(data_dir='/data2')]
  assert len({name, *others}) == 1 + len(others)
  assert training._data_service_options(  # pylint: disable=protected-access
      dataclasses.replace(config, data_service=''), '/runs/a') == {}


@pytest.mark.parametrize('address', ['localhost', 'localhost:0',
                                     'http://localhost:5050', 'a b:1', ''])
def test_malformed_addresses_are_refused(address):
  with pytest.raises(data_service.DataServiceError, match='is not HOST:PORT'):
    data_service.distribute(tf.data.Dataset.range(1), address)
  with pytest.raises(checks.SettingError, match='is not HOST:PORT'):
    checks.service_address(address)


@pytest.mark.parametrize('kwargs, message', [
    ({}, 'nothing to start'),
    ({'num_workers': 2}, 'workers need a dispatcher'),
    ({'port': 0, 'num_workers': 2, 'worker_address': 'h:%port%'},
     'names one worker'),
])
def test_serve_refuses_what_cannot_work(kwargs, message):
  with pytest.raises(data_service.DataServiceError, match=message):
    data_service.serve(block=False, **kwargs)


def _closed_port():
  """A port nothing listens on (bound, then released)."""
  with socket.socket() as probe:
    probe.bind(('localhost', 0))
    return probe.getsockname()[1]


def test_an_unreachable_dispatcher_is_one_error_not_a_hang(builder):
  # tf.data's distribute would retry the registration for ever, silently.
  address = f'localhost:{_closed_port()}'
  start = time.monotonic()
  with pytest.raises(data_service.DataServiceError,
                     match=f'cannot reach the tf.data service dispatcher at '
                           f'grpc://{address}'):
    builder.as_dataset('val', data_service=address)
  assert time.monotonic() - start < data_service.CONNECT_TIMEOUT_S + 5


def test_addresses_are_normalized():
  assert checks.service_address('localhost:5050') == (
      'grpc://localhost:5050')
  assert checks.service_address('grpc://127.0.0.1:80') == (
      'grpc://127.0.0.1:80')


def _tool(*args):
  return [sys.executable, os.path.join(REPO_ROOT, 'tools', 'data_service'),
          *args]


@pytest.mark.slow
def test_tool_serves_until_terminated_then_ends_in_one_line(builder):
  process = subprocess.Popen(
      _tool('--port=0', '--num_workers=1'), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  lines, errors = queue.Queue(), []
  threading.Thread(target=lambda: [lines.put(line) for line in process.stdout],
                   daemon=True).start()
  # Drained all along, so that TensorFlow's lines cannot fill the pipe.
  reader = threading.Thread(target=lambda: errors.extend(process.stderr),
                            daemon=True)
  reader.start()
  try:
    dispatcher = lines.get(timeout=TIMEOUT_S).strip()
    assert dispatcher.startswith('dispatcher: grpc://localhost:')
    assert lines.get(timeout=TIMEOUT_S).startswith('worker 0: registered')
    address = dispatcher.split()[-1]
    served = _examples(builder.as_dataset('val', with_metadata=True,
                                          data_service=address))
    assert served == _examples(builder.as_dataset('val', with_metadata=True))
    assert process.poll() is None  # still serving
  finally:
    process.terminate()  # SIGTERM, as a job scheduler stops it
    process.wait(timeout=TIMEOUT_S)
  reader.join(timeout=TIMEOUT_S)
  # README, "Faults": SIGTERM in any tool ends in one line, exit code 130.
  assert process.returncode == 130, errors
  stderr = ''.join(errors)
  assert 'Traceback' not in stderr, stderr
  assert stderr.strip().splitlines()[-1] == (
      'interrupted; rerun the same command to resume'), stderr


@pytest.mark.slow
def test_tool_reports_a_bad_address_in_one_line():
  process = subprocess.run(_tool('--dispatcher_address=localhost'),
                           capture_output=True, text=True,
                           timeout=TIMEOUT_S, check=False)
  assert process.returncode != 0
  last = process.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and 'is not HOST:PORT' in last
  assert 'Traceback' not in process.stderr
