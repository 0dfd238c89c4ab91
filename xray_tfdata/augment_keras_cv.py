"""The keras-cv augmentation chain with ImageDataGenerator's arguments.

TensorFlow only, by nature: keras-cv 0.9 layers are TensorFlow ops, and
each of its geometric layers calls ImageProjectiveTransformV3 on its own, so
the chain resamples four times (the fused `augment.RandomAffine` resamples
once, on any backend). `augment.make_augmentation('keras_cv')` imports this
module on first use; a model saved with the chain needs it imported (or
`augment.make_augmentation('keras_cv')` called) before it loads.
"""

import math

import keras
import tensorflow as tf

from xray_tfdata import augment_base
from xray_tfdata.checks import zoom_bounds


def _keras_cv_layers(rotation_range, width_shift_range, height_shift_range,
                     shear_range, zoom_range, horizontal_flip, fill_mode,
                     interpolation, seed):
  """Builds the keras-cv layers for ImageDataGenerator's arguments."""
  import keras_cv  # pylint: disable=g-import-not-at-top  (slow; optional)

  kcv = keras_cv.layers
  # keras-cv seeds each layer's own tf.random.Generator; equal seeds would
  # give every layer the same stream, so offset them. (0 means unseeded to
  # keras-cv, hence the + 1.)
  seeds = iter(range(1, 6)) if seed is None else iter(
      range(seed + 1, seed + 6))
  common = dict(dtype='float32')

  def next_seed():
    value = next(seeds)
    return None if seed is None else value

  chain = []
  # The forward order of ImageDataGenerator's R . T . Shear . Zoom (each
  # mapping output to input) is rotate, shift, shear, zoom; then flip.
  if rotation_range:
    chain.append(kcv.RandomRotation(
        factor=rotation_range / 360, fill_mode=fill_mode,
        interpolation=interpolation, seed=next_seed(), **common))
  if width_shift_range or height_shift_range:
    if width_shift_range >= 1 or height_shift_range >= 1:
      raise ValueError(
          'the keras-cv chain takes shift ranges as fractions below 1, got '
          f'width_shift_range={width_shift_range}, '
          f'height_shift_range={height_shift_range}')
    chain.append(kcv.RandomTranslation(
        height_factor=height_shift_range, width_factor=width_shift_range,
        fill_mode=fill_mode, interpolation=interpolation, seed=next_seed(),
        **common))
  if shear_range:
    # keras-cv wants a coefficient: x_in = x + k * y with k ~ +-U(0, x_factor).
    # ImageDataGenerator's angle s is the shear tan(s) after a cos(s)
    # vertical scale (1 - 6e-6 at 0.2 deg), which keras-cv cannot express.
    chain.append(kcv.RandomShear(
        x_factor=math.tan(math.radians(shear_range)), fill_mode=fill_mode,
        interpolation=interpolation, seed=next_seed(), **common))
  zoom_lower, zoom_upper = zoom_bounds(zoom_range)
  if (zoom_lower, zoom_upper) != (1, 1):
    # keras-cv samples 1 + U(lo, hi) as the output-to-input scale, as
    # ImageDataGenerator does; both factors given, so the axes are
    # independent.
    factor = (zoom_lower - 1, zoom_upper - 1)
    chain.append(kcv.RandomZoom(
        height_factor=factor, width_factor=factor, fill_mode=fill_mode,
        interpolation=interpolation, seed=next_seed(), **common))
  if horizontal_flip:
    chain.append(kcv.RandomFlip('horizontal', seed=next_seed(), **common))
  return chain


@keras.saving.register_keras_serializable(package='xray_tfdata')
class KerasCVAugmentation(augment_base.ImageDataGeneratorAugmentation):
  """The keras-cv augmentation chain, with ImageDataGenerator's arguments.

  Runs keras_cv.layers RandomRotation, RandomTranslation, RandomShear,
  RandomZoom and RandomFlip('horizontal') (only those whose range is set),
  converted: rotation degrees -> fraction of a turn; shift fractions as is
  (width_shift_range horizontal, like RandomAffine); shear angle ->
  coefficient tan(angle); zoom U(1 - z, 1 + z) on each axis independently.
  Residual differences from ImageDataGenerator and RandomAffine: four
  resampling passes instead of one (softer images, edge fill accumulated);
  keras-cv's shear is not centred (the top row stays fixed, an extra shift of
  up to tan(shear_range) * (H - 1) / 2 pixels, 0.4 px at 224 px and 0.2 deg)
  and omits the cos(shear) vertical scale; the shear coefficient, not the
  angle, is uniform. Shift ranges must be fractions below 1.

  keras-cv 0.9 layers ignore `training` and augment in evaluation and
  prediction too; this wrapper calls them only when `training` is truthy and
  otherwise returns the input cast to float32. It computes in float32
  whatever the policy, and sets supports_jit False (ImageProjectiveTransformV3
  has no XLA kernel; keras-cv layers claim JIT support, which would make
  Keras' jit_compile='auto' turn XLA on and fail on a GPU). With a seed the
  draws repeat from one run to the next, but two identically seeded chains in
  one process differ (RandomShear samples with a stateful, op-seeded
  tf.random.uniform).
  """

  def __init__(self, rotation_range=0., width_shift_range=0.,
               height_shift_range=0., shear_range=0., zoom_range=0.,
               horizontal_flip=False, fill_mode='nearest',
               interpolation='bilinear', seed=None, **kwargs):
    super().__init__(rotation_range, width_shift_range, height_shift_range,
                     shear_range, zoom_range, horizontal_flip, fill_mode,
                     interpolation, seed, **kwargs)
    self.chain = _keras_cv_layers(
        **self.ranges, fill_mode=fill_mode, interpolation=interpolation,
        seed=seed)
    # keras-cv layers claim JIT support but resample with
    # ImageProjectiveTransformV3, which has no XLA kernel.
    self.supports_jit = False

  def build(self, input_shape):
    # The keras-cv layers hold no weights; building them here tells Keras
    # so (otherwise it warns about unbuilt state when the model is built).
    for layer in self.chain:
      layer.build(input_shape)

  def call(self, images, training=None):
    images = tf.cast(images, tf.float32)
    if not training:
      return images
    for layer in self.chain:
      images = layer(images)
    return images



def keras_cv_chain(rotation_range=0., width_shift_range=0.,
                   height_shift_range=0., shear_range=0., zoom_range=0.,
                   horizontal_flip=False, fill_mode='nearest',
                   interpolation='bilinear', seed=None, **kwargs):
  """Returns the keras-cv chain for ImageDataGenerator's arguments.

  Args:
    rotation_range, width_shift_range, height_shift_range, shear_range,
      zoom_range, horizontal_flip: ImageDataGenerator's arguments and
      meanings (width_shift_range horizontal); shifts as fractions below 1.
    fill_mode: one of FILL_MODES (keras-cv supports all four).
    interpolation: 'bilinear' or 'nearest'.
    seed: int or None.
    **kwargs: passed to keras.layers.Layer (e.g. name).

  Returns:
    A KerasCVAugmentation layer: augments only when training.

  Raises:
    ValueError: on a bad range, fill_mode or interpolation.
  """
  return KerasCVAugmentation(
      rotation_range=rotation_range, width_shift_range=width_shift_range,
      height_shift_range=height_shift_range, shear_range=shear_range,
      zoom_range=zoom_range, horizontal_flip=horizontal_flip,
      fill_mode=fill_mode, interpolation=interpolation, seed=seed, **kwargs)
