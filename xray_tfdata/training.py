"""train_and_evaluate(): the seed's experiment end to end.

Reads the TFRecords, builds the mixed-precision VGG16 with device-side
augmentation, trains with class weights and early stopping, survives kill -9
(it resumes from the last finished epoch), evaluates train, val and test,
writes the results table, and exports the model.

Files in model_dir while a run is going, and after:
  config.json          the settings; a rerun with other settings is refused.
  backup/              resume state (weights, optimizer, callback state).
  checkpoints/best.weights.h5   best epoch so far by val_loss.
  logs/                TensorBoard.
  history.csv          one row per epoch.
  model.keras          the trained model (best weights).
  serving/             SavedModel: encoded JPEG/PNG bytes -> P(pneumonia).
  results.json, results.md   written last; results.json marks a finished run.
"""

import hashlib
import json
import os
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from xray_tfdata import atomic
from xray_tfdata import augment
from xray_tfdata.config import TrainConfig  # pylint: disable=unused-import  # re-exported
from xray_tfdata.config import RESUMABLE_CHANGES
from xray_tfdata.config import TrainingError
from xray_tfdata import data_service as data_service_lib
from xray_tfdata import demo
from xray_tfdata import distribute
from xray_tfdata import evaluation
from xray_tfdata import imaging
from xray_tfdata import model as model_lib
from xray_tfdata import pipeline

RESULTS_JSON = 'results.json'
RESULTS_MD = 'results.md'
CONFIG_JSON = 'config.json'
MODEL_FILE = 'model.keras'
SERVING_DIR = 'serving'
BEST_WEIGHTS = os.path.join('checkpoints', 'best.weights.h5')
# ModelCheckpoint writes here, and ResumeCallback renames it to BEST_WEIGHTS
# once complete: Keras writes in place, so a full disk or a kill mid-write
# would otherwise leave a cut-short best checkpoint behind.
NEW_BEST_WEIGHTS = os.path.join('checkpoints', 'new-best.weights.h5')
EVAL_SPLITS = ('train', 'val', 'test')


def _warn(message):
  print(f'warning: {message}', file=sys.stderr, flush=True)


def prepare_model_dir(model_dir, config, overwrite=False, write=True):
  """Checks model_dir for a finished or a different run; records config.

  With write=False (the non-chief workers of a multi-worker run) it only
  checks, so that every worker fails alike, and changes nothing.

  A damaged config.json (empty or not JSON: a write cut short) cannot
  vouch for the resume state, so it is reported and the run starts over.

  Returns:
    True when an unfinished run with the same settings will be resumed.
  Raises:
    TrainingError: model_dir is a file, or holds a finished run, or an
      unfinished one with other settings, and overwrite is False.
    atomic.NoSpaceError: the disk is full.
  """
  if os.path.exists(model_dir) and not os.path.isdir(model_dir):
    raise TrainingError(f'--model_dir {model_dir} is a file; pass a folder')
  config_path = os.path.join(model_dir, CONFIG_JSON)
  finished = os.path.exists(os.path.join(model_dir, RESULTS_JSON))
  resume = False
  if overwrite:
    if write and os.path.exists(model_dir):
      shutil.rmtree(model_dir)
  elif finished:
    raise TrainingError(
        f'{model_dir} already holds a finished run ({RESULTS_JSON}); pass '
        '--overwrite to replace it or choose another --model_dir')
  elif os.path.exists(config_path):
    try:
      previous = atomic.read_json(config_path)
    except atomic.DamagedStateError as e:
      _warn(f'{e}; starting this run over')
      if write:
        ResumeState(os.path.join(model_dir, 'backup')).clear()
      previous = None
    if previous is not None:
      # A resumed run may be watched differently or fed by another
      # dispatcher.
      changed = sorted(k for k, v in config.to_json().items()
                       if k not in RESUMABLE_CHANGES and
                       previous.get(k) != v)
      if changed:
        raise TrainingError(
            f'{model_dir} holds an unfinished run with other settings '
            f'({", ".join(changed)}); rerun with the same flags to resume, '
            'or pass --overwrite')
      resume = True
  if write:
    os.makedirs(model_dir, exist_ok=True)
    atomic.write_text(config_path, json.dumps(config.to_json(), indent=2))
  return resume


# Moved to xray_tfdata.distribute; kept here for callers of training.
make_strategy = distribute.make_strategy


# Moved to xray_tfdata.demo; kept here for callers of training.
seed_split_counts = demo.seed_split_counts
ensure_demo_data = demo.ensure_demo_data


def train_and_evaluate(config, model_dir, overwrite=False):
  """Trains and evaluates the seed's model; the library's main entry.

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
      distribute.DistributeError: bad settings or data, before anything is
      trained.
    atomic.NoSpaceError: the disk filled up; the last finished epoch is
      kept and a rerun after freeing space resumes from it.
  """
  config.validate()
  # First: a multi-worker strategy must exist before TensorFlow starts.
  strategy = distribute.make_strategy(config.strategy)
  chief = distribute.is_chief(strategy)
  multi_worker = distribute.num_workers(strategy) > 1
  if config.demo_images:
    demo.ensure_demo_data(config.data_dir, config.demo_images,
                          config.image_size, config.seed)
  builder = pipeline.DatasetBuilder(config.data_dir)
  for split in EVAL_SPLITS:
    builder.info.split(split)  # a missing split fails now, not after training
  stored = builder.info.image_size
  if stored != (config.image_size, config.image_size):
    raise TrainingError(
        f'images in {config.data_dir} are stored at {stored[0]}x{stored[1]}, '
        f'--image_size is {config.image_size}; re-convert with '
        f'tools/make_tfrecords --image_size={config.image_size} or set '
        f'--image_size={stored[0]}')
  if not config.data_service:  # the service, not the workers, splits files
    distribute.check_shards(builder, 'train', strategy)
  resume = prepare_model_dir(model_dir, config, overwrite, write=chief)
  if multi_worker:
    distribute.gather(strategy, [0])  # wait until the chief has done so
  work_dir = distribute.write_dir(model_dir, strategy)
  chief_backup = os.path.join(model_dir, 'backup')
  if work_dir != model_dir and os.path.exists(chief_backup):
    # Resume from the chief's state, saving onwards into work_dir.
    shutil.copytree(chief_backup, os.path.join(work_dir, 'backup'))
    resume = True

  keras.utils.set_random_seed(config.seed)
  policy = model_lib.select_policy(config.policy)
  keras.mixed_precision.set_global_policy(policy)
  weights = None if config.weights in ('none', '') else config.weights
  with strategy.scope():
    augmentation = (None if config.augmentation == 'none' else
                    augment.make_augmentation(config.augmentation,
                                              seed=config.seed,
                                              **config.augmentation_kwargs()))
    net = model_lib.build_model(
        image_size=config.image_size, weights=weights,
        frozen_blocks=config.frozen_blocks,
        backbone=config.backbone,
        dense_units=tuple(config.dense_units), dropout=config.dropout,
        augmentation=augmentation)
    model_lib.compile_model(net, learning_rate=config.learning_rate,
                            jit_compile=config.jit_compile)

  # Batches of the global size: Keras splits each across the replicas.
  # Repeated: --steps_per_epoch may ask for more or fewer batches than one
  # pass, and an epoch then starts where the last one stopped.
  train_ds = builder.as_dataset('train', config.batch_size, training=True,
                                seed=config.seed, repeat=True,
                                **_data_service_options(config, model_dir))
  # Batched validation: the seed validated one image per step.
  val_ds = distribute.shard_by_batch(builder.as_dataset('val',
                                                       config.batch_size))
  distribute.prepare_model(net, train_ds.element_spec)
  steps = (config.steps_per_epoch or
           builder.steps_per_epoch('train', config.batch_size))
  if steps < 1:
    raise TrainingError(
        f'the training split has {builder.info.num_examples("train")} '
        f'images, fewer than one batch of {config.batch_size}; lower '
        '--batch_size')
  class_weight = (builder.info.class_weights('train')
                  if config.class_weights else None)

  state = ResumeState(os.path.join(work_dir, 'backup'))
  early_stopping = keras.callbacks.EarlyStopping(
      monitor='val_loss', patience=config.early_stopping_patience,
      restore_best_weights=False)  # best weights come from the checkpoint
  best_path = os.path.join(work_dir, BEST_WEIGHTS)
  os.makedirs(os.path.dirname(best_path), exist_ok=True)
  checkpoint = keras.callbacks.ModelCheckpoint(
      os.path.join(work_dir, NEW_BEST_WEIGHTS), monitor='val_loss',
      save_best_only=True, save_weights_only=True)
  callbacks = [
      keras.callbacks.TerminateOnNaN(),
      early_stopping,
      checkpoint,
      keras.callbacks.CSVLogger(os.path.join(work_dir, 'history.csv'),
                                append=resume),
      keras.callbacks.TensorBoard(os.path.join(work_dir, 'logs')),
      # verbose 2 is our one line per epoch, instead of Keras' (see fit).
      *([EpochSummary(steps * config.batch_size)] if config.verbose == 2
        else []),
      # Last: restores the other callbacks' state after their
      # on_train_begin has reset it, and saves it after they have updated.
      state.callback(net, early_stopping=early_stopping,
                     checkpoint=checkpoint, best_path=best_path),
  ]
  initial_epoch = state.epoch() if resume else 0
  if resume:
    _trim_history(os.path.join(work_dir, 'history.csv'), initial_epoch)
  if multi_worker:
    # A worker that cannot read the chief's state would start over.
    resumed = distribute.gather(strategy, [initial_epoch, state.stopped()])
    if (resumed != resumed[0]).any():
      raise TrainingError(
          f'the workers would resume after different epochs '
          f'({sorted(set(resumed[:, 0].tolist()))}): model_dir must be on a '
          'file system every worker reads (NFS, gs://), or pass --overwrite')
  if initial_epoch:
    print(f'resuming {model_dir} after epoch {initial_epoch}')
  if resume and state.stopped():
    print('early stopping had already ended this run; evaluating')
  else:
    print(f'training: policy {policy}, strategy '
          f'{type(strategy).__name__}, {steps} steps of {config.batch_size}, '
          f'augmentation {config.augmentation}, class weights {class_weight}')
    watchdog = None
    if config.data_service:
      # A service that lost its workers makes fit wait for ever, silently.
      watchdog = data_service_lib.Watchdog(config.data_service,
                                           config.data_service_timeout)
      callbacks.insert(0, DataServiceProgress(watchdog))
      watchdog.start()
    # Keras' callbacks (checkpoint, CSV, TensorBoard) name no file when the
    # disk fills; model_dir is where they all write.
    try:
      with atomic.naming(work_dir):
        net.fit(train_ds, epochs=config.epochs, steps_per_epoch=steps,
                validation_data=val_ds, class_weight=class_weight,
                callbacks=callbacks, initial_epoch=initial_epoch,
                shuffle=False,  # the pipeline shuffles
                # One line per epoch, ours or Keras', never both: 1 is
                # Keras' progress bar, left whole; 2 is EpochSummary alone.
                verbose=1 if config.verbose == 1 else 0)
    finally:
      if watchdog is not None:
        watchdog.stop()
    losses = net.history.history.get('loss', []) if net.history else []
    if losses and not np.isfinite(losses[-1]):
      raise TrainingError('training diverged (loss is NaN or inf); lower '
                          '--learning_rate')

  if os.path.exists(best_path):
    net.load_weights(best_path)  # restore the best epoch by val_loss
  results = evaluate_splits(net, builder, config)
  results['training'] = {
      'policy': policy, 'strategy': type(strategy).__name__,
      'epochs_run': state.epoch(), 'config': config.to_json()}
  with atomic.naming(work_dir):
    export_model(net, work_dir, config.image_size)
  table = evaluation.results_table_markdown(results)
  atomic.write_text(os.path.join(work_dir, RESULTS_MD), table)
  # Last: its presence marks the run as finished.
  atomic.write_text(os.path.join(work_dir, RESULTS_JSON),
                    json.dumps(results, indent=2, default=float))
  state.clear()
  if not chief:
    shutil.rmtree(work_dir, ignore_errors=True)
  print(table)
  return results


def _trim_history(path, epochs):
  """Keeps history.csv's header and its rows of the first `epochs` epochs.

  CSVLogger writes an epoch's row before ResumeCallback saves that epoch's
  state, so a run killed between the two trains the epoch again on resume;
  without this its row would appear twice (found by tests/test_training.py,
  issue 16).
  """
  if not os.path.exists(path):
    return
  with open(path, newline='') as f:
    lines = f.read().splitlines(keepends=True)
  kept = lines[:1]
  for line in lines[1:]:
    epoch = line.split(',', 1)[0].strip()
    if epoch.isdigit() and int(epoch) < epochs and line.endswith('\n'):
      kept.append(line)
  atomic.write_text(path, ''.join(kept))


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


def predict_split(net, builder, split, batch_size):
  """Returns (labels, P(pneumonia)) for one split in disk order."""
  ds = builder.as_dataset(split, batch_size)
  labels = np.concatenate([y for _, y in ds.as_numpy_iterator()])
  # Under several workers, in the labels' order (see shard_by_batch).
  images = distribute.shard_by_batch(ds.map(lambda x, y: x))
  probs = net.predict(images, verbose=0).reshape(-1)
  return labels.astype(np.int64), probs.astype(np.float64)


def evaluate_splits(net, builder, config):
  """The seed's metrics on train, val and test, plus the field's extras.

  The decision threshold is chosen on validation (Youden's J) and applied to
  test; the test AUC gets a bootstrap 95% interval.
  """
  results = {'splits': {}}
  predictions = {}
  for split in EVAL_SPLITS:
    labels, probs = predict_split(net, builder, split, config.batch_size)
    predictions[split] = (labels, probs)
    results['splits'][split] = evaluation.binary_metrics(labels, probs)
  val_labels, val_probs = predictions['val']
  threshold = evaluation.youden_threshold(val_labels, val_probs)
  test_labels, test_probs = predictions['test']
  low, high = evaluation.bootstrap_auc_ci(
      test_labels, test_probs, num_resamples=config.bootstrap_resamples,
      seed=config.seed)
  results['youden'] = {
      'threshold': threshold,
      'test': evaluation.binary_metrics(test_labels, test_probs, threshold)}
  results['test_auc_ci95'] = [low, high]
  return results


def export_model(net, model_dir, image_size):
  """Writes model.keras and the serving SavedModel, each atomically."""

  tmp = os.path.join(model_dir, '.tmp-' + MODEL_FILE)
  net.save(tmp)
  os.replace(tmp, os.path.join(model_dir, MODEL_FILE))

  size = (image_size, image_size)

  def serve(encoded):
    """Encoded JPEG or PNG bytes [N] -> {'probability': P(pneumonia) [N]}."""
    def decode(data):
      image = tf.io.decode_image(data, channels=1, dtype=tf.uint8,
                                 expand_animations=False)
      # Squash to the stored size with an anti-aliased filter, as the
      # converter does (it uses PIL; the two agree to a few grey levels).
      image = tf.image.resize(image, size, antialias=True)
      return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    images = tf.map_fn(decode, encoded,
                       fn_output_signature=tf.TensorSpec(size + (1,),
                                                         tf.uint8))
    # A named output: the signature's output is 'probability', not
    # 'output_0' (TF Serving and saved_model_cli show this name).
    return {'probability': tf.reshape(
        tf.cast(net(images, training=False), tf.float32), [-1])}

  archive = keras.export.ExportArchive()
  archive.track(net)
  archive.add_endpoint('serve', serve,
                       input_signature=[tf.TensorSpec([None], tf.string)])
  final = os.path.join(model_dir, SERVING_DIR)
  tmp = final + '.tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  archive.write_out(tmp, verbose=False)
  shutil.rmtree(final, ignore_errors=True)
  os.replace(tmp, final)


def _stored_size(serving_dir):
  """The run's image size, from the config.json next to serving/, or None."""
  try:
    config = atomic.read_json(os.path.join(os.path.dirname(
        os.path.abspath(serving_dir)), CONFIG_JSON))
    return int(config['image_size'])
  except (OSError, KeyError, TypeError, ValueError):
    return None


def predict_paths(serving_dir, paths):
  """P(pneumonia) for image files, each decoded as the converter decodes it.

  Every file goes through `imaging.decode_and_resize` at the run's stored
  size (so CMYK, palette, alpha, 16-bit and DICOM files are read exactly as
  in training), then through the exported serving model. One bad file does
  not cost the others their results.

  Args:
    serving_dir: a finished run's serving/ folder.
    paths: image files.

  Returns:
    One (probability, None) or (None, reason) per path, in order.

  Raises:
    TrainingError: no serving model in serving_dir.
  """
  if not os.path.exists(os.path.join(serving_dir, 'saved_model.pb')):
    raise TrainingError(f'{serving_dir} has no exported model: pass '
                        f'--model_dir of a finished run (its {SERVING_DIR}/)')
  size = _stored_size(serving_dir)
  results, blobs, good = [], [], []
  for index, path in enumerate(paths):
    if os.path.isdir(path):
      results.append((None, 'is a folder, not an image file'))
      continue
    if not os.path.lexists(path):
      results.append((None, 'does not exist'))
      continue
    if size is None:  # an older run without config.json: the raw bytes
      try:
        with open(path, 'rb') as f:
          decoded = (f.read(),)
      except OSError as e:
        decoded = f'cannot read: {e.strerror}'
    else:
      decoded = imaging.decode_and_resize((path, (size, size)))
    if isinstance(decoded, str):
      results.append((None, decoded))
      continue
    results.append(None)
    blobs.append(decoded[0])
    good.append(index)
  if blobs:
    served = tf.saved_model.load(serving_dir)
    try:
      probs = served.serve(tf.constant(blobs))['probability'].numpy()
    except tf.errors.InvalidArgumentError as e:
      raise TrainingError(f'cannot decode an image as JPEG or PNG '
                          f'({e.message.splitlines()[0][:100]})') from e
    for index, prob in zip(good, probs):
      results[index] = (float(prob), None)
  return results


def predict_files(serving_dir, paths):
  """P(pneumonia) for image files; see `predict_paths`.

  Returns:
    A list of floats, one per path.

  Raises:
    TrainingError: no serving model in serving_dir, or a file is missing or
      cannot be decoded (the first such file and its reason).
  """
  probabilities = []
  for path, (prob, reason) in zip(paths, predict_paths(serving_dir, paths)):
    if reason:
      raise TrainingError(f'image {path}: {reason}')
    probabilities.append(prob)
  return probabilities


class DataServiceProgress(keras.callbacks.Callback):
  """Tells a data_service.Watchdog that batches are still coming."""

  def __init__(self, watchdog):
    super().__init__()
    self.watchdog = watchdog

  def on_train_batch_end(self, batch, logs=None):
    self.watchdog.progress()

  def on_test_batch_end(self, batch, logs=None):
    self.watchdog.progress()  # validation reads locally, but takes time

  def on_epoch_end(self, epoch, logs=None):
    self.watchdog.progress()


class EpochSummary(keras.callbacks.Callback):
  """One line per epoch: time, images/s, the metrics that matter."""

  def __init__(self, images_per_epoch):
    super().__init__()
    self.images_per_epoch = images_per_epoch

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    seconds = time.perf_counter() - self._start
    logs = logs or {}
    parts = [f'epoch {epoch + 1}: {seconds:.1f} s',
             f'{self.images_per_epoch / seconds:.1f} train images/s']
    for key in ('loss', 'auc', 'val_loss', 'val_auc'):
      if key in logs:
        parts.append(f'{key} {logs[key]:.4f}')
    print(' | '.join(parts), flush=True)


class ResumeState:
  """Resume state that survives kill -9: epoch, weights, optimizer, and the
  state of EarlyStopping and ModelCheckpoint (Keras' BackupAndRestore keeps
  only weights and the epoch, so a resumed run would forget its best
  val_loss and its patience).

  Weights and optimizer go to the slot the metadata does not point to and
  are fsynced; the metadata is written atomically last, so a kill or a full
  disk at any point leaves the previous epoch's state. A damaged metadata
  file (empty or not JSON) is reported, removed, and the run starts over.
  """

  def __init__(self, backup_dir):
    self.backup_dir = backup_dir
    self.meta_path = os.path.join(backup_dir, 'state.json')

  def _meta(self):
    if not os.path.exists(self.meta_path):
      return {}
    try:
      meta = atomic.read_json(self.meta_path)
    except atomic.DamagedStateError as e:
      _warn(f'{e}; training starts again from epoch 0')
      self.clear()
      return {}
    return meta

  def epoch(self):
    return int(self._meta().get('epoch', 0))

  def stopped(self):
    return bool(self._meta().get('stopped', False))

  def clear(self):
    shutil.rmtree(self.backup_dir, ignore_errors=True)

  def callback(self, net, early_stopping, checkpoint, best_path=None):
    return ResumeCallback(self, net, early_stopping, checkpoint, best_path)


class ResumeCallback(keras.callbacks.Callback):
  """Saves and restores a ResumeState at epoch boundaries.

  With `best_path`, it also moves a best checkpoint that ModelCheckpoint
  has finished writing (to its own filepath) to best_path, before saving
  the state that records its val_loss.
  """

  def __init__(self, state, net, early_stopping, checkpoint, best_path=None):
    super().__init__()
    self.state = state
    self.net = net
    self.early_stopping = early_stopping
    self.checkpoint = checkpoint
    self.best_path = best_path

  def on_train_begin(self, logs=None):
    if self.best_path and os.path.exists(self.checkpoint.filepath):
      os.remove(self.checkpoint.filepath)  # cut short by a crash: not the best
    meta = self.state._meta()  # pylint: disable=protected-access
    if not meta:
      return
    d = self.state.backup_dir
    self.net.load_weights(os.path.join(d, meta['weights']))
    optimizer = self.net.optimizer
    if not optimizer.built:
      optimizer.build(self.net.trainable_variables)
    saved = np.load(os.path.join(d, meta['optimizer']))
    for i, variable in enumerate(optimizer.variables):
      variable.assign(saved[f'v{i}'])
    es = meta['early_stopping']
    self.early_stopping.wait = es['wait']
    self.early_stopping.best = es['best']
    self.early_stopping.best_epoch = es['best_epoch']
    if meta['checkpoint_best'] is not None:
      self.checkpoint.best = meta['checkpoint_best']

  def on_epoch_end(self, epoch, logs=None):
    if self.best_path and os.path.exists(self.checkpoint.filepath):
      atomic.fsync_file(self.checkpoint.filepath)
      os.replace(self.checkpoint.filepath, self.best_path)
    d = self.state.backup_dir
    os.makedirs(d, exist_ok=True)
    # Alternate between two slots so the files the current metadata points
    # to are never the ones being overwritten.
    slot = (epoch + 1) % 2
    weights = os.path.join(d, f'weights-{slot}.weights.h5')
    optimizer = os.path.join(d, f'optimizer-{slot}.npz')
    with atomic.naming(weights):
      self.net.save_weights(weights, overwrite=True)
    with atomic.naming(optimizer):
      np.savez(optimizer, **{f'v{i}': np.asarray(v.numpy()) for i, v in
                             enumerate(self.net.optimizer.variables)})
    atomic.fsync_file(weights)  # on the disk before the metadata names them
    atomic.fsync_file(optimizer)
    weights, optimizer = os.path.basename(weights), os.path.basename(optimizer)
    meta = {
        'epoch': epoch + 1,
        'weights': weights,
        'optimizer': optimizer,
        'early_stopping': {'wait': int(self.early_stopping.wait),
                           'best': float(self.early_stopping.best),
                           'best_epoch': int(self.early_stopping.best_epoch)},
        'checkpoint_best': float(self.checkpoint.best),
        'stopped': bool(self.net.stop_training),
    }
    atomic.write_json(self.state.meta_path, meta)


def _float_or_none(value):
  return None if value is None else float(value)
