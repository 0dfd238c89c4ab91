"""The base of the augmentation layers: ImageDataGenerator's arguments,
checked, stored and serialized once, float32 whatever the policy.

  augment.RandomAffine                       the fused layer (any backend)
  augment_keras_core.KerasCoreAugmentation   Keras 3 core layers (any backend)
  augment_keras_cv.KerasCVAugmentation       keras-cv (TensorFlow only)
  augment.NoAugmentation                     augmentation off

Each of them builds on this module alone, so none imports another;
`augment.make_augmentation` is the one factory. Keras ops only: any
backend, no TensorFlow.
"""

import keras

from xray_tfdata import checks

FILL_MODES = ('nearest', 'reflect', 'wrap', 'constant')
INTERPOLATIONS = ('bilinear', 'nearest')


def float32_layer_kwargs(kwargs):
  """Layer kwargs with dtype float32, whatever was passed or saved."""
  # Whatever policy is global (mixed_bfloat16 included) or was saved in a
  # config, augmentation runs in float32: ImageProjectiveTransformV3 has no
  # bfloat16 GPU kernel, and resampling in half precision loses detail.
  kwargs = dict(kwargs)
  kwargs.pop('dtype', None)
  kwargs['dtype'] = 'float32'
  return kwargs


class ImageDataGeneratorAugmentation(keras.layers.Layer):
  """ImageDataGenerator's augmentation arguments, checked, stored and
  serialized once for every implementation; float32 whatever the policy.
  Under TensorFlow never XLA-compiled (ImageProjectiveTransformV3 has no XLA
  kernel); under JAX compiled with the model, as everything is there."""

  def __init__(self, rotation_range=0., width_shift_range=0.,
               height_shift_range=0., shear_range=0., zoom_range=0.,
               horizontal_flip=False, fill_mode='nearest',
               interpolation='bilinear', seed=None, **kwargs):
    super().__init__(**float32_layer_kwargs(kwargs))
    checks.check_augmentation(rotation_range, width_shift_range,
                              height_shift_range, shear_range, zoom_range)
    checks.check_choice('fill_mode', fill_mode, FILL_MODES)
    checks.check_choice('interpolation', interpolation, INTERPOLATIONS)
    self.rotation_range = rotation_range
    self.width_shift_range = width_shift_range
    self.height_shift_range = height_shift_range
    self.shear_range = shear_range
    self.zoom_range = (list(zoom_range) if isinstance(zoom_range, tuple)
                       else zoom_range)
    self.horizontal_flip = bool(horizontal_flip)
    self.fill_mode = fill_mode
    self.interpolation = interpolation
    self.seed = seed
    self.supports_jit = keras.backend.backend() != 'tensorflow'

  def compute_output_shape(self, input_shape):
    return input_shape

  @property
  def ranges(self):
    """The random-transform arguments, as `sample_params` takes them."""
    return dict(rotation_range=self.rotation_range,
                width_shift_range=self.width_shift_range,
                height_shift_range=self.height_shift_range,
                shear_range=self.shear_range,
                zoom_range=self.zoom_range,
                horizontal_flip=self.horizontal_flip)

  def get_config(self):
    config = super().get_config()
    config.update(self.ranges, fill_mode=self.fill_mode,
                  interpolation=self.interpolation, seed=self.seed)
    return config
