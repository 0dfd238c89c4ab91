"""The Keras 3 core augmentation chain with ImageDataGenerator's arguments.

What a Keras user writes today instead of ImageDataGenerator or keras-cv
(0.9 was its last release): `keras.layers.RandomRotation`,
`RandomTranslation`, `RandomShear`, `RandomZoom` and `RandomFlip` inside the
model. Each resamples on its own, so the chain makes up to five passes (four
resampling, one flip) where the fused `augment.RandomAffine` makes one. Keras
ops only: any backend, no TensorFlow. `augment.make_augmentation('keras_core')`
builds it; `import xray_tfdata` registers it, so a saved model holding one
loads with plain `keras.models.load_model`.

The arguments converted to the layers' meanings (keras/src/layers/
preprocessing/image_preprocessing/, Keras 3.15):
  rotation_range (degrees)   RandomRotation factor is a fraction of a full
                             turn (2 pi): degrees / 360, drawn in +-factor.
  width_shift_range,         RandomTranslation width_factor and
  height_shift_range         height_factor are fractions of the width and
                             height, drawn in +-factor (width moves images
                             sideways, as RandomAffine's width_shift_range).
  shear_range (degrees)      RandomShear x_factor is a shear coefficient
                             (x_in = x + k y, about the top-left corner),
                             drawn in +-x_factor: tan(degrees).
  zoom_range z               RandomZoom draws 1 + U(lo, hi) as the
                             output-to-input scale, as ImageDataGenerator's
                             zx, zy (positive zooms out): (lo, hi) =
                             (1 - z - 1, 1 + z - 1) = (-z, +z), on height and
                             width independently (width_factor given).
  horizontal_flip            RandomFlip('horizontal').
"""

import math

import keras

from xray_tfdata import augment_base
from xray_tfdata.checks import zoom_bounds

# The layer classes in the chain's order, for tests and reports.
LAYER_NAMES = ('RandomRotation', 'RandomTranslation', 'RandomShear',
               'RandomZoom', 'RandomFlip')


def keras_core_layers(rotation_range=0., width_shift_range=0.,
                      height_shift_range=0., shear_range=0., zoom_range=0.,
                      horizontal_flip=False, fill_mode='nearest',
                      interpolation='bilinear', seed=None, jit=False):
  """Builds the Keras core layers for ImageDataGenerator's arguments.

  Only the layers whose range is set, in ImageDataGenerator's forward order
  (its R . T . Shear . Zoom maps output to input: rotate, shift, shear,
  zoom), then the flip.

  Args:
    rotation_range ... horizontal_flip: as `KerasCoreAugmentation`.
    fill_mode, interpolation: passed to every resampling layer.
    seed: int or None; the layers get seed + 1 .. seed + 5 (equal seeds
      would give every layer the same random stream).
    jit: the layers' supports_jit (see KerasCoreAugmentation).

  Returns:
    A list of Keras layers, computing in float32.

  Raises:
    ValueError: a range the layers cannot express (shifts of 1 or more,
      shear of 45 degrees or more).
  """
  seeds = iter(range(1, 6)) if seed is None else iter(range(seed + 1,
                                                            seed + 6))

  def common():
    value = next(seeds)
    return dict(seed=None if seed is None else value, dtype='float32')

  resample = dict(fill_mode=fill_mode, interpolation=interpolation)
  chain = []
  if rotation_range:
    chain.append(keras.layers.RandomRotation(rotation_range / 360, **resample,
                                             **common()))
  if width_shift_range or height_shift_range:
    if width_shift_range >= 1 or height_shift_range >= 1:
      raise ValueError(
          'the keras_core chain takes shift ranges as fractions below 1, got '
          f'width_shift_range={width_shift_range}, '
          f'height_shift_range={height_shift_range}')
    chain.append(keras.layers.RandomTranslation(
        height_factor=height_shift_range, width_factor=width_shift_range,
        **resample, **common()))
  if shear_range:
    coefficient = math.tan(math.radians(shear_range))
    if not 0 < coefficient <= 1:
      raise ValueError(
          'the keras_core chain takes shear_range below 45 degrees (a '
          f'coefficient up to 1), got {shear_range}')
    # ImageDataGenerator's angle s shears by sin(s) after a cos(s) vertical
    # scale (1 - 6e-6 at 0.2 deg), which RandomShear cannot express.
    chain.append(keras.layers.RandomShear(x_factor=coefficient, y_factor=0.,
                                          **resample, **common()))
  zoom_lower, zoom_upper = zoom_bounds(zoom_range)
  if (zoom_lower, zoom_upper) != (1, 1):
    factor = (zoom_lower - 1, zoom_upper - 1)
    chain.append(keras.layers.RandomZoom(height_factor=factor,
                                         width_factor=factor, **resample,
                                         **common()))
  if horizontal_flip:
    chain.append(keras.layers.RandomFlip('horizontal', **common()))
  for layer in chain:
    layer.supports_jit = jit
  return chain


@keras.saving.register_keras_serializable(package='xray_tfdata')
class KerasCoreAugmentation(augment_base.ImageDataGeneratorAugmentation):
  """The Keras 3 core augmentation chain, with ImageDataGenerator's arguments.

  Runs keras.layers RandomRotation, RandomTranslation, RandomShear,
  RandomZoom and RandomFlip('horizontal') (only those whose range is set),
  with the conversions of the module docstring. Residual differences from
  ImageDataGenerator and RandomAffine: a pass per layer instead of one
  (softer images, edge fill accumulated); RandomShear is not centred (the
  top row stays fixed: an extra sideways shift of tan(shear) * (H - 1) / 2
  pixels, up to 0.4 px at 224 px and 0.2 deg) and omits the
  cos(shear) vertical scale; the shear coefficient, not the angle, is
  uniform. Shift ranges must be fractions below 1.

  Augments only when `training` is truthy; otherwise returns the input cast
  to float32. Computes in float32 whatever the policy. Keras marks these
  layers supports_jit=False because under TensorFlow they resample with
  ImageProjectiveTransformV3, which has no XLA kernel; under the other
  backends they are plain array ops, so there they are marked jittable, as
  the base class does (otherwise one such layer would switch XLA off for the
  whole model under JAX, which then runs op by op).
  """

  def __init__(self, rotation_range=0., width_shift_range=0.,
               height_shift_range=0., shear_range=0., zoom_range=0.,
               horizontal_flip=False, fill_mode='nearest',
               interpolation='bilinear', seed=None, **kwargs):
    super().__init__(rotation_range, width_shift_range, height_shift_range,
                     shear_range, zoom_range, horizontal_flip, fill_mode,
                     interpolation, seed, **kwargs)
    self.chain = keras_core_layers(
        **self.ranges, fill_mode=fill_mode, interpolation=interpolation,
        seed=seed, jit=self.supports_jit)

  def build(self, input_shape):
    # The layers hold no weights; building them here tells Keras so.
    for layer in self.chain:
      layer.build(input_shape)

  def call(self, images, training=None):
    images = keras.ops.cast(images, 'float32')
    if not training:
      return images
    for layer in self.chain:
      images = layer(images, training=True)
    return images
