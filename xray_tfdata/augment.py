"""Device-side augmentation that reproduces Keras' ImageDataGenerator.

The reference notebook augments with `ImageDataGenerator(rotation_range=40,
width_shift_range=0.3, height_shift_range=0.4, shear_range=0.2,
zoom_range=0.4, horizontal_flip=True)`, one image at a time in scipy. This
module does the same inside the model, on whole batches, in these ways (with
the shift ranges in their documented meaning, so the notebook's geometry is
REFERENCE_AUGMENTATION, width 0.4 and height 0.3; see below):

  RandomAffine          the fused layer (default): composes rotation, shift,
                        shear, zoom and flip into one matrix per image and
                        resamples once, as ImageDataGenerator itself does.
  KerasCVAugmentation   (in augment_keras_cv; TensorFlow only) the keras-cv
                        chain RandomRotation -> RandomTranslation ->
                        RandomShear -> RandomZoom -> RandomFlip, with the
                        arguments converted to ImageDataGenerator's meanings;
                        four resampling passes.
  KerasCoreAugmentation (in augment_keras_core; any backend) the same chain
                        of Keras 3 core layers, what a Keras user writes
                        today; a pass per layer.

All take ImageDataGenerator's argument names and meanings, augment only when
called with a truthy `training`, and always compute and return float32
whatever the mixed-precision policy is.

Geometry, in ImageDataGenerator's words (keras/src/legacy/preprocessing/
image.py, `apply_transform` and `apply_affine_transform`). Let x be the
column (pointing right) and y the row (pointing down). Each image's transform
maps an output pixel p = (x, y) to the input point

    q = R(theta) . T(tx, ty) . Shear(shear) . Zoom(zx, zy) . (p - c) + c

with R(theta) = [[cos, -sin], [sin, cos]], Shear(s) = [[1, -sin s], [0, cos s]]
(angles in degrees), T a translation, Zoom = diag(zx, zy) and c the image
centre; bilinear interpolation, 'nearest' fill, then a horizontal flip.
So, as verified against ImageDataGenerator.apply_transform:
  - positive `theta` turns the content counter-clockwise as displayed.
  - `tx` is a horizontal offset in pixels (out(x) = in(x + tx): positive tx
    moves the content left), `ty` a vertical one (positive moves it up); the
    shift is applied in the rotated frame.
  - `zx` scales the horizontal axis, `zy` the vertical one; values above 1
    zoom out.
  - `shear` is an angle in degrees: 0.2 is a coefficient of about 0.0035.

Two ImageDataGenerator quirks that this module does not copy:
  - Its sampling swaps the shift ranges: `get_random_transform` draws
    tx ~ U(-height_shift_range, +height_shift_range) * rows and
    ty ~ U(-width_shift_range, +width_shift_range) * cols, so its
    height_shift_range moves images sideways (keras #17398, tf-keras #310).
    Here `width_shift_range` moves images horizontally, as a fraction of the
    width, and `height_shift_range` vertically, as a fraction of the height.
  - It computes the centre before swapping axes, so on non-square images it
    rotates and zooms about (x, y) = (H/2 - 0.5, W/2 - 0.5) instead of the
    image centre (W/2 - 0.5, H/2 - 0.5). Here the centre is the image centre;
    `apply_transform(..., center='idg')` reproduces the quirk for parity
    tests. Square images (all of this project's) are not affected.

Device side, any Keras 3 backend: everything here is Keras ops
(`keras.ops`, `keras.random`), so the layers run in TensorFlow, JAX or
PyTorch programs, and this module imports without TensorFlow installed. The
resampling is `keras.ops.image.affine_transform`, which under TensorFlow is
the single `ImageProjectiveTransformV3` pass it always was, and under JAX
`jax.scipy.ndimage.map_coordinates`. The only TensorFlow-specific code is
the tf.distribute replica seeding in `_uniform`, reached only under the
TensorFlow backend. The keras-cv chain, which is TensorFlow by nature, lives
in `augment_keras_cv` and is imported only when asked for.
"""

import importlib
import math

import keras
from keras import ops

from xray_tfdata import augment_base
from xray_tfdata import augment_keras_core
from xray_tfdata import checks
from xray_tfdata import reference

# The reference notebook's augmentation in this module's meaning (why its
# shifts read 0.4 and 0.3: `reference.AUGMENTATION`, the training defaults).
REFERENCE_AUGMENTATION = reference.AUGMENTATION

# The keys of `ImageDataGenerator.apply_transform`'s transform_parameters that
# apply_transform understands, and their identity values.
PARAM_DEFAULTS = {
    'theta': 0.0,
    'tx': 0.0,
    'ty': 0.0,
    'shear': 0.0,
    'zx': 1.0,
    'zy': 1.0,
    'flip_horizontal': 0.0,
}

FILL_MODES = augment_base.FILL_MODES
INTERPOLATIONS = augment_base.INTERPOLATIONS
CENTERS = ('image', 'idg')

_IDG_ARGS = ('rotation_range', 'width_shift_range', 'height_shift_range',
             'shear_range', 'zoom_range', 'horizontal_flip')


def image_data_generator_kwargs(ranges):
  """ImageDataGenerator's arguments that give these ranges' geometry.

  ImageDataGenerator draws its horizontal shift from height_shift_range and
  its vertical one from width_shift_range (keras #17398), so the two are
  swapped; on square images it then moves images as RandomAffine(**ranges)
  does.

  Args:
    ranges: RandomAffine's random-transform arguments, e.g.
      REFERENCE_AUGMENTATION.

  Returns:
    A new dict for `ImageDataGenerator(**kwargs)`.
  """
  kwargs = dict(ranges)
  kwargs['width_shift_range'] = ranges.get('height_shift_range', 0.)
  kwargs['height_shift_range'] = ranges.get('width_shift_range', 0.)
  return kwargs


# The reference notebook's ImageDataGenerator call, as written: the
# baseline that the benchmarks time.
REFERENCE_GENERATOR_KWARGS = reference.GENERATOR_KWARGS


def _shift_limit(shift_range, size):
  # ImageDataGenerator's rule: a range below 1 is a fraction of the size,
  # 1 or more is a number of pixels.
  return shift_range * size if shift_range < 1 else shift_range


def _tf_uniform(shape, seed):
  """The TensorFlow backend's draws where Keras' own would be wrong, or
  None where keras.random serves."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (TF backend only)

  if seed is None:
    # A stateful op: keras.random would create its global SeedGenerator, a
    # variable, inside whatever tf.function or tf.data map traces this.
    return tf.random.uniform(shape, dtype=tf.float32)
  if isinstance(seed, keras.random.SeedGenerator):
    replica = tf.distribute.get_replica_context()
    if replica is not None and replica.num_replicas_in_sync > 1:
      # Under tf.distribute every replica reads the same mirrored generator
      # state, so without the replica id image i of every replica would get
      # the same transform.
      key = tf.random.experimental.stateless_fold_in(
          tf.cast(seed.next(), tf.int64), replica.replica_id_in_sync_group)
      return tf.random.stateless_uniform(shape, seed=key, dtype=tf.float32)
  return None


def _uniform(shape, seed):
  if keras.backend.backend() == 'tensorflow':
    draws = _tf_uniform(shape, seed)
    if draws is not None:
      return draws
  # An int seed is stateless (same numbers for the same seed); a
  # keras.random.SeedGenerator advances, inside tf.function, jax.jit and fit.
  return keras.random.uniform(shape, dtype='float32', seed=seed)


def sample_params(batch_size, height, width, rotation_range=0.,
                  width_shift_range=0., height_shift_range=0., shear_range=0.,
                  zoom_range=0., horizontal_flip=False, seed=None):
  """Draws per-image transform parameters as ImageDataGenerator does.

  Distributions are those of `ImageDataGenerator.get_random_transform`, each
  parameter independent: theta ~ U(-rotation_range, rotation_range) degrees;
  shear ~ U(-shear_range, shear_range) degrees; zx and zy independently
  ~ U(1 - z, 1 + z); flip_horizontal ~ Bernoulli(0.5) if horizontal_flip.
  Shifts follow the documented meaning, not ImageDataGenerator's swapped one:
  tx (horizontal, pixels) ~ U(-width_shift_range, width_shift_range) * width
  and ty (vertical, pixels) ~ U(-height_shift_range, height_shift_range) *
  height. (ImageDataGenerator draws tx from height_shift_range * rows and ty
  from width_shift_range * cols.) A shift range of 1 or more is in pixels, as
  in ImageDataGenerator, but drawn uniformly rather than as integers.

  Args:
    batch_size: number of images (int or scalar tensor).
    height, width: image size in pixels (ints or scalar tensors).
    rotation_range: degrees.
    width_shift_range, height_shift_range: fractions of the width and height
      if below 1, else pixels.
    shear_range: degrees.
    zoom_range: float z for [1 - z, 1 + z], or a (lower, upper) pair.
    horizontal_flip: whether to flip half of the images.
    seed: None (unseeded: outside compiled functions only, except under
      TensorFlow), an int (stateless: the same int gives the same
      parameters) or a `keras.random.SeedGenerator` (under tf.distribute
      with more than one replica, each replica draws its own parameters
      from it).

  Returns:
    A dict with keys theta, tx, ty, shear, zx, zy, flip_horizontal, each a
    float32 tensor of the backend, shape [batch_size] (flip_horizontal is 0.
    or 1.), in `apply_transform`'s meaning.

  Raises:
    checks.SettingError: if a range is negative, not a number, or zoom
      reaches 0.
  """
  checks.check_augmentation(rotation_range, width_shift_range,
                            height_shift_range, shear_range, zoom_range)
  zoom_lower, zoom_upper = checks.zoom_bounds(zoom_range)
  height = ops.cast(height, 'float32')
  width = ops.cast(width, 'float32')
  # One draw of seven independent streams: a single seed then serves all.
  uniform = _uniform([7, batch_size], seed)
  symmetric = 2.0 * uniform - 1.0
  if horizontal_flip:
    flip = ops.cast(uniform[6] < 0.5, 'float32')
  else:
    flip = ops.zeros_like(uniform[6])
  return {
      'theta': float(rotation_range) * symmetric[0],
      'tx': _shift_limit(float(width_shift_range), width) * symmetric[1],
      'ty': _shift_limit(float(height_shift_range), height) * symmetric[2],
      'shear': float(shear_range) * symmetric[3],
      'zx': zoom_lower + (zoom_upper - zoom_lower) * uniform[4],
      'zy': zoom_lower + (zoom_upper - zoom_lower) * uniform[5],
      'flip_horizontal': flip,
  }


def projective_transforms(params, batch_size, height, width, center='image'):
  """Composes ImageDataGenerator's transform into ImageProjectiveTransformV3's.

  Args:
    params: dict with any of the keys of PARAM_DEFAULTS (missing keys take
      the identity value), each a scalar or a [batch_size] array; see the
      module docstring for their meaning.
    batch_size, height, width: ints or scalar tensors.
    center: 'image' rotates and zooms about the image centre; 'idg' about
      ImageDataGenerator's centre, which differs on non-square images.

  Returns:
    A float32 tensor of the backend, [batch_size, 8], rows [a0, a1, a2, b0, b1, b2, 0, 0] mapping each
    output pixel (x, y) to the input point (a0 x + a1 y + a2,
    b0 x + b1 y + b2), pixel centres at integer coordinates; the flip is
    folded in, so one resampling does the whole transform.

  Raises:
    ValueError: on an unknown key or center.
  """
  checks.check_choice('center', center, CENTERS)
  unknown = set(params) - set(PARAM_DEFAULTS)
  if unknown:
    raise ValueError(f'unknown transform parameters {sorted(unknown)}; '
                     f'expected some of {list(PARAM_DEFAULTS)}')

  def param(key):
    value = ops.cast(params.get(key, PARAM_DEFAULTS[key]), 'float32')
    return ops.broadcast_to(value, [batch_size])

  height = ops.cast(height, 'float32')
  width = ops.cast(width, 'float32')
  theta = param('theta') * (math.pi / 180)
  shear = param('shear') * (math.pi / 180)
  zx, zy = param('zx'), param('zy')
  tx, ty = param('tx'), param('ty')
  flipped = ops.cast(ops.not_equal(param('flip_horizontal'), 0), 'float32')

  cos, sin = ops.cos(theta), ops.sin(theta)
  # R(theta) . Shear(shear) . Zoom(zx, zy), multiplied out.
  a0 = cos * zx
  a1 = -zy * ops.sin(theta + shear)
  b0 = sin * zx
  b1 = zy * ops.cos(theta + shear)
  # The shift sits between R and Shear in the product: rotate it too.
  shift_x = cos * tx - sin * ty
  shift_y = sin * tx + cos * ty
  if center == 'image':
    center_x, center_y = (width - 1) / 2, (height - 1) / 2
  else:
    center_x, center_y = (height - 1) / 2, (width - 1) / 2
  a2 = center_x + shift_x - a0 * center_x - a1 * center_y
  b2 = center_y + shift_y - b0 * center_x - b1 * center_y
  # Flipping the output after the affine is substituting x -> W - 1 - x:
  # exact on the pixel grid, so it costs no extra pass.
  a2 += flipped * a0 * (width - 1)
  b2 += flipped * b0 * (width - 1)
  a0 *= 1 - 2 * flipped
  b0 *= 1 - 2 * flipped
  zeros = ops.zeros_like(a0)
  return ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def apply_transform(images, params, fill_mode='nearest',
                    interpolation='bilinear', center='image'):
  """Applies explicit per-image ImageDataGenerator transforms, in one pass.

  The batched equivalent of `ImageDataGenerator().apply_transform(x, params)`
  (with its defaults fill_mode='nearest', interpolation order 1), vectorized
  over the batch: `keras.ops.image.affine_transform`, which is
  ImageProjectiveTransformV3 under TensorFlow.

  Args:
    images: [B, H, W, C] tensor or array of any real dtype.
    params: dict of scalars or [B] arrays with the keys of PARAM_DEFAULTS
      (theta, tx, ty, shear, zx, zy, flip_horizontal) in
      ImageDataGenerator's meaning; missing keys are the identity.
    fill_mode: one of FILL_MODES; 'constant' fills with 0.
    interpolation: 'bilinear' or 'nearest'.
    center: 'image' (default) or 'idg'; see `projective_transforms`.

  Returns:
    float32 [B, H, W, C] transformed images, a tensor of the backend.

  Raises:
    ValueError: on a bad rank, fill_mode, interpolation, center or key.
  """
  checks.check_choice('fill_mode', fill_mode, FILL_MODES)
  checks.check_choice('interpolation', interpolation, INTERPOLATIONS)
  images = ops.convert_to_tensor(images)
  if len(images.shape) != 4:
    raise ValueError(f'images must be [B, H, W, C], got shape {images.shape}')
  images = ops.cast(images, 'float32')
  batch_size, height, width, _ = ops.shape(images)
  transforms = projective_transforms(params, batch_size, height, width,
                                     center=center)
  return ops.image.affine_transform(
      images, transforms, interpolation=interpolation, fill_mode=fill_mode,
      fill_value=0.0, data_format='channels_last')


@keras.saving.register_keras_serializable(package='xray_tfdata')
class RandomAffine(augment_base.ImageDataGeneratorAugmentation):
  """ImageDataGenerator's random affine augmentation, fused into one pass.

  Takes ImageDataGenerator's argument names and meanings (see
  `sample_params` and the module docstring; width_shift_range moves images
  horizontally, unlike ImageDataGenerator). Per image, draws the parameters
  and resamples once with `keras.ops.image.affine_transform`
  (ImageProjectiveTransformV3 under TensorFlow), on any Keras backend.

  Call with images [B, H, W, C] of any real dtype (uint8 included); returns
  float32. Augments only when `training` is truthy (model.fit); otherwise,
  including model.predict and model.evaluate, returns the input cast to
  float32.

  Under the TensorFlow backend `supports_jit` is False because
  ImageProjectiveTransformV3 has no XLA kernel in TF 2.21: with
  `compile(jit_compile='auto')` on a GPU, Keras would otherwise turn XLA on
  for the whole model and fail to compile. Such a model is therefore never
  XLA-compiled by Keras (Keras refuses `jit_compile=True` for it with a
  warning). Under JAX the layer compiles with the model.
  """

  def __init__(self, rotation_range=0., width_shift_range=0.,
               height_shift_range=0., shear_range=0., zoom_range=0.,
               horizontal_flip=False, fill_mode='nearest',
               interpolation='bilinear', seed=None, **kwargs):
    super().__init__(rotation_range, width_shift_range, height_shift_range,
                     shear_range, zoom_range, horizontal_flip, fill_mode,
                     interpolation, seed, **kwargs)
    self.seed_generator = keras.random.SeedGenerator(seed)

  @property
  def is_identity(self):
    """Whether every range is off, so that the layer never changes pixels."""
    any_range = (self.rotation_range or self.width_shift_range or
                 self.height_shift_range or self.shear_range or
                 self.horizontal_flip)
    return not any_range and checks.zoom_bounds(self.zoom_range) == (1, 1)

  def call(self, images, training=None):
    images = ops.cast(images, 'float32')
    if not training or self.is_identity:
      return images
    batch_size, height, width, _ = ops.shape(images)
    params = sample_params(batch_size, height, width, **self.ranges,
                           seed=self.seed_generator)
    return apply_transform(images, params, fill_mode=self.fill_mode,
                           interpolation=self.interpolation)



@keras.saving.register_keras_serializable(package='xray_tfdata')
class NoAugmentation(keras.layers.Layer):
  """Casts images to float32 and nothing else: augmentation switched off.

  Keeps the model's input contract (uint8 in, float32 out) the same as with
  the augmenting layers, and keeps XLA available (supports_jit stays True).
  """

  def __init__(self, **kwargs):
    super().__init__(**augment_base.float32_layer_kwargs(kwargs))

  def call(self, images, training=None):
    del training  # Same output either way.
    return ops.cast(images, 'float32')

  def compute_output_shape(self, input_shape):
    return input_shape


def make_augmentation(kind='fused', **idg_kwargs):
  """Returns the augmentation layer of the given kind.

  Args:
    kind: 'fused' (RandomAffine, the default), 'keras_cv'
      (KerasCVAugmentation, TensorFlow only), 'keras_core'
      (augment_keras_core.KerasCoreAugmentation, the Keras 3 core layers) or
      'none' (NoAugmentation; the ranges are accepted and ignored).
    **idg_kwargs: RandomAffine's arguments: ImageDataGenerator's
      rotation_range, width_shift_range, height_shift_range, shear_range,
      zoom_range, horizontal_flip, plus fill_mode, interpolation, seed and
      Layer kwargs such as name.

  Returns:
    A Keras layer mapping [B, H, W, C] images of any real dtype to float32,
    augmenting only when called with training=True.

  Raises:
    ValueError: on an unknown kind or a bad argument value.
  """
  if kind == 'fused':
    return RandomAffine(**idg_kwargs)
  if kind == 'keras_cv':
    return _keras_cv_module().keras_cv_chain(**idg_kwargs)
  if kind == 'keras_core':
    return augment_keras_core.KerasCoreAugmentation(**idg_kwargs)
  if kind == 'none':
    layer_kwargs = {key: value for key, value in idg_kwargs.items()
                    if key in ('name', 'trainable')}
    unknown = set(idg_kwargs) - set(_IDG_ARGS) - set(layer_kwargs) - {
        'fill_mode', 'interpolation', 'seed'}
    if unknown:
      raise TypeError(f'unexpected augmentation arguments {sorted(unknown)}')
    return NoAugmentation(**layer_kwargs)
  raise ValueError(f'unknown augmentation kind {kind!r}; expected one of '
                   f'{checks.AUGMENTATIONS}')


def _keras_cv_module():
  return importlib.import_module('xray_tfdata.augment_keras_cv')


@keras.saving.register_keras_serializable(package='xray_tfdata',
                                          name='KerasCVAugmentation')
class _KerasCVAugmentationLoader:
  """Stands in for KerasCVAugmentation in Keras' registry until it is
  imported (TensorFlow and keras-cv only, so not imported here): loading a
  model that holds one imports it then. Importing augment_keras_cv replaces
  this entry with the real class."""

  def get_config(self):  # register_keras_serializable asks for one
    raise NotImplementedError

  @classmethod
  def from_config(cls, config):
    return _keras_cv_module().KerasCVAugmentation.from_config(config)


def __getattr__(name):
  # The keras-cv chain is TensorFlow-only: imported on first use, so that
  # this module imports on every backend (and without TensorFlow).
  if name in ('KerasCVAugmentation', 'keras_cv_chain'):
    return getattr(_keras_cv_module(), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
