"""tf.distribute: choosing a strategy, and training on two replicas and on two
workers giving what one device gives.

The comparisons run train_and_evaluate in fresh processes: logical devices
and a multi-worker strategy must be set up before TensorFlow starts, which
the test process has long done.
"""

import csv
import glob
import json
import math
import os
import socket
import subprocess
import sys

import pytest
import tensorflow as tf

from conftest import REPO_ROOT
from records import write_dataset
from xray_tfdata import callbacks
from xray_tfdata import distribute
from xray_tfdata import pipeline
from xray_tfdata import training

SIZE = 32
TIMEOUT_S = 300  # a hung collective fails the test instead of blocking CI

# Runs one training in a fresh process and writes its results to a file of
# the test's (not into model_dir, so that non-chief workers report too).
_RUN = r'''
import json, sys
from xray_tfdata import distribute
config, model_dir, results_path, num_cpus = sys.argv[1:]
if int(num_cpus) > 1:
  distribute.split_cpu(int(num_cpus))  # before TensorFlow starts
from xray_tfdata import training
results = training.train_and_evaluate(
    training.TrainConfig(**json.loads(config)), model_dir)
with open(results_path, 'w') as f:
  json.dump(results, f)
'''

# Full-batch training: each step sees all 24 training images whatever the
# order, on one device, on two replicas (12 each) and on two workers (one
# 12-image shard file each). The runs then differ only in float rounding,
# so they can be held to a tight tolerance; minibatches would also compare
# the order examples arrive in (equal on one host; on two workers each reads
# its own files). No dropout and no augmentation, whose random draws differ
# by replica.
# A backbone frozen whole (only the head trains) halves the run time, and
# mini_vgg's is a fifth faster again than VGG16's (51 s against 62 s for
# the four runs on a 2-core host); what is compared, the replicas' summed
# gradients and the workers' shards, does not depend on it. float32 is
# pinned: the tolerance below was calibrated in float32, and 'auto' picks
# mixed_bfloat16 on AVX512_BF16 hosts, where bf16 rounding differs between
# one device and two replicas by about 4e-5 (issue 14).
CONFIG = dict(image_size=SIZE, batch_size=24, epochs=2, learning_rate=2e-4,
              weights='none', backbone='mini_vgg', frozen_blocks=4,
              dense_units=[16, 8],
              dropout=0.0, augmentation='none', bootstrap_resamples=100,
              verbose=0, policy='float32')

# The replicas' gradients are summed in another order than one device sums
# them, so float32 rounding differs: measured at most 1.2e-7 in the losses
# and metrics of history.csv (over 2 and 3 epochs), none in results.json.
# 1e-5 leaves a margin of about 100x and still catches a real difference: a
# wrong loss scale, a lost or doubled example or unsynchronized weights
# change these numbers by 1e-3 or more.
TOLERANCE = 1e-5


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(('127.0.0.1', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """One device, MirroredStrategy over 2 logical CPUs, and 2 workers of
  MultiWorkerMirroredStrategy on loopback ports, all at once."""
  root = tmp_path_factory.mktemp('distribute')
  data_dir = str(root / 'data')
  os.makedirs(data_dir)
  write_dataset(data_dir, {'train': (10, 14), 'val': (5, 6), 'test': (6, 5)},
                num_shards=2, size=(SIZE, SIZE), learnable=True)
  worker_tmp = root / 'worker_tmp'
  worker_tmp.mkdir()
  env = {k: v for k, v in os.environ.items() if k != 'TF_CONFIG'}
  env.update(TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=REPO_ROOT,
             TMPDIR=str(worker_tmp))
  cluster = {'worker': [f'127.0.0.1:{p}' for p in _free_ports(2)]}
  settings = {
      'one': ('one_device', 1, None),
      'mirrored': ('mirrored', 2, None),
      # 'auto' must find the cluster in TF_CONFIG.
      'worker0': ('auto', 1, {'cluster': cluster,
                              'task': {'type': 'worker', 'index': 0}}),
      'worker1': ('auto', 1, {'cluster': cluster,
                              'task': {'type': 'worker', 'index': 1}}),
  }
  processes = {}
  for name, (strategy, num_cpus, tf_config) in settings.items():
    config = dict(CONFIG, data_dir=data_dir, strategy=strategy)
    run_env = dict(env)
    if tf_config:
      run_env['TF_CONFIG'] = json.dumps(tf_config)
    log = open(root / f'{name}.log', 'w')  # pylint: disable=consider-using-with
    processes[name] = subprocess.Popen(
        [sys.executable, '-c', _RUN, json.dumps(config),
         str(root / name / 'model'), str(root / f'{name}.json'),
         str(num_cpus)],
        env=run_env, stdout=log, stderr=subprocess.STDOUT)
  try:
    for name, process in processes.items():
      process.wait(timeout=TIMEOUT_S)
  finally:
    for process in processes.values():
      if process.poll() is None:
        process.kill()
  for name, process in processes.items():
    if process.returncode:
      with open(root / f'{name}.log') as f:
        pytest.fail(f'{name} exited with {process.returncode}:\n'
                    f'{f.read()[-3000:]}')
  out = {'worker_tmp': str(worker_tmp)}
  for name in settings:
    with open(root / f'{name}.json') as f:
      out[name] = {'model_dir': str(root / name / 'model'),
                   'results': json.load(f)}
  return out


def _history(model_dir):
  with open(os.path.join(model_dir, 'history.csv')) as f:
    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _assert_same_results(got, want, tolerance, where=()):
  """results.json's evaluation parts agree: the same keys and texts, every
  number within tolerance (NaN only where the other is NaN)."""
  if isinstance(want, dict):
    assert isinstance(got, dict) and got.keys() == want.keys(), where
    for key in want:
      _assert_same_results(got[key], want[key], tolerance, where + (key,))
  elif isinstance(want, list):
    assert isinstance(got, list) and len(got) == len(want), where
    for i, (a, b) in enumerate(zip(got, want)):
      _assert_same_results(a, b, tolerance, where + (i,))
  elif isinstance(want, (int, float)) and not isinstance(want, bool):
    if math.isnan(want):
      assert math.isnan(got), where
    else:
      assert got == pytest.approx(want, abs=tolerance), where
  else:
    assert got == want, where


def _assert_same_training(run, reference, history_dir):
  """Same epochs, same losses and probabilities within TOLERANCE, the same
  counts exactly."""
  history = _history(history_dir)
  expected = _history(reference['model_dir'])
  assert len(history) == len(expected) == CONFIG['epochs']
  for row, want in zip(history, expected):
    assert row.keys() == want.keys()
    for key in row:
      assert row[key] == pytest.approx(want[key], abs=TOLERANCE), key
  got, want = run['results'], reference['results']
  # Every split's metrics, counts and intervals, and the thresholds chosen
  # on val (probabilities: the val predictions agree, not just counts).
  assert sorted(want['labels']['PNEUMONIA']['splits']) == ['test', 'train',
                                                           'val']
  for part in ('labels', 'macro'):
    _assert_same_results(got[part], want[part], TOLERANCE, (part,))
  assert got['training']['epochs_run'] == CONFIG['epochs']


@pytest.mark.slow
def test_two_replicas_train_as_one_device(runs):
  mirrored = runs['mirrored']
  assert mirrored['results']['training']['strategy'] == 'MirroredStrategy'
  # Every epoch saw the whole training split, once.
  for row in _history(mirrored['model_dir']):
    assert row['tp'] + row['fp'] + row['tn'] + row['fn'] == 24
    assert row['val_tp'] + row['val_fp'] + row['val_tn'] + row['val_fn'] == 11
  _assert_same_training(mirrored, runs['one'], mirrored['model_dir'])


@pytest.mark.slow
def test_two_workers_train_as_one_device(runs):
  chief, other = runs['worker0'], runs['worker1']
  assert (chief['results']['training']['strategy'] ==
          'MultiWorkerMirroredStrategy')
  for row in _history(chief['model_dir']):
    assert row['tp'] + row['fp'] + row['tn'] + row['fn'] == 24
    assert row['val_tp'] + row['val_fp'] + row['val_tn'] + row['val_fn'] == 11
  _assert_same_training(chief, runs['one'], chief['model_dir'])
  # The weights are synchronized: the other worker computed the same.
  for part in ('labels', 'macro'):
    _assert_same_results(other['results'][part], chief['results'][part], 0,
                         (part,))


@pytest.mark.slow
def test_only_the_chief_writes(runs):
  chief, other = runs['worker0'], runs['worker1']
  for name in ('results.json', 'results.md', 'model.keras', 'config.json',
               'history.csv', callbacks.BEST_WEIGHTS,
               os.path.join('serving', 'saved_model.pb')):
    assert os.path.exists(os.path.join(chief['model_dir'], name)), name
  assert not os.path.exists(os.path.join(chief['model_dir'], 'backup'))
  assert not os.path.exists(other['model_dir'])
  # The other worker's temporary folder is gone.
  assert not glob.glob(os.path.join(runs['worker_tmp'], 'xray_tfdata-*'))


@pytest.mark.parametrize('name, num_workers, num_gpus, expected', [
    ('auto', 1, 0, 'one_device'),
    ('auto', 1, 1, 'one_device'),
    ('auto', 1, 4, 'mirrored'),
    ('auto', 2, 4, 'multi_worker'),
    ('auto', 3, 0, 'multi_worker'),
    ('mirrored', 3, 0, 'mirrored'),
    ('one_device', 1, 8, 'one_device'),
])
def test_auto_picks_by_workers_then_gpus(name, num_workers, num_gpus,
                                         expected):
  assert distribute.resolve_strategy_name(name, num_workers,
                                          num_gpus) == expected


def test_unknown_strategy_is_refused():
  with pytest.raises(distribute.DistributeError, match='strategy must be'):
    distribute.make_strategy('tpu')
  assert distribute.make_strategy('one_device') is tf.distribute.get_strategy()


@pytest.mark.parametrize('text, error', [
    ('{"cluster": ', 'not valid JSON'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}}', 'names a cluster but no task'),
])
def test_bad_tf_config_is_refused(monkeypatch, text, error):
  monkeypatch.setenv('TF_CONFIG', text)
  with pytest.raises(distribute.DistributeError, match=error):
    distribute.make_strategy('auto')


def test_cluster_size_counts_chief_and_workers():
  config = {'cluster': {'chief': ['a:1'], 'worker': ['b:1', 'c:1'],
                        'ps': ['d:1']}}
  assert distribute.cluster_size(config) == 3
  assert distribute.cluster_size({}) == 0


@pytest.mark.parametrize('task_type, task_id, cluster, chief', [
    (None, None, {}, True),
    ('worker', 0, {'worker': ['a', 'b']}, True),
    ('worker', 1, {'worker': ['a', 'b']}, False),
    ('chief', 0, {'chief': ['a'], 'worker': ['b']}, True),
    ('worker', 0, {'chief': ['a'], 'worker': ['b']}, False),
])
def test_chief_is_the_chief_task_or_worker_zero(task_type, task_id, cluster,
                                                chief):
  assert distribute.task_is_chief(task_type, task_id, cluster) == chief


class _FakeMultiWorker:
  """Stands for a strategy of a cluster without starting one."""

  def __init__(self, num_workers, index):
    spec = tf.train.ClusterSpec(
        {'worker': [f'127.0.0.1:{1000 + i}' for i in range(num_workers)]})
    self.cluster_resolver = (
        tf.distribute.cluster_resolver.SimpleClusterResolver(
            spec, task_type='worker', task_id=index))


def test_workers_and_write_dirs(tmp_path):
  model_dir = str(tmp_path / 'model')
  assert distribute.num_workers(tf.distribute.get_strategy()) == 1
  assert distribute.write_dir(model_dir, tf.distribute.get_strategy()) == (
      model_dir)
  assert distribute.num_workers(_FakeMultiWorker(3, 0)) == 3
  assert distribute.write_dir(model_dir, _FakeMultiWorker(3, 0)) == model_dir
  other = distribute.write_dir(model_dir, _FakeMultiWorker(3, 2))
  assert other != model_dir and os.path.isdir(other)
  assert 'worker2' in os.path.basename(other)


def test_too_few_shards_for_the_workers(tmp_path):
  write_dataset(str(tmp_path), {'train': (3, 3), 'val': (2, 2)},
                num_shards=2, size=(8, 8))
  builder = pipeline.DatasetBuilder(str(tmp_path))
  distribute.check_shards(builder, 'train', _FakeMultiWorker(2, 1))
  with pytest.raises(distribute.DistributeError,
                     match=r"'train' .* has 2 shard files for 3 workers.*"
                     r'--num_shards=3'):
    distribute.check_shards(builder, 'train', _FakeMultiWorker(3, 1))


def test_split_cpu_after_tensorflow_started_is_refused():
  tf.config.list_logical_devices()  # starts TensorFlow if nothing has yet
  with pytest.raises(distribute.DistributeError, match='fresh process'):
    distribute.split_cpu(2)


@pytest.mark.parametrize('overrides, message', [
    ({'strategy': 'tpu'}, 'strategy must be one of'),
    ({'data_service': 'localhost'}, 'is not HOST:PORT'),
])
def test_bad_distribution_settings(tmp_path, overrides, message):
  config = training.TrainConfig(data_dir=str(tmp_path), **overrides)
  with pytest.raises(training.TrainingError, match=message):
    config.validate()


@pytest.mark.slow
def test_train_tool_reports_a_bad_tf_config_in_one_line(tmp_path):
  env = dict(os.environ, TF_CONFIG='{"cluster": ', TF_CPP_MIN_LOG_LEVEL='2')
  process = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'tools', 'train'),
       f'--data_dir={tmp_path}', f'--model_dir={tmp_path / "model"}'],
      env=env, capture_output=True, text=True, timeout=120, check=False)
  assert process.returncode != 0
  lines = process.stderr.strip().splitlines()
  assert lines[-1].startswith('error: TF_CONFIG is not valid JSON')
  assert 'Traceback' not in process.stderr


# Each replica transforms the same four images; prints, per replica, the
# images as a list, then whether a second step changed replica 0's draws.
_REPLICA_AUGMENT = r'''
import json
from xray_tfdata import distribute
distribute.split_cpu(2)  # before TensorFlow starts
import numpy as np
import tensorflow as tf
from xray_tfdata import augment
strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
with strategy.scope():
  layer = augment.RandomAffine(rotation_range=40, width_shift_range=0.3,
                               zoom_range=0.4, horizontal_flip=True, seed=1)
image = np.arange(16 * 16, dtype=np.float32).reshape(1, 16, 16, 1)
batch = np.tile(image, (8, 1, 1, 1))  # 4 per replica, all the same image
dist = strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensors(batch).unbatch().batch(8).repeat(2))
step = tf.function(
    lambda b: strategy.run(lambda x: layer(x, training=True), args=(b,)))
outputs = [[r.numpy() for r in strategy.experimental_local_results(step(b))]
           for b in dist]
print(json.dumps({
    'replicas_differ': bool(not np.allclose(outputs[0][0], outputs[0][1])),
    'steps_differ': bool(not np.allclose(outputs[0][0], outputs[1][0])),
    'images_differ': bool(not np.allclose(outputs[0][0][0], outputs[0][0][1])),
}))
'''


@pytest.mark.slow
def test_random_affine_draws_differ_between_replicas():
  # A mirrored SeedGenerator gives every replica the same state; without the
  # replica id folded in, image i of each replica got the same transform.
  process = subprocess.run(
      [sys.executable, '-c', _REPLICA_AUGMENT], cwd=REPO_ROOT,
      capture_output=True, text=True, timeout=TIMEOUT_S, check=True)
  flags = json.loads(process.stdout.strip().splitlines()[-1])
  assert flags == {'replicas_differ': True, 'steps_differ': True,
                   'images_differ': True}
