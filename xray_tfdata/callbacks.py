"""The Keras callbacks of a training run, and what they write in model_dir.

  callbacks.make_callbacks(net, config, work_dir, state, images_per_epoch)

gives fit its callbacks in the order that matters: stop on NaN, early
stopping, the learning rate's plateau schedule (if any), the best
checkpoint, history.csv, TensorBoard, the resume state
(`resume.ResumeCallback`), and last our one line per epoch, printed once
the epoch is saved.
"""

import os
import time

import keras

from xray_tfdata.run_dir import HISTORY_CSV
from xray_tfdata.run_dir import LOGS_DIR

BEST_WEIGHTS = os.path.join('checkpoints', 'best.weights.h5')
# ModelCheckpoint writes here, and ResumeCallback renames it to BEST_WEIGHTS
# once complete: Keras writes in place, so a full disk or a kill mid-write
# would otherwise leave a cut-short best checkpoint behind.
NEW_BEST_WEIGHTS = os.path.join('checkpoints', 'new-best.weights.h5')
# What --lr_plateau_patience multiplies the learning rate by (CheXNet's 10x
# decay, Rajpurkar et al. 2017, section 3.1).
LR_PLATEAU_FACTOR = 0.1
# fit's log keys of each label's validation AUC (losses.metric_name).
LABEL_AUC_PREFIX = 'val_auc_'


def make_callbacks(net, config, work_dir, state, images_per_epoch,
                   resume=False):
  """fit's callbacks, the resume state's after every one it saves.

  Args:
    net: the compiled model.
    config: the run's TrainConfig (patience, verbose).
    work_dir: where this process writes (model_dir on the chief).
    state: the run's resume.ResumeState.
    images_per_epoch: training images per epoch, for EpochSummary.
    resume: append to history.csv instead of starting it over.

  Returns:
    A list of keras.callbacks.Callback.
  """
  early_stopping = keras.callbacks.EarlyStopping(
      monitor='val_loss', patience=config.early_stopping_patience,
      restore_best_weights=False)  # best weights come from the checkpoint
  best_path = os.path.join(work_dir, BEST_WEIGHTS)
  os.makedirs(os.path.dirname(best_path), exist_ok=True)
  checkpoint = keras.callbacks.ModelCheckpoint(
      os.path.join(work_dir, NEW_BEST_WEIGHTS), monitor='val_loss',
      save_best_only=True, save_weights_only=True)
  # CheXNet's schedule: the learning rate / 10 when val_loss plateaus. The
  # rate is an optimizer variable, so the resume state keeps it.
  plateau = ([keras.callbacks.ReduceLROnPlateau(
      monitor='val_loss', factor=LR_PLATEAU_FACTOR,
      patience=config.lr_plateau_patience)]
             if config.lr_plateau_patience else [])
  return [
      keras.callbacks.TerminateOnNaN(),
      early_stopping,
      *plateau,
      checkpoint,
      keras.callbacks.CSVLogger(os.path.join(work_dir, HISTORY_CSV),
                                append=resume),
      keras.callbacks.TensorBoard(os.path.join(work_dir, LOGS_DIR)),
      # After the others with state: restores their state after their
      # on_train_begin has reset it, and saves it after they have updated.
      state.callback(net, early_stopping=early_stopping,
                     checkpoint=checkpoint, best_path=best_path),
      # verbose 2 is our one line per epoch, instead of Keras' (see fit).
      # After the save, as Keras' progress bar (which fit appends last): a
      # run stopped (SIGTERM) once the line is out resumes after that epoch.
      *([EpochSummary(images_per_epoch)] if config.verbose == 2 else []),
  ]


def release_h5_files(folder):
  """Closes the HDF5 files under `folder` still open for writing, and
  removes them; for after a write failed (a full disk).

  Keras' save_weights leaves its h5py file open when a write fails (it
  closes it only on success), referenced from the traceback. HDF5 then
  retries the flush of its cached metadata each time one of the file's
  objects is freed, and at exit: about ten "Exception ignored in
  h5py._objects.ObjectID.__dealloc__" tracebacks after the tool's one-line
  error, and sometimes a segmentation fault (tools/train on a full tmpfs).
  The file is cut short anyway, so it is removed, which also frees its
  space.

  Args:
    folder: where the run writes (work_dir).

  Returns:
    The paths closed and removed, sorted.
  """
  import h5py  # pylint: disable=g-import-not-at-top  (Keras' own dependency)

  prefix = os.path.join(os.path.abspath(folder), '')
  released = []
  for file_id in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
    path = os.fsdecode(file_id.name)
    if not (file_id.valid and os.path.abspath(path).startswith(prefix) and
            file_id.get_intent() != h5py.h5f.ACC_RDONLY):
      continue
    try:
      os.truncate(path, 0)  # room for HDF5's last flush, so the close works
    except OSError:
      pass
    try:
      h5py.File(file_id).close()  # its objects too, as File.close does
    except (OSError, RuntimeError, ValueError):
      pass  # closed as far as HDF5 can; the file goes next
    try:
      os.remove(path)
    except OSError:
      pass
    released.append(path)
  return sorted(released)


class DataServiceProgress(keras.callbacks.Callback):
  """Tells a data_service.Watchdog that batches are still coming, and
  pauses it while training reads nothing from the service: validation reads
  locally, and the epoch-end callbacks write checkpoints (slow on a loaded
  host, and not the service's time). Put it first in the callback list, so
  that its on_epoch_end pauses before the others write."""

  def __init__(self, watchdog):
    super().__init__()
    self.watchdog = watchdog

  def on_epoch_begin(self, epoch, logs=None):
    self.watchdog.resume()  # not a batch: the first one's grace stays

  def on_train_batch_end(self, batch, logs=None):
    self.watchdog.progress()

  def on_test_begin(self, logs=None):
    self.watchdog.pause()

  def on_test_end(self, logs=None):
    self.watchdog.resume()

  def on_epoch_end(self, epoch, logs=None):
    self.watchdog.pause()


class EpochSummary(keras.callbacks.Callback):
  """One line per epoch: time, images/s, the metrics that matter; with
  several labels also each label's validation AUC (`losses.label_metrics`),
  so that a label stuck at chance shows."""

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
    labels = [f'{key[len(LABEL_AUC_PREFIX):]} {value:.3f}'
              for key, value in logs.items()
              if key.startswith(LABEL_AUC_PREFIX)]
    if labels:
      parts.append('val_auc per label: ' + ', '.join(labels))
    print(' | '.join(parts), flush=True)
