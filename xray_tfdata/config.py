"""TrainConfig: the settings of one training run, without TensorFlow.

Kept apart from `training` so that `tools/train` can define its flags (and
the converter's spawned workers, which re-import the tool, can start) without
importing TensorFlow.
"""

import dataclasses
import os

from xray_tfdata import errors

STRATEGIES = ('auto', 'one_device', 'mirrored', 'multi_worker')
# Settings a resumed run may change: how it is watched and where its data
# comes from, not what it trains.
RESUMABLE_CHANGES = ('verbose', 'data_service', 'data_service_timeout')


class TrainingError(errors.XrayError):
  """A user-caused problem with the training settings or the model_dir."""


@dataclasses.dataclass
class TrainConfig:
  """Settings of one training run; every field is a flag of tools/train."""
  data_dir: str = ''
  image_size: int = 224
  batch_size: int = 62
  epochs: int = 100
  learning_rate: float = 1e-4
  weights: str = 'imagenet'  # 'imagenet', 'none' or a local .h5 path
  frozen_blocks: int = 4
  backbone: str = 'vgg16'  # or 'mini_vgg' (the demo: no ImageNet weights)
  dense_units: tuple = (512, 64)
  dropout: float = 0.4
  augmentation: str = 'fused'  # 'fused', 'keras_cv' or 'none'
  rotation_range: float = 40.0
  width_shift_range: float = 0.3
  height_shift_range: float = 0.4
  shear_range: float = 0.2
  zoom_range: float = 0.4
  horizontal_flip: bool = True
  class_weights: bool = True
  early_stopping_patience: int = 10
  policy: str = 'auto'
  jit_compile: bool = False
  strategy: str = 'auto'  # see xray_tfdata.distribute
  # HOST:PORT of a tf.data service dispatcher to read and decode the training
  # split on; '' reads here (see xray_tfdata.data_service).
  data_service: str = ''
  # Seconds without a batch from the service before training stops (see
  # xray_tfdata.data_service.Watchdog).
  data_service_timeout: int = 600
  steps_per_epoch: int = 0  # 0: one pass over the training split
  bootstrap_resamples: int = 2000
  seed: int = 0
  verbose: int = 1
  # The demo: build a synthetic Kermany-like dataset in data_dir when it has
  # none (see xray_tfdata.synthetic).
  demo_images: int = 0

  def validate(self):
    """Raises TrainingError for settings that cannot work."""
    if not self.data_dir:
      raise TrainingError('data_dir is not set: pass --data_dir=DIR of a '
                          'dataset made by tools/make_tfrecords')
    positive = {'batch_size': self.batch_size, 'epochs': self.epochs,
                'learning_rate': self.learning_rate,
                'image_size': self.image_size}
    for name, value in positive.items():
      if not value > 0:
        raise TrainingError(f'{name} must be positive, got {value}')
    if not 0 <= self.dropout < 1:
      raise TrainingError(f'dropout must be in [0, 1), got {self.dropout}')
    if self.augmentation not in ('fused', 'keras_cv', 'none'):
      raise TrainingError(f'augmentation must be fused, keras_cv or none, '
                          f'got {self.augmentation!r}')
    if self.strategy not in STRATEGIES:
      raise TrainingError(f'strategy must be one of '
                          f'{", ".join(STRATEGIES)}, got '
                          f'{self.strategy!r}')
    if self.data_service:
      # Imported here: it imports TensorFlow, which this module avoids.
      from xray_tfdata import data_service as data_service_lib  # pylint: disable=g-import-not-at-top
      try:
        data_service_lib.service_address(self.data_service)
      except data_service_lib.DataServiceError as e:
        raise TrainingError(str(e)) from e
      if not self.data_service_timeout > 0:
        raise TrainingError(f'data_service_timeout must be positive, got '
                            f'{self.data_service_timeout}')
    weights = self.weights
    if weights not in ('imagenet', 'none', '') and not os.path.exists(weights):
      raise TrainingError(
          f'weights file {weights} does not exist: pass --weights=imagenet, '
          '--weights=none or the path of vgg16 notop .h5 weights')

  def augmentation_kwargs(self):
    return dict(rotation_range=self.rotation_range,
                width_shift_range=self.width_shift_range,
                height_shift_range=self.height_shift_range,
                shear_range=self.shear_range, zoom_range=self.zoom_range,
                horizontal_flip=self.horizontal_flip)

  def to_json(self):
    d = dataclasses.asdict(self)
    d['dense_units'] = list(self.dense_units)
    return d
