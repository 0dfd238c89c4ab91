"""tf.distribute for training: which strategy, who writes, and what Keras needs.

  strategy = distribute.make_strategy('auto')      # first thing in the process
  with strategy.scope():
    net = ...                                       # build and compile
  distribute.prepare_model(net, train_ds.element_spec)
  net.fit(train_ds, ...)                            # batches at the global size

One device; MirroredStrategy over the GPUs of one host; or
MultiWorkerMirroredStrategy over several hosts, each running the same program
with its own TF_CONFIG:

  TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
              "task": {"type": "worker", "index": 0}}'

Keras splits each global batch across the replicas and all-reduces the
gradients; under several workers each worker's input pipeline reads its own
shard files (AutoShardPolicy.FILE, set by `pipeline.DatasetBuilder`), so the
training split needs at least as many shards as workers (`check_shards`);
evaluation splits are split by batch instead (`shard_by_batch`).

Only the chief writes into model_dir. The other workers run the same saves
(saving may involve collective ops that need every worker) into a temporary
folder of their own, as the TensorFlow multi-worker Keras tutorial does.

Known limits under Keras 3.15: layers drawing from a keras.random seed
generator (Dropout, augment.RandomAffine) draw the same numbers on every
replica, so example i of each replica's part of a batch gets the same mask
or transform; BatchNormalization normalizes with per-replica statistics
unless built with synchronized=True.
"""

import atexit
import json
import os
import shutil
import tempfile

import tensorflow as tf

from xray_tfdata import checks
from xray_tfdata import errors


class DistributeError(errors.XrayError):
  """A user-caused problem with the strategy, the cluster or the shards."""


def tf_config():
  """The TF_CONFIG environment variable as a dict ({} when unset).

  Raises:
    DistributeError: TF_CONFIG is not JSON, or names a cluster but no task.
  """
  text = os.environ.get('TF_CONFIG', '')
  if not text.strip():
    return {}
  try:
    config = json.loads(text)
  except json.JSONDecodeError as e:
    raise DistributeError(f'TF_CONFIG is not valid JSON ({e}); see the '
                          'README for its format') from e
  if config.get('cluster') and 'task' not in config:
    raise DistributeError('TF_CONFIG names a cluster but no task: add '
                          '"task": {"type": "worker", "index": N}')
  return config


def cluster_size(config):
  """Number of training workers (chief included) a TF_CONFIG dict names."""
  cluster = config.get('cluster', {})
  return len(cluster.get('chief', [])) + len(cluster.get('worker', []))


def resolve_strategy_name(name, num_workers, num_gpus):
  """What 'auto' means: several workers in TF_CONFIG -> 'multi_worker',
  else several GPUs -> 'mirrored', else 'one_device'. Other names pass.

  Raises:
    DistributeError: an unknown name.
  """
  if name not in checks.STRATEGIES:
    raise DistributeError('strategy must be one of '
                          f'{", ".join(checks.STRATEGIES)}, '
                          f'got {name!r}')
  if name != 'auto':
    return name
  if num_workers > 1:
    return 'multi_worker'
  return 'mirrored' if num_gpus > 1 else 'one_device'


def split_cpu(num_devices):
  """Splits the host CPU into `num_devices` logical devices.

  For tests and demos of MirroredStrategy without GPUs:
  `make_strategy('mirrored')` then has one replica per logical CPU. It must
  run before TensorFlow initializes its devices, that is before any op,
  dataset, model or strategy is created: call it first in a fresh process.

  Returns:
    The logical CPU device names.
  Raises:
    DistributeError: TensorFlow has already initialized its devices.
  """
  cpu = tf.config.list_physical_devices('CPU')[0]
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
  except RuntimeError as e:
    raise DistributeError(
        'split_cpu() must run before TensorFlow initializes its devices: '
        'call it first, in a fresh process') from e
  return [d.name for d in tf.config.list_logical_devices('CPU')]


class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
  """tf.distribute.MultiWorkerMirroredStrategy, plus what Keras 3 needs.

  Keras 3.15's train and test steps average each replica's scalar logs with
  `strategy.reduce('MEAN', value, axis=0)`, which fails for scalars under this
  strategy (keras-team/keras#20585; MirroredStrategy takes another path). A
  scalar has no batch axis to reduce, so it is reduced across replicas only.
  """

  def reduce(self, reduce_op, value, axis):
    if axis is not None and all(
        v.shape.rank == 0 for v in self.experimental_local_results(value)):
      axis = None
    return super().reduce(reduce_op, value, axis)


def make_strategy(name='auto', devices=None):
  """Returns a tf.distribute strategy.

  Args:
    name: 'auto' (see `resolve_strategy_name`), 'one_device' (the default
      strategy), 'mirrored' (MirroredStrategy over the local GPUs, or over
      `devices`) or 'multi_worker' (MultiWorkerMirroredStrategy from
      TF_CONFIG; without TF_CONFIG, one worker).
    devices: device names for 'mirrored', e.g. ['/cpu:0', '/cpu:1'] after
      `split_cpu(2)`; None means all local GPUs (or the CPU without GPUs).

  Returns:
    A `tf.distribute.Strategy`.
  Raises:
    DistributeError: an unknown name, a bad TF_CONFIG, or a multi-worker
      strategy asked for after TensorFlow has started its runtime (it must be
      created first in the process).
  """
  # Physical devices: listing logical ones would initialize the runtime, after
  # which MultiWorkerMirroredStrategy can no longer be created.
  name = resolve_strategy_name(name, cluster_size(tf_config()),
                               len(tf.config.list_physical_devices('GPU')))
  if name == 'one_device':
    return tf.distribute.get_strategy()
  if name == 'mirrored':
    return tf.distribute.MirroredStrategy(devices=devices)
  try:
    return MultiWorkerMirroredStrategy()
  except RuntimeError as e:
    raise DistributeError(
        'MultiWorkerMirroredStrategy must be created before TensorFlow runs '
        f'anything in the process: create it first ({e})') from e


def _task(strategy):
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.task_type:
    return None, None, {}
  return (resolver.task_type, resolver.task_id,
          resolver.cluster_spec().as_dict())


def task_is_chief(task_type, task_id, cluster):
  """The chief: the 'chief' task, or worker 0 of a cluster without one."""
  if task_type is None or task_type == 'chief':
    return True
  return task_type == 'worker' and task_id == 0 and 'chief' not in cluster


def is_chief(strategy):
  """True unless this process is a non-chief worker of a multi-worker run."""
  return task_is_chief(*_task(strategy))


def num_workers(strategy):
  """Training workers (hosts) of the strategy; 1 unless multi-worker."""
  _, _, cluster = _task(strategy)
  return max(1, len(cluster.get('chief', [])) + len(cluster.get('worker', [])))


def check_shards(builder, split, strategy):
  """Checks a training split has a shard file for every worker to read.

  Raises:
    DistributeError: the split has fewer shards than there are workers.
  """
  workers = num_workers(strategy)
  shards = len(builder.info.split(split)['shards'])
  if shards < workers:
    raise DistributeError(
        f'split {split!r} of {builder.data_dir} has {shards} shard files for '
        f'{workers} workers, and each worker reads whole files; re-convert '
        f'with tools/make_tfrecords --num_shards={workers} or more (a '
        'multiple of the number of workers balances them)')


def shard_by_batch(dataset):
  """An evaluation dataset, set to split every batch across the workers.

  Under several workers, tf.distribute shards by file by default (the
  pipeline asks for it): each worker then batches its own files, so the
  workers take more steps than the dataset has batches, while Keras runs as
  many steps as the dataset says it has (examples go unseen), and predictions
  come back in another order than the labels. Sharding by data instead
  splits each global batch between the workers: the same steps, the disk
  order. Every worker reads the whole split and keeps its part, a small cost
  for an evaluation split. Without several workers nothing changes.
  """
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  return dataset.with_options(options)


def write_dir(model_dir, strategy):
  """Where this process writes: model_dir on the chief, else a new
  temporary folder, removed when the process exits."""
  if is_chief(strategy):
    return model_dir
  task_type, task_id, _ = _task(strategy)
  path = tempfile.mkdtemp(prefix=f'xray_tfdata-{task_type}{task_id}-')
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  return path


def gather(strategy, values):
  """Every replica's integer `values`, gathered on every worker.

  A collective: every worker must call it, in the same order as the others.
  Under one worker it returns `values` once per local replica.

  Returns:
    int64 array [num_replicas, len(values)].
  """
  local = tf.constant([list(values)], tf.int64)
  per_replica = strategy.experimental_distribute_values_from_function(
      lambda _: local)
  return strategy.gather(per_replica, axis=0).numpy()


def prepare_model(net, element_spec):
  """Builds a compiled model's optimizer, loss and metric state up front, and
  stops Keras from reading a batch before fit, evaluate and predict.

  Under an explicit strategy, Keras 3.15 reads one batch before each of
  those (`Model._maybe_symbolic_build`) and averages it across replicas to
  build that state. Under MultiWorkerMirroredStrategy the average fails for
  (image, label) batches (keras-team/keras#20585); under any strategy the
  extra read starts one more iteration of the dataset, which advances its
  seeded reshuffle, so the same seed trains on another order than on one
  device. Without a strategy this does nothing.

  Args:
    net: a compiled Keras model, built under the strategy's scope.
    element_spec: the training dataset's `element_spec` (only shapes and
      dtypes are used).
  """
  # pylint: disable=protected-access
  # Keras keeps the strategy it was built under, None for the default one.
  strategy = net._distribute_strategy
  if strategy is None:
    return
  with strategy.scope():
    net._symbolic_build(data_batch=element_spec)
  # Everything is built, so skipping the read loses nothing.
  net._maybe_symbolic_build = _built_already


def _built_already(iterator=None, data_batch=None):
  del iterator, data_batch
