"""train_and_evaluate(): the reference experiment end to end.

Reads the TFRecords, builds the mixed-precision VGG16 with device-side
augmentation, trains with class weights and early stopping, survives kill -9
(it resumes from the last finished epoch), evaluates train, val and test,
writes the results table, and exports the model. The stages live in their
own modules: `resume` (config.json, backup/), `callbacks`, `evaluation`,
`serving` (export and prediction), `demo` (the synthetic dataset).

One path for every dataset: the model has one sigmoid output per label
(`target_names`: a class dataset's one label, PNEUMONIA; a multi-label
dataset's --labels, all by default, on the targets of --label_policy, of
the views --views keeps), trained on the masked loss of `losses`, whose
per-label weights of negatives and positives (`label_weights`) come with
the training batches: the reference's 'balanced' class weights on a class
dataset (--class_weights), none or a capped ratio on a multi-label one
(--label_weights). config.json records the labels in output order
('label_names').

Files in model_dir while a run is going, and after:
  config.json          the settings and the dataset's fingerprint; a rerun
                       with other settings, or on a dataset converted again
                       from other images, is refused.
  backup/              resume state (weights, optimizer, callback state).
  checkpoints/best.weights.h5   best epoch so far by val_loss.
  logs/                TensorBoard.
  history.csv          one row per epoch.
  model.keras          the trained model (best weights).
  serving/             SavedModel: encoded JPEG/PNG bytes -> P(pneumonia).
  augmentation_preview.png   training images under the augmentation, first.
  roc.png, pr.png, reliability.png, confusion.png,
  training_curves.png  the evaluation's pictures (`evaluation.plots`, a
                       panel per label), linked from results.md.
  results.json, results.md   written last (`evaluation.run`; README,
                       "results.json"); results.json marks a finished run.
  evaluation/<data>-<split>/  what tools/evaluate writes, later.
Next to it, <model_dir>.lock while a run writes it: one trainer at a time.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from xray_tfdata import atomic
from xray_tfdata import augment
from xray_tfdata import cache as cache_lib
from xray_tfdata import checks
from xray_tfdata import callbacks as callbacks_lib
from xray_tfdata import data_service as data_service_lib
from xray_tfdata import demo
from xray_tfdata import distribute
from xray_tfdata.evaluation import run as evaluation_run
from xray_tfdata import losses
from xray_tfdata import mixture
from xray_tfdata import model as model_lib
from xray_tfdata import pipeline
from xray_tfdata import report
from xray_tfdata import resume as resume_lib
from xray_tfdata import serving
from xray_tfdata import trunk_cache
from xray_tfdata.config import RESUMABLE_CHANGES
from xray_tfdata.config import TrainConfig  # pylint: disable=unused-import  # the README's training.TrainConfig
from xray_tfdata.config import TrainingError
from xray_tfdata.run_dir import RESULTS_MD

# Next to model_dir while a run writes it (see lock_model_dir).
MODEL_DIR_LOCK_SUFFIX = '.lock'
EVAL_SPLITS = ('train', 'val', 'test')
# Seconds the data-service watchdog adds for the first training step, which
# also traces and compiles the model (see data_service.Watchdog).
FIRST_BATCH_GRACE_S = 120
# Below this many known positives or negatives of a label in val or test,
# its AUC and Youden threshold are too rough to compare runs by: at an AUC
# of 0.9 with 30 of each, the AUC's standard error (Hanley and McNeil,
# Radiology 1982) is already about 0.04, a 95% interval of +-0.08, and one
# example moves sensitivity or specificity by over 3 points.
MIN_EXAMPLES_PER_CLASS = 30
# Under 50 known training positives a label gives a network little to
# learn from (issue 31).
MIN_TRAIN_POSITIVES = 50


def train_and_evaluate(config, model_dir, overwrite=False):
  """Trains and evaluates the reference model; the library's main entry.

  Under MultiWorkerMirroredStrategy every worker calls this with the same
  arguments. Only the chief writes into model_dir; the others write into a
  temporary folder of their own. Resuming needs model_dir on a file system
  every worker reads (NFS, gs://).

  Args:
    config: a TrainConfig.
    model_dir: where checkpoints, logs, the model and the results go.
    overwrite: replace a finished run or an unfinished one with other
      settings.

  Returns:
    The results dict also written to model_dir/results.json.

  Raises:
    TrainingError, pipeline.DatasetError, model.WeightsError,
      distribute.DistributeError, cache.CacheError: bad settings or data,
      before anything is written into model_dir.
    atomic.NoSpaceError: the disk filled up; the last finished epoch is
      kept and a rerun after freeing space resumes from it.
    atomic.LockedError: another run is writing model_dir.
  """
  # First, as it costs nothing: a file in model_dir's place is a mistyped
  # flag, and no data should be drawn or converted for it.
  resume_lib.check_model_dir_path(model_dir)
  config.validate()
  # Before config.json: a cache_dir that cannot be written would otherwise
  # fail only when the first pipeline is built.
  cache_lib.check_cache_dir(config.cache_dir)
  # Before anything else in TensorFlow: a multi-worker strategy must exist
  # before TensorFlow starts its runtime.
  cluster = create_cluster(config.strategy)
  with lock_model_dir(model_dir, cluster):
    return _train_and_evaluate(config, model_dir, overwrite, cluster)


def lock_model_dir(model_dir, cluster):
  """One trainer per model_dir: the chief holds `<model_dir>.lock`.

  A second run on the same model_dir (a resubmitted job, a double click)
  would write the same checkpoints and history and leave a finished-looking
  mix of both runs. The lock is the converter's (`atomic.exclusive`: flock,
  released by the kernel when its holder dies, so a killed run never blocks
  its rerun), not HDF5's file locking, which NFS setups turn off. Next to
  model_dir, not in it: --overwrite removes model_dir. Only the chief locks;
  the other workers of a multi-worker run write elsewhere.

  Returns:
    A context manager holding the lock (a no-op on the other workers).

  Raises:
    TrainingError: model_dir's parent folder cannot be created.
    atomic.LockedError: on entry, when another process holds the lock; its
      message names that process's pid.
  """
  if not cluster.chief:
    return contextlib.nullcontext()
  path = os.path.abspath(model_dir).rstrip(os.sep)
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
  except OSError as e:
    raise TrainingError(
        f'cannot create the folder {os.path.dirname(path)} of --model_dir: '
        f'{e.strerror}; choose another --model_dir') from None
  return atomic.exclusive(path + MODEL_DIR_LOCK_SUFFIX,
                          f'--model_dir {model_dir}')


def _train_and_evaluate(config, model_dir, overwrite, cluster):
  """train_and_evaluate's stages, under the model_dir lock."""
  if config.demo_images:
    demo.ensure_demo_data(config.data_dir, config.demo_images,
                          config.image_size, config.seed)
  builder = open_dataset(config)
  check_against_dataset(config, builder, cluster)
  if config.views:
    print(builder.view_filter_line(config.views, EVAL_SPLITS), flush=True)
  work_dir, resuming = prepare_work_dir(model_dir, config, overwrite, cluster,
                                        builder.info,
                                        target_names(config, builder))

  keras.utils.set_random_seed(config.seed)
  policy = model_lib.select_policy(config.policy)
  keras.mixed_precision.set_global_policy(policy)
  inputs = create_inputs(config, builder, model_dir)
  net = create_model(config, cluster, inputs.train.element_spec,
                     inputs.label_names)
  if cluster.chief:  # what the model will see, before it trains
    report.preview_augmentation(work_dir, builder, config)
  state = resume_lib.ResumeState(
      os.path.join(work_dir, resume_lib.BACKUP_DIR))
  callbacks = callbacks_lib.make_callbacks(
      net, config, work_dir, state, inputs.steps * config.batch_size,
      resume=resuming)
  initial_epoch = resume_epoch(state, resuming, work_dir, cluster)
  if initial_epoch:
    print(f'resuming {model_dir} after epoch {initial_epoch}')

  stopped = resuming and state.stopped()
  print('early stopping had already ended this run; evaluating' if stopped
        else training_header(policy, cluster, inputs, config,
                             builder.info))
  warning = small_label_warning(builder, config, inputs.label_names)
  if warning:
    print(warning, flush=True)
  if not stopped:
    fit(net, inputs, callbacks, config, initial_epoch, work_dir, builder)

  best_path = os.path.join(work_dir, callbacks_lib.BEST_WEIGHTS)
  if os.path.exists(best_path):
    net.load_weights(best_path)  # restore the best epoch by val_loss
  print('evaluating the best epoch on train, val and test', flush=True)
  results, predictions = evaluate_splits(net, builder, config, work_dir)
  results['training'] = {
      'policy': policy, 'strategy': type(cluster.strategy).__name__,
      'epochs_run': state.epoch()}
  print(f'exporting {serving.MODEL_FILE} and {serving.SERVING_DIR}/',
        flush=True)
  with atomic.naming(work_dir):
    # Serving returns the calibrated P with the Youden threshold on its scale.
    serving.export_model(net, work_dir, config.image_size,
                         calibration=serving.calibration_of(results))
  table = write_results(results, predictions, work_dir)
  state.clear()
  if not cluster.chief:
    shutil.rmtree(work_dir, ignore_errors=True)
  print(table)
  if cluster.chief:
    print(f'wrote {model_dir}: {RESULTS_MD} (the table above), '
          f'{resume_lib.RESULTS_JSON}, '
          f'{serving.MODEL_FILE}, {serving.SERVING_DIR}/ (for tools/predict), '
          f'{callbacks_lib.HISTORY_CSV}, {callbacks_lib.LOGS_DIR}/ '
          '(TensorBoard)')
  return results


@dataclasses.dataclass(frozen=True)
class Cluster:
  """The tf.distribute strategy and this process's place in it."""
  strategy: tf.distribute.Strategy
  name: str  # 'one_device', 'mirrored' or 'multi_worker', as --strategy
  chief: bool  # the one process that writes into model_dir
  num_workers: int

  @property
  def multi_worker(self):
    return self.num_workers > 1

  def describe(self):
    """E.g. 'mirrored (2 devices)', 'multi_worker (2 workers, 4 devices)'."""
    devices = self.strategy.num_replicas_in_sync
    parts = [f'{devices} device{"s" if devices != 1 else ""}']
    if self.multi_worker:
      parts.insert(0, f'{self.num_workers} workers')
    return f'{self.name} ({", ".join(parts)})'

  def barrier(self):
    """Waits until every worker gets here (a collective, like gather)."""
    if self.multi_worker:
      distribute.gather(self.strategy, [0])


def create_cluster(strategy_name):
  """Creates the strategy; call it before anything else in TensorFlow.

  Args:
    strategy_name: a --strategy value (see `distribute.make_strategy`).

  Returns:
    A Cluster.

  Raises:
    distribute.DistributeError: see `distribute.make_strategy`.
  """
  strategy = distribute.make_strategy(strategy_name)
  # Named by what was made, so 'auto' shows what it chose.
  if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    name = 'multi_worker'
  elif isinstance(strategy, tf.distribute.MirroredStrategy):
    name = 'mirrored'
  else:
    name = 'one_device'
  return Cluster(strategy=strategy, name=name,
                 chief=distribute.is_chief(strategy),
                 num_workers=distribute.num_workers(strategy))


def open_dataset(config):
  """The DatasetBuilder of config.data_dir, or the Mixture of its datasets.

  Returns:
    A pipeline.DatasetBuilder; of a class dataset, one whose one label is
    config.positive_class (by default the second class name in sorted
    order, PNEUMONIA). Of several datasets (--data_dir=DIR1,DIR2), a
    mixture.Mixture with the builder's surface: the union of their labels
    in the vocabulary (or --labels), each source read under
    --label_policy, resized to --image_size, mixed by --dataset_weights.

  Raises:
    TrainingError: a class dataset has other than two classes.
    pipeline.DatasetError: the dataset cannot be read, or positive_class
      is not one of its classes (or it is multi-label); of several, no
      label in common, an unknown --labels name, weights that do not match.
  """
  if mixture.is_mixture(config.data_dir):
    mix = mixture.Mixture(
        config.data_dir, labels=config.labels or None,
        label_policy=config.label_policy,
        weights=config.dataset_weights or None,
        image_size=config.image_size, reader_policy=config.reader_policy)
    for line in mix.unmapped_lines():
      print(line, flush=True)
    return mix
  builder = pipeline.DatasetBuilder(config.data_dir,
                                    reader_policy=config.reader_policy)
  names = builder.info.class_names
  if len(names) != 2 and not builder.info.is_multilabel:
    raise TrainingError(
        f'{config.data_dir} has {len(names)} class'
        f'{"es" if len(names) != 1 else ""} ({", ".join(names)}); training '
        'is binary and needs exactly two: convert a source with two class '
        'folders (several classes wait for multi-label training)')
  if config.positive_class:
    builder = pipeline.DatasetBuilder(config.data_dir, config.positive_class)
  return builder


def check_against_dataset(config, builder, cluster):
  """Checks the settings against the dataset; the last step before the
  first write into model_dir, so a run that cannot work writes nothing.

  Raises:
    TrainingError: the stored image size differs from config.image_size,
      steps_per_epoch is negative, or a batch is larger than the training
      split.
    pipeline.DatasetError: a split is missing or empty, a shard is
      damaged, or the class names disagree with the records'; an unknown
      label in config.labels, views that keep no image of a split (or
      views of a class dataset), or a label without positives or
      negatives in the training split (with its weights on).
    distribute.DistributeError: fewer training shards than workers.
  """
  info = builder.info
  for split in EVAL_SPLITS:
    # A missing or empty split fails now, not after training.
    info.check_has_examples(split)
  stored = info.image_size
  # A mixture reads every source at --image_size (Mixture.image_size).
  if stored != (config.image_size, config.image_size) and not isinstance(
      builder, mixture.Mixture):
    raise TrainingError(
        f'images in {config.data_dir} are stored at {stored[0]}x{stored[1]}, '
        f'--image_size is {config.image_size}; re-convert with '
        f'tools/make_tfrecords --image_size={config.image_size} or set '
        f'--image_size={stored[0]}')
  # Label names and views known to the dataset, each split keeping some
  # images, each label its weights: one line each, now.
  target_names(config, builder)
  checks.check_against_dataset(
      config, {split: builder.num_examples(split, config.views or None)
               for split in EVAL_SPLITS})
  label_weights(config, builder)
  if not config.data_service:  # the service, not the workers, splits files
    distribute.check_shards(builder, 'train', cluster.strategy)
  # Every record's CRC, now rather than as a DataLossError naming no file
  # mid-fit (what it costs: BUILD_NOTES.md).
  builder.verify(local_splits(config))


def local_splits(config):
  """The splits this process reads itself (the service reads 'train')."""
  return [s for s in EVAL_SPLITS if not (config.data_service and s == 'train')]


def target_names(config, builder):
  """The model's outputs: the label names the run trains on, in order
  (config.labels, or all of the dataset's; a class dataset has one, its
  positive class).

  Raises:
    pipeline.DatasetError: a name the dataset does not have.
  """
  return tuple(builder.label_names(config.labels or None))


def label_options(config, builder):
  """as_dataset's label arguments of the run (a class dataset's records
  store no codes, so no policy applies to them)."""
  return {'label_policy': config.label_policy,
          'labels': target_names(config, builder),
          'views': config.views or None}


def label_weights(config, builder):
  """The training loss's weights of each output's negatives and positives,
  or None when the run trains unweighted.

  Which flag weighs depends on what the records store: a class dataset's
  one label gets the reference's 'balanced' class weights under
  --class_weights (its default; n / (2 n_class), `DatasetInfo.
  class_weights`); a multi-label dataset's labels get none under
  --label_weights=none (its default), or under 'ratio' 1 for negatives and
  negatives / positives among the known training targets of the kept views
  under the policy, capped at --pos_weight_cap (`losses.pos_weights`), for
  positives. (Keras' class_weight would take the argmax of multi-hot
  targets; these weigh each entry, see `create_inputs`.)

  Returns:
    (negative weights, positive weights), one float per output each, or
    None.

  Raises:
    pipeline.DatasetError: a class without examples in the training split,
      or under 'ratio' a label without a positive or a negative among them.
  """
  names = target_names(config, builder)
  if not builder.info.is_multilabel:
    if not config.class_weights:
      return None
    weights = builder.info.class_weights('train')
    return [weights[0]], [weights[1]]
  if config.label_weights == 'none':
    return None
  return [1.0] * len(names), losses.pos_weights(
      builder.target_counts('train', config.label_policy, names,
                            config.views or None), names,
      config.label_policy, cap=config.pos_weight_cap)


def prepare_work_dir(model_dir, config, overwrite, cluster, dataset=None,
                     label_names=()):
  """Records the run in model_dir (the chief) and picks where to write.

  Every worker checks model_dir alike; the chief writes config.json, and
  the others wait for it, then write into a folder of their own seeded with
  the chief's resume state.

  Args:
    model_dir, config, overwrite: as train_and_evaluate's.
    cluster: the run's Cluster.
    dataset: the dataset's pipeline.DatasetInfo, whose fingerprint
      config.json records (see `resume.prepare_model_dir`).
    label_names: the run's outputs (`target_names`), which config.json
      records.

  Returns:
    (work_dir, resuming): where this process writes, and whether it resumes
    an unfinished run.

  Raises:
    TrainingError: see `resume.prepare_model_dir`.
  """
  resuming = resume_lib.prepare_model_dir(model_dir, config, overwrite,
                                          write=cluster.chief,
                                          dataset=dataset,
                                          label_names=label_names)
  cluster.barrier()  # until the chief has done so
  work_dir = distribute.write_dir(model_dir, cluster.strategy)
  chief_backup = os.path.join(model_dir, resume_lib.BACKUP_DIR)
  if work_dir != model_dir and os.path.exists(chief_backup):
    # Resume from the chief's state, saving onwards into work_dir.
    shutil.copytree(chief_backup,
                    os.path.join(work_dir, resume_lib.BACKUP_DIR))
    resuming = True
  return work_dir, resuming


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What fit reads: the datasets (training batches with their weights, if
  any), steps per epoch, the label names, and the weights."""
  train: tf.data.Dataset
  val: tf.data.Dataset
  steps: int
  label_names: tuple  # the model's outputs, in order
  label_weights: tuple = None  # (negative, positive) per output, or None


def create_inputs(config, builder, model_dir):
  """The training and validation datasets, at the global batch size.

  Keras splits each global batch across the replicas. With `label_weights`,
  the training batches are (images, targets, weights [B, L]): each entry's
  weight is its label's negative or positive weight (0 where masked), the
  sample weight `losses.MaskedBinaryCrossentropy` applies per entry. As
  Keras' class_weight, they weigh the training loss only: validation
  batches carry none, so val_loss (early stopping, the best checkpoint) is
  unweighted.

  Returns:
    Inputs.
  """
  options = label_options(config, builder)
  # Repeated: --steps_per_epoch may ask for more or fewer batches than one
  # pass, and an epoch then starts where the last one stopped.
  train = builder.as_dataset('train', config.batch_size, training=True,
                             seed=config.seed, repeat=True,
                             **cache_options(config),
                             **_data_service_options(config, model_dir),
                             **options)
  # Batched validation: the reference validated one image per step.
  val = distribute.shard_by_batch(builder.as_dataset(
      'val', config.batch_size, **cache_options(config), **options))
  steps = (config.steps_per_epoch or builder.steps_per_epoch(
      'train', config.batch_size, views=options['views']))
  weights = label_weights(config, builder)
  if weights is not None:
    train = train.map(entry_weights(*weights),
                      num_parallel_calls=tf.data.AUTOTUNE)
  return Inputs(train=train, val=val, steps=steps,
                label_names=options['labels'], label_weights=weights)


def entry_weights(negative, positive):
  """(images, targets) -> (images, targets, weights [B, L]): per entry,
  its label's positive or negative weight, 0 where masked."""
  negative = tf.constant(negative, tf.float32)
  positive = tf.constant(positive, tf.float32)

  def add(images, targets):
    weights = tf.where(tf.equal(targets, 1.0), positive,
                       tf.where(tf.equal(targets, 0.0), negative, 0.0))
    return images, targets, weights

  return add


def cache_options(config):
  """as_dataset's cache arguments of a run: its --cache_dir and
  --cache_limit, for every pipeline of the run (training, validation,
  the evaluation), so that each splits reads one cache."""
  return {'cache_dir': config.cache_dir or None,
          'cache_limit_bytes': int(config.cache_limit * 2**20)}


def create_model(config, cluster, element_spec, label_names):
  """The compiled model, built under the strategy with its state up front.

  Args:
    config: the run's TrainConfig.
    cluster: the run's Cluster.
    element_spec: the training dataset's element_spec.
    label_names: the run's outputs (`Inputs.label_names`).

  Returns:
    A compiled keras.Model.

  Raises:
    model.WeightsError: the weights cannot be loaded.
  """
  weights = None if config.weights in ('none', '') else config.weights
  with cluster.strategy.scope():
    augmentation = augment.make_augmentation(config.augmentation,
                                             seed=config.seed,
                                             **config.augmentation_kwargs())
    net = model_lib.build_model(
        image_size=config.image_size, weights=weights,
        frozen_blocks=config.frozen_blocks,
        backbone=config.backbone,
        dense_units=tuple(config.dense_units), dropout=config.dropout,
        augmentation=augmentation, num_labels=len(label_names),
        head=config.head)
    model_lib.compile_model(
        net, learning_rate=config.learning_rate,
        jit_compile=config.jit_compile, label_names=label_names)
  distribute.prepare_model(net, element_spec)
  return net


def resume_epoch(state, resuming, work_dir, cluster):
  """The epoch fit starts from; trims history.csv to it.

  Raises:
    TrainingError: the workers of a multi-worker run would resume from
      different epochs.
  """
  initial_epoch = state.epoch() if resuming else 0
  if resuming:
    resume_lib.trim_history(
        os.path.join(work_dir, callbacks_lib.HISTORY_CSV), initial_epoch)
  if cluster.multi_worker:
    # A worker that cannot read the chief's state would start over.
    resumed = distribute.gather(cluster.strategy,
                                [initial_epoch, state.stopped()])
    if (resumed != resumed[0]).any():
      raise TrainingError(
          f'the workers would resume after different epochs '
          f'({sorted(set(resumed[:, 0].tolist()))}): model_dir must be on a '
          'file system every worker reads (NFS, gs://), or pass --overwrite')
  return initial_epoch


def training_header(policy, cluster, inputs, config, info):
  """The line printed before training: what this run does.

  Args:
    policy, cluster, inputs, config: the run's.
    info: the dataset's DatasetInfo (a multi-label dataset's targets follow
      --label_policy; a class dataset's one label is its positive class).
  """
  names = inputs.label_names
  head = model_lib.resolve_head(config.head, config.backbone, len(names))
  labels = (f'--label_policy={config.label_policy}' if info.is_multilabel
            else names[0])
  weights = 'off'
  if inputs.label_weights is not None:
    weights = '(negative/positive) ' + ', '.join(
        f'{name} {negative:.3f}/{positive:.3f}' for name, negative, positive
        in zip(names, *inputs.label_weights))
  return (f'training: policy {policy}, strategy {cluster.describe()}, '
          f'{inputs.steps} steps of {config.batch_size}, augmentation '
          f'{config.augmentation}, {len(names)} label'
          f'{"s" if len(names) != 1 else ""} ({labels}), {head} head, label '
          f'weights {weights}')


def small_label_warning(builder, config, label_names,
                        minimum_train=MIN_TRAIN_POSITIVES,
                        minimum_scored=MIN_EXAMPLES_PER_CLASS):
  """The run's one-line warning naming the labels with too few known
  training positives to be learned (under `minimum_train`) or too few
  known positives or negatives in val or test to be scored (under
  `minimum_scored`; val picks the thresholds, test reports them), under
  the policy, of the kept views; or None.

  A label under either bar is still trained and scored: its AUC is the
  one to distrust, and the line says which.
  """
  def known(split):
    counts = builder.target_counts(split, config.label_policy, label_names,
                                   config.views or None)
    return {name: (counts[name]['positive'], counts[name]['negative'])
            for name in label_names}

  parts = []
  train = known('train')
  rare = [f'{name} {train[name][0]}' for name in label_names
          if train[name][0] < minimum_train]
  if rare:
    parts.append(f'under {minimum_train} training positives (too few to '
                 f'learn): {", ".join(rare)}')
  for split in ('val', 'test'):
    counts = known(split)
    few = [f'{name} {p}+/{n}-' for name, (p, n) in counts.items()
           if min(p, n) < minimum_scored]
    if few:
      parts.append(f'under {minimum_scored} {split} positives or negatives '
                   f'(too few to score): {", ".join(few)}')
  if not parts:
    return None
  fix = ('convert more images (tools/make_tfrecords --resplit with larger '
         '--val_counts and --test_counts)')
  if len(label_names) > 1:
    fix = f'leave them out with --labels, or {fix}'
  return (f'warning: {"; ".join(parts)}; their AUCs and thresholds are '
          f'rough: {fix}')


def fit(net, inputs, callbacks, config, initial_epoch, work_dir, builder):
  """Trains; watches the data service, if any.

  Raises:
    TrainingError: the loss diverged.
    data_service.DataServiceError: the service stopped sending batches.
    atomic.NoSpaceError: the disk filled up.
    pipeline.DamagedShardError: a shard was damaged while training.
  """
  # The frozen trunk's validation features, computed once (trunk_cache);
  # its callback goes first, so every other one sees the val_* logs.
  validation_data, cached = trunk_cache.validation_plan(
      net, inputs.val,
      trunk_cache.validation_key(builder, 'val', label_options(config, builder)),
      num_examples=builder.num_examples('val', config.views or None))
  callbacks = [*cached, *callbacks]
  watchdog = None
  if config.data_service:
    # A service that lost its workers makes fit wait for ever, silently.
    watchdog = data_service_lib.Watchdog(
        config.data_service, config.data_service_timeout,
        first_batch_grace=FIRST_BATCH_GRACE_S)
    callbacks = [callbacks_lib.DataServiceProgress(watchdog), *callbacks]
    watchdog.start()
  # Keras' callbacks (checkpoint, CSV, TensorBoard) name no file when the
  # disk fills; work_dir is where they all write.
  try:
    with atomic.naming(work_dir):
      net.fit(inputs.train, epochs=config.epochs,
              steps_per_epoch=inputs.steps, validation_data=validation_data,
              callbacks=callbacks, initial_epoch=initial_epoch,
              shuffle=False,  # the pipeline shuffles
              # One line per epoch, ours or Keras', never both: 1 is
              # Keras' progress bar, left whole; 2 is EpochSummary alone.
              verbose=1 if config.verbose == 1 else 0)
  except (tf.errors.DataLossError, tf.errors.FailedPreconditionError,
          tf.errors.InvalidArgumentError) as e:
    # A shard damaged after the check before training: tf.data's error
    # names no file, so find the shard, or let the error through as it is.
    damage = pipeline.find_damaged_shard(builder, local_splits(config))
    if damage is None:
      raise
    raise damage from e
  except atomic.NoSpaceError as e:
    # tf.data writing a disk cache: its folder, not work_dir, is full.
    cache_folder = cache_lib.folder_named_by(e)
    if cache_folder:
      raise atomic.NoSpaceError(cache_folder) from e
    # Keras leaves the weights file it failed to write open; closed now,
    # HDF5 stays quiet at exit (see release_h5_files), and it is named.
    released = callbacks_lib.release_h5_files(work_dir)
    if released:
      raise atomic.NoSpaceError(released[0]) from e
    raise
  finally:
    if watchdog is not None:
      watchdog.stop()
  losses = net.history.history.get('loss', []) if net.history else []
  if losses and not np.isfinite(losses[-1]):
    raise TrainingError('training diverged (loss is NaN or inf); lower '
                        '--learning_rate')


def write_results(results, predictions, work_dir):
  """Writes the pictures, results.md, then results.json, which marks the run
  finished (`evaluation.run.write_report`).

  Returns:
    The results.md text.
  """
  return evaluation_run.write_report(
      work_dir, results, predictions,
      os.path.join(work_dir, callbacks_lib.HISTORY_CSV))


def _data_service_options(config, model_dir):
  """as_dataset arguments that read the training split from the service."""
  if not config.data_service:
    return {}
  # One job per run, shared by its workers, so that together they read each
  # example once per epoch; another run (or other settings) gets another.
  settings = {k: v for k, v in config.to_json().items()
              if k not in RESUMABLE_CHANGES}
  digest = hashlib.sha256(json.dumps([model_dir, settings], sort_keys=True)
                          .encode()).hexdigest()[:16]
  return {'data_service': config.data_service,
          'data_service_job': f'xray_tfdata-train-{digest}'}


def evaluate_splits(net, builder, config, work_dir=None):
  """The run's one evaluation (`evaluation.run.evaluate_model`): train, val
  and test predicted once; per label the operating points (the reference's
  0.5, Youden's J, ...) and the temperature chosen on val, every split's
  metrics, val's and test's with patient-level intervals.

  Args:
    net: the trained model.
    builder: the run's dataset.
    config: the run's TrainConfig.
    work_dir: the run's folder: each split's intervals are kept in
      backup/evaluation as they are done, so that a run killed during the
      evaluation resumes at the split it was on; None keeps nothing.

  Returns:
    (results: results.json's dict, format 2 (README, "results.json"); of
    a mixture (several --data_dir), with 'sources' (`evaluation.run.
    evaluate_sources`: every label on each source's val and test, and the
    macro over sources); predictions: {split: (targets [N, L], probs [N, L])}, for the pictures).
  """
  multilabel = builder.info.is_multilabel
  names = evaluation_run.model_label_names(builder, config.labels or None)
  checkpoint_dir = work_dir and os.path.join(
      work_dir, resume_lib.BACKUP_DIR, 'evaluation')
  results, predictions = evaluation_run.evaluate_model(
      net, builder, label_names=names,
      batch_size=config.batch_size, config=config.to_json(),
      splits=EVAL_SPLITS,
      label_policy=config.label_policy if multilabel else None,
      views=(config.views or None) if multilabel else None,
      num_resamples=config.bootstrap_resamples, seed=config.seed,
      checkpoint_dir=checkpoint_dir, read_options=cache_options(config))
  if isinstance(builder, mixture.Mixture):
    # Above: the union of the sources' splits (its thresholds are the ones
    # served); here each source's val and test on its own.
    results['sources'] = evaluation_run.evaluate_sources(
        net, builder, label_names=names, batch_size=config.batch_size,
        num_resamples=config.bootstrap_resamples, seed=config.seed,
        checkpoint_dir=checkpoint_dir and os.path.join(checkpoint_dir,
                                                       'sources'),
        read_options=cache_options(config))
  return results, predictions
