"""A tf.data service that goes away: training says it is waiting, gives up
after --data_service_timeout with one line, and a rerun resumes."""

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO_ROOT
from conftest import assert_one_line_error
from records import write_dataset
from xray_tfdata import data_service

TIMEOUT_S = 600  # bounds a hang only: a loaded host is slow to reach epoch 1


def _wait_for(condition, seconds=10):
  deadline = time.monotonic() + seconds
  while not condition():
    assert time.monotonic() < deadline
    time.sleep(0.05)


def test_watchdog_says_it_is_waiting_then_gives_up_once():
  lines, errors = [], []
  dog = data_service.Watchdog('localhost:5050', timeout=1, interval=0.25,
                              log=lines.append, on_timeout=errors.append)
  dog.start()
  try:
    _wait_for(lambda: errors)
    time.sleep(0.3)  # more than the thread's poll: no second error comes
  finally:
    dog.stop()
  assert len(errors) == 1
  assert errors[0].startswith('error: no training data from the tf.data '
                              'service at grpc://localhost:5050')
  assert 'rerun the same command' in errors[0] and '\n' not in errors[0]
  assert len(lines) >= 2
  assert all(l.startswith('waiting for the tf.data service at '
                          'grpc://localhost:5050') for l in lines)


def test_watchdog_is_quiet_while_batches_come():
  lines, errors = [], []
  dog = data_service.Watchdog('localhost:5050', timeout=1, interval=0.5,
                              log=lines.append, on_timeout=errors.append)
  dog.start()
  try:
    for _ in range(10):  # two intervals
      dog.progress()
      time.sleep(0.1)
  finally:
    dog.stop()
  assert not lines and not errors


def test_watchdog_waits_longer_for_the_first_batch_and_not_while_paused():
  errors = []
  dog = data_service.Watchdog('localhost:5050', timeout=0.5, interval=0.25,
                              log=lambda line: None, on_timeout=errors.append,
                              first_batch_grace=1.0)
  dog.start()
  try:
    time.sleep(1.0)  # past the timeout, within the first batch's grace
    assert not errors
    dog.progress()  # the first batch: no grace any more
    dog.pause()  # validation, checkpoints
    time.sleep(0.75)  # past the timeout
    assert not errors
    dog.progress()
    _wait_for(lambda: errors)
  finally:
    dog.stop()
  assert len(errors) == 1


def test_the_first_batch_keeps_its_grace_when_fit_begins_an_epoch():
  # fit calls on_epoch_begin before the first (compiling) step: that must not
  # end the first batch's grace (under load the compile outlasted a short
  # --data_service_timeout, and training gave up before its first epoch).
  from xray_tfdata import callbacks  # pylint: disable=g-import-not-at-top
  errors = []
  dog = data_service.Watchdog('localhost:5050', timeout=0.5, interval=0.25,
                              log=lambda line: None, on_timeout=errors.append,
                              first_batch_grace=1.5)
  progress = callbacks.DataServiceProgress(dog)
  dog.start()
  try:
    progress.on_epoch_begin(0)
    time.sleep(1.0)  # past the timeout, within the grace
    assert not errors
    progress.on_train_batch_end(0)  # the first batch came: no grace now
    progress.on_test_begin()
    progress.on_test_end()
    progress.on_epoch_end(0)
    progress.on_epoch_begin(1)
    _wait_for(lambda: errors, seconds=1.4)  # the plain timeout, not 2 s
  finally:
    dog.stop()
  assert len(errors) == 1


@pytest.mark.slow
def test_training_against_no_dispatcher_ends_in_one_line(tmp_path):
  data_dir = str(tmp_path / 'data')
  os.makedirs(data_dir)
  write_dataset(data_dir, {'train': (4, 4), 'val': (2, 2), 'test': (2, 2)},
                num_shards=2, size=(16, 16))
  with socket.socket() as probe:  # a port nothing listens on
    probe.bind(('localhost', 0))
    address = f'localhost:{probe.getsockname()[1]}'
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'tools', 'train'),
       f'--data_dir={data_dir}', f'--model_dir={tmp_path / "model"}',
       '--image_size=16', '--batch_size=2', '--epochs=1', '--weights=none',
       '--backbone=mini_vgg', '--dense_units=8', '--augmentation=none',
       '--verbose=0', f'--data_service={address}'],
      capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
  assert_one_line_error(result, 'cannot reach the tf.data service dispatcher',
                        address)


@pytest.fixture(params=['silent', 'closing'])
def not_a_dispatcher(request):
  """'localhost:PORT' of a server that accepts TCP connections and then
  never answers ('silent') or closes them at once ('closing')."""
  server = socket.socket()
  server.bind(('localhost', 0))
  server.listen(16)
  accepted = []  # kept open, unanswered, until the test ends

  def serve():
    while True:
      try:
        connection, _ = server.accept()
      except OSError:  # the test ended
        return
      if request.param == 'closing':
        connection.close()
      else:
        accepted.append(connection)

  threading.Thread(target=serve, daemon=True).start()
  yield f'localhost:{server.getsockname()[1]}'
  server.close()
  for connection in accepted:
    connection.close()


def test_a_server_that_accepts_but_is_no_dispatcher_is_named(
    not_a_dispatcher):
  start = time.monotonic()
  with pytest.raises(data_service.DataServiceError) as error:
    data_service.check_reachable(f'grpc://{not_a_dispatcher}', seconds=1)
  assert time.monotonic() - start < 10
  message = str(error.value)
  assert message.startswith(f'grpc://{not_a_dispatcher} accepted the '
                            'connection but did not answer as a tf.data '
                            'service dispatcher')
  assert 'tools/data_service' in message and '\n' not in message


@pytest.mark.slow
def test_training_against_a_server_that_never_answers_ends_in_one_line(
    tmp_path, not_a_dispatcher):
  # Before check_reachable asked for a dispatcher's answer, tools/train
  # waited here for ever, silently, inside `distribute`'s registration.
  data_dir = str(tmp_path / 'data')
  os.makedirs(data_dir)
  write_dataset(data_dir, {'train': (4, 4), 'val': (2, 2), 'test': (2, 2)},
                num_shards=2, size=(16, 16))
  model_dir = tmp_path / 'model'
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'tools', 'train'),
       f'--data_dir={data_dir}', f'--model_dir={model_dir}',
       '--image_size=16', '--batch_size=2', '--epochs=1', '--weights=none',
       '--backbone=mini_vgg', '--dense_units=8', '--augmentation=none',
       '--verbose=0', f'--data_service={not_a_dispatcher}',
       '--data_service_timeout=3'],
      capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
  assert result.returncode == data_service.TIMEOUT_EXIT_CODE, result.stderr
  assert_one_line_error(result, 'did not answer as a tf.data service '
                        'dispatcher', not_a_dispatcher, 'tools/data_service')
  assert not os.path.exists(model_dir / 'results.json')
  assert not os.path.exists(model_dir / 'backup')


def _launch_service():
  """Starts tools/data_service with a dispatcher and a worker; (process,
  its stdout lines) for `_service_address`."""
  process = subprocess.Popen(
      [sys.executable, os.path.join(REPO_ROOT, 'tools', 'data_service'),
       '--port=0', '--num_workers=1'], stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL, text=True, start_new_session=True)
  lines = queue.Queue()
  threading.Thread(target=lambda: [lines.put(l) for l in process.stdout],
                   daemon=True).start()
  return process, lines


def _service_address(lines):
  """The address of a launched service once its worker has registered."""
  address = lines.get(timeout=TIMEOUT_S).split()[-1]
  assert lines.get(timeout=TIMEOUT_S).startswith('worker 0: registered')
  return address


@pytest.mark.slow
def test_training_stops_when_the_service_dies_and_a_rerun_resumes(tmp_path):
  data_dir = str(tmp_path / 'data')
  os.makedirs(data_dir)
  write_dataset(data_dir, {'train': (16, 16), 'val': (4, 4), 'test': (4, 4)},
                num_shards=4, size=(16, 16), learnable=True)
  model_dir = str(tmp_path / 'model')

  def train(address, timeout):
    return [sys.executable, os.path.join(REPO_ROOT, 'tools', 'train'),
            f'--data_dir={data_dir}', f'--model_dir={model_dir}',
            '--image_size=16', '--batch_size=4', '--epochs=6',
            '--weights=none', '--backbone=mini_vgg', '--dense_units=8',
            '--augmentation=none', '--early_stopping_patience=10',
            '--bootstrap_resamples=100', '--verbose=0',
            f'--data_service={address}', f'--data_service_timeout={timeout}']

  service, lines = _launch_service()
  address = _service_address(lines)
  # A short timeout, tried only on a dead service: the service is killed once
  # epoch 1 is recorded, and before that the first (compiling) step has its
  # grace and the epoch's other batches wait in the shuffle buffer.
  trainer = subprocess.Popen(train(address, 4), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  try:
    history = os.path.join(model_dir, 'history.csv')
    deadline = time.monotonic() + TIMEOUT_S
    while not (os.path.exists(history) and
               len(open(history).read().splitlines()) >= 2):
      assert trainer.poll() is None, trainer.communicate()
      assert time.monotonic() < deadline
      time.sleep(0.1)
  except BaseException:
    trainer.kill()  # no trainer outlives a failed test
    trainer.communicate()
    raise
  finally:
    os.killpg(service.pid, signal.SIGKILL)  # dispatcher and worker die
    service.wait()
  # The rerun's service, on another port (allowed on resume), starts while
  # the trainer waits out its timeout; nothing talks to it until the rerun.
  service, lines = _launch_service()
  try:
    stdout, stderr = trainer.communicate(timeout=TIMEOUT_S)
    result = subprocess.CompletedProcess(trainer.args, trainer.returncode,
                                         stdout, stderr)
    assert_one_line_error(result, 'no training data from the tf.data service',
                          address)
    assert not os.path.exists(os.path.join(model_dir, 'results.json'))
    with open(os.path.join(model_dir, 'backup', 'state.json')) as f:
      finished = json.load(f)['epoch']
    assert finished >= 1

    address = _service_address(lines)
    # A live service's passes can stall for seconds on a loaded host; the
    # timeout may change on resume (config.RESUMABLE_CHANGES).
    again = subprocess.run(train(address, 120), capture_output=True, text=True,
                           timeout=TIMEOUT_S, check=False)
  finally:
    os.killpg(service.pid, signal.SIGTERM)
    service.wait()
  assert again.returncode == 0, again.stderr
  assert f'resuming {model_dir} after epoch {finished}' in again.stdout
