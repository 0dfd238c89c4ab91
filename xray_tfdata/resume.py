"""A run that survives kill -9: its config.json and its resume state.

  resume = prepare_model_dir(model_dir, config)   # refuse, start, or resume
  state = ResumeState(os.path.join(model_dir, BACKUP_DIR))
  callbacks = [..., state.callback(net, early_stopping, checkpoint)]
  initial_epoch = state.epoch() if resume else 0

config.json vouches that a rerun trains what the first run trained;
backup/ holds the state of the last finished epoch (weights, optimizer,
EarlyStopping and ModelCheckpoint); results.json marks a finished run,
which is never resumed or replaced without overwrite.
"""

import json
import os
import shutil
import sys

import keras
import numpy as np

from xray_tfdata import atomic
from xray_tfdata.config import RESUMABLE_CHANGES
from xray_tfdata.config import TrainingError

# The run directory's names are declared in run_dir.
from xray_tfdata.run_dir import BACKUP_DIR
from xray_tfdata.run_dir import CONFIG_JSON
from xray_tfdata.run_dir import DATASET_KEY
from xray_tfdata.run_dir import LABEL_NAMES_KEY
from xray_tfdata.run_dir import RESULTS_JSON


def _warn(message):
  print(f'warning: {message}', file=sys.stderr, flush=True)


def check_model_dir_path(model_dir):
  """Checks that model_dir can be a folder, before anything is written.

  Args:
    model_dir: the run's folder; it need not exist.

  Raises:
    TrainingError: model_dir, or a folder above it, is a file.
  """
  path = os.path.abspath(model_dir)
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      return
    path = parent
  if not os.path.isdir(path):
    where = ('is a file' if path == os.path.abspath(model_dir) else
             f'lies under {path}, which is a file')
    raise TrainingError(f'--model_dir {model_dir} {where}; pass a folder, '
                        'or move the file away')


def prepare_model_dir(model_dir, config, overwrite=False, write=True,
                      dataset=None, label_names=()):
  """Checks model_dir for a finished or a different run; records config.

  With write=False (the non-chief workers of a multi-worker run) it only
  checks, so that every worker fails alike, and changes nothing.

  A damaged config.json (empty or not JSON: a write cut short) cannot
  vouch for the resume state, so it is reported and the run starts over.

  With `dataset`, config.json also records the dataset's fingerprint
  (under DATASET_KEY), and a resume is refused when the dataset under the
  same data_dir has another: it was converted again from other images. A
  config.json without one (written before fingerprints were recorded)
  resumes as before. A setting added since config.json was written counts
  as its default.

  Args:
    model_dir: the run's folder.
    config: the run's TrainConfig.
    overwrite: replace a finished run, or an unfinished one with other
      settings or data.
    write: remove and record (the chief); False only checks.
    dataset: the pipeline.DatasetInfo of config.data_dir, or None.
    label_names: the run's outputs, in order (['PNEUMONIA'] for a class
      dataset), recorded under LABEL_NAMES_KEY (beside the setting
      label_policy); () records none.

  Returns:
    True when an unfinished run with the same settings will be resumed.

  Raises:
    TrainingError: model_dir is a file, or holds a finished run, or an
      unfinished one with other settings or another dataset, and overwrite
      is False.
    atomic.NoSpaceError: the disk is full.
  """
  check_model_dir_path(model_dir)
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
        ResumeState(os.path.join(model_dir, BACKUP_DIR)).clear()
      previous = None
    if previous is not None:
      # A resumed run may be watched differently or fed by another
      # dispatcher.
      defaults = type(config)().to_json()
      changed = sorted(k for k, v in config.to_json().items()
                       if k not in RESUMABLE_CHANGES and
                       previous.get(k, defaults.get(k)) != v)
      if changed:
        raise TrainingError(
            f'{model_dir} holds an unfinished run with other settings '
            f'({", ".join(changed)}); rerun with the same flags to resume, '
            'or pass --overwrite')
      if dataset is not None:
        _check_same_dataset(model_dir, config.data_dir,
                            previous.get(DATASET_KEY), dataset)
      resume = True
  if write:
    os.makedirs(model_dir, exist_ok=True)
    record = config.to_json()
    if dataset is not None:
      record[DATASET_KEY] = dataset_record(dataset)
    if label_names:
      record[LABEL_NAMES_KEY] = list(label_names)
    atomic.write_text(config_path, json.dumps(record, indent=2))
  return resume


def dataset_record(info):
  """What config.json records of the dataset a run trains on.

  Args:
    info: a pipeline.DatasetInfo.

  Returns:
    {'fingerprint', 'layout', 'class_names', 'image_size', 'splits': {split:
    {'num_examples', 'num_bytes', 'class_counts', 'content_sha256' where
    the dataset has content hashes}}}, and a mixture's 'sources' (each
    one's name, data_dir, layout, label_policy, fingerprint): the
    fingerprint and what an error shows of it.
  """
  summary = info.summary()
  record = {
      'fingerprint': info.fingerprint(),
      # The layout names the labels' spelling (vocabulary.py), for matching
      # them on another dataset without this one.
      'layout': info.layout,
      'class_names': summary['class_names'],
      'image_size': summary['image_size'],
      'splits': {split: {k: v for k, v in entry.items() if k != 'shards'}
                 for split, entry in summary['splits'].items()}}
  if 'sources' in summary:  # a mixture: each source's data, layout, policy
    record['sources'] = summary['sources']
  return record


def _check_same_dataset(model_dir, data_dir, recorded, info):
  """Raises TrainingError when `recorded` (config.json's dataset record, or
  None) has another fingerprint than the dataset `info` describes."""
  if not isinstance(recorded, dict) or 'fingerprint' not in recorded:
    return  # recorded before fingerprints were: nothing to compare
  now = dataset_record(info)
  if recorded['fingerprint'] == now['fingerprint']:
    return
  raise TrainingError(
      f'{model_dir} holds an unfinished run on another dataset than '
      f'--data_dir {data_dir} holds now ({_dataset_change(recorded, now)}): '
      'it was converted again since; pass --overwrite to train afresh on '
      'this one, or point --data_dir at the dataset the run started on')


def _dataset_change(before, now):
  """The first difference between two dataset records, in words."""
  for key, what in (('class_names', 'class names'),
                    ('image_size', 'image size')):
    if before.get(key) != now[key]:
      return f'{what} {before.get(key)} then, {now[key]} now'
  splits_before = before.get('splits') or {}
  if sorted(splits_before) != sorted(now['splits']):
    return (f'splits {", ".join(sorted(splits_before))} then, '
            f'{", ".join(sorted(now["splits"]))} now')
  for split, entry in sorted(now['splits'].items()):
    old = splits_before[split]
    for key, what in (('num_examples', 'examples'),
                      ('class_counts', 'class counts'),
                      ('num_bytes', 'bytes')):
      if old.get(key) != entry[key]:
        return f'split {split!r}: {old.get(key)} {what} then, {entry[key]} now'
    if old.get('content_sha256') != entry.get('content_sha256'):
      # Same counts and sizes: other labels or pixels in the records, or a
      # conversion by a version that hashes content where one did not.
      what = ('its records hold other labels or images'
              if old.get('content_sha256') else 'converted with content hashes')
      return (f'split {split!r}: {what} (content hash '
              f'{(old.get("content_sha256") or "none")[:12]} then, '
              f'{(entry.get("content_sha256") or "none")[:12]} now)')
  return 'its shards have other names or sizes'



def trim_history(path, epochs):
  """Keeps history.csv's header and its rows of the first `epochs` epochs.

  CSVLogger writes an epoch's row before ResumeCallback saves that epoch's
  state, so a run killed between the two trains the epoch again on resume;
  without this its row would appear twice (tests/test_training.py checks
  it).

  Args:
    path: CSVLogger's file; nothing happens when it does not exist.
    epochs: the epochs the resume state holds.
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
    """Epochs finished and saved; 0 without state."""
    return int(self._meta().get('epoch', 0))

  def stopped(self):
    """True when early stopping ended the saved run."""
    return bool(self._meta().get('stopped', False))

  def clear(self):
    shutil.rmtree(self.backup_dir, ignore_errors=True)

  def callback(self, net, early_stopping, checkpoint, best_path=None):
    """The callback that saves and restores this state; see ResumeCallback."""
    return ResumeCallback(self, net, early_stopping, checkpoint, best_path)


class ResumeCallback(keras.callbacks.Callback):
  """Saves and restores a ResumeState at epoch boundaries.

  It must come last among fit's callbacks: it restores the others' state
  after their on_train_begin has reset it, and saves it after they have
  updated it.

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
    optimizer = self.net.optimizer
    # Built first: the weights file holds the optimizer's variables too
    # (Keras' save_weights of a compiled model), and loading them into an
    # unbuilt optimizer (its iterations and learning rate alone) skips
    # them with "Skipping variable loading for optimizer 'adam' ... 2
    # variables whereas the saved optimizer has N".
    if not optimizer.built:
      optimizer.build(self.net.trainable_variables)
    self.net.load_weights(os.path.join(d, meta['weights']))
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
