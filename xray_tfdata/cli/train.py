"""Trains and evaluates the seed's VGG16 model on a converted dataset.

  tools/train --flagfile=configs/kermany_vgg16.flags --data_dir=DIR --model_dir=DIR
  tools/train --flagfile=configs/demo.flags          # synthetic demo data
  TF_CONFIG='{"cluster": ..., "task": ...}' tools/train ...   # on every host

Every flag can live in a flagfile; flagfiles nest and later flags win.
All logic is in xray_tfdata.training.train_and_evaluate.
"""

import dataclasses
import os
import sys

from xray_tfdata import runtime  # pylint: disable=g-import-not-at-top  (imports no TF)
runtime.configure_tensorflow_env()  # before TensorFlow is imported

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from xray_tfdata.config import TrainConfig  # pylint: disable=g-import-not-at-top

_D = TrainConfig()
_MODEL_DIR = flags.DEFINE_string('model_dir', None, 'Output folder: checkpoints, logs, model, results.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace a finished run (or an unfinished one with other settings) in model_dir.')
flags.DEFINE_string('data_dir', None, 'Dataset made by tools/make_tfrecords.')
flags.DEFINE_integer('demo_images', _D.demo_images, 'If > 0 and data_dir has no dataset, create a synthetic one of this many images first (the demo).', lower_bound=0)
flags.DEFINE_integer('image_size', _D.image_size, 'Model input size; must equal the stored size.')
flags.DEFINE_integer('batch_size', _D.batch_size, 'Global batch size (split across replicas).')
flags.DEFINE_integer('epochs', _D.epochs, 'Maximum epochs (early stopping may end sooner).')
flags.DEFINE_integer('steps_per_epoch', _D.steps_per_epoch, 'Training steps per epoch; 0 = one pass over the training split.', lower_bound=0)
flags.DEFINE_float('learning_rate', _D.learning_rate, 'Adam learning rate.')
flags.DEFINE_string('weights', _D.weights, "VGG16 weights: 'imagenet' (Keras download/cache), 'none', or a local notop .h5 path.")
flags.DEFINE_integer('frozen_blocks', _D.frozen_blocks, 'VGG16 blocks frozen from the bottom (seed: 4).', lower_bound=0, upper_bound=5)
flags.DEFINE_enum('backbone', _D.backbone, ['vgg16', 'mini_vgg'], 'vgg16 (the seed), or mini_vgg: a small VGG-style net with batch norm, trained from scratch (the demo).')
flags.DEFINE_list('dense_units', [str(u) for u in _D.dense_units], 'Widths of the dense head layers.')
flags.DEFINE_float('dropout', _D.dropout, 'Dropout after each dense head layer.')
flags.DEFINE_enum('augmentation', _D.augmentation, ['fused', 'keras_cv', 'none'], 'fused RandomAffine (one resampling pass), the keras-cv chain, or none.')
flags.DEFINE_float('rotation_range', _D.rotation_range, 'Degrees, as ImageDataGenerator.')
flags.DEFINE_float('width_shift_range', _D.width_shift_range, 'Fraction of width; moves images horizontally.')
flags.DEFINE_float('height_shift_range', _D.height_shift_range, 'Fraction of height; moves images vertically.')
flags.DEFINE_float('shear_range', _D.shear_range, 'Shear angle in degrees, as ImageDataGenerator.')
flags.DEFINE_float('zoom_range', _D.zoom_range, 'Zoom factors uniform in [1-z, 1+z] per axis.')
flags.DEFINE_bool('horizontal_flip', _D.horizontal_flip, 'Random horizontal flips.')
flags.DEFINE_bool('class_weights', _D.class_weights, "Weight classes 'balanced', as the seed does.")
flags.DEFINE_integer('early_stopping_patience', _D.early_stopping_patience, 'Epochs without val_loss improvement before stopping.', lower_bound=1)
flags.DEFINE_enum('policy', _D.policy, ['auto', 'float32', 'mixed_float16', 'mixed_bfloat16'], 'Keras dtype policy; auto picks by hardware.')
flags.DEFINE_bool('jit_compile', _D.jit_compile, 'Compile the train step with XLA.')
flags.DEFINE_enum('strategy', _D.strategy, ['auto', 'one_device', 'mirrored', 'multi_worker'], 'tf.distribute strategy: auto = multi_worker when TF_CONFIG names several workers, else mirrored when there are several GPUs, else one_device.')
flags.DEFINE_string('data_service', _D.data_service, 'HOST:PORT of a tf.data service dispatcher (tools/data_service) to read and decode the training split on; empty reads it here.')
flags.DEFINE_integer('data_service_timeout', _D.data_service_timeout, 'Seconds without a training batch from --data_service before training stops with an error (a line every minute says it is waiting); a rerun resumes from the last finished epoch.', lower_bound=1)
flags.DEFINE_integer('bootstrap_resamples', _D.bootstrap_resamples, 'Resamples for the test AUC 95% interval.', lower_bound=100)
flags.DEFINE_integer('seed', _D.seed, 'Random seed.')
flags.DEFINE_integer('verbose', _D.verbose, 'Output while training: 0 silent, 1 Keras\' progress bar, 2 one short line per epoch (time, images/s, loss and AUC).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:
    # TensorFlow's INFO and WARNING lines drown the progress; --verbosity=0
    # brings them back.
    logging.set_verbosity(logging.ERROR)
  from xray_tfdata import distribute  # pylint: disable=g-import-not-at-top
  from xray_tfdata import model as model_lib  # pylint: disable=g-import-not-at-top
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  from xray_tfdata import training  # pylint: disable=g-import-not-at-top

  values = {f.name: flags.FLAGS[f.name].value for f in dataclasses.fields(TrainConfig)}
  try:
    values['dense_units'] = tuple(int(u) for u in values['dense_units'])
  except ValueError:
    raise SystemExit(f'error: --dense_units must be integers, got {values["dense_units"]}')
  values['data_dir'] = values['data_dir'] or ''
  config = TrainConfig(**values)
  # A full disk, Ctrl-C and SIGTERM end in one line too; the last finished
  # epoch is kept and a rerun of the same command resumes from it.
  with runtime.tool_errors(training.TrainingError, pipeline.DatasetError,
                           model_lib.WeightsError, distribute.DistributeError):
    training.train_and_evaluate(config, _MODEL_DIR.value, overwrite=_OVERWRITE.value)


def run():
  """The console script (xray-train) and tools/train."""
  runtime.run_tool(main, __name__, required=['model_dir', 'data_dir'])


if __name__ == '__main__':
  run()
