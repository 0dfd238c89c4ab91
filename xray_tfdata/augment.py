"""Device-side augmentation that reproduces Keras' ImageDataGenerator.

The seed augments with `ImageDataGenerator(rotation_range=40,
width_shift_range=0.3, height_shift_range=0.4, shear_range=0.2,
zoom_range=0.4, horizontal_flip=True)`, one image at a time in scipy. This
module does the same inside the model, on whole batches, in two ways:

  RandomAffine          the fused layer (default): composes rotation, shift,
                        shear, zoom and flip into one matrix per image and
                        resamples once, as ImageDataGenerator itself does.
  KerasCVAugmentation   the keras-cv chain RandomRotation -> RandomTranslation
                        -> RandomShear -> RandomZoom -> RandomFlip, with the
                        arguments converted to ImageDataGenerator's meanings;
                        four resampling passes.

Both take ImageDataGenerator's argument names and meanings, augment only when
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

This module needs the TensorFlow backend: the resampling is
`tf.raw_ops.ImageProjectiveTransformV3`.
"""

import math

import keras
import tensorflow as tf

# The seed notebook's ImageDataGenerator augmentation.
SEED_AUGMENTATION = dict(
    rotation_range=40,
    width_shift_range=0.3,
    height_shift_range=0.4,
    shear_range=0.2,
    zoom_range=0.4,
    horizontal_flip=True,
)

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

FILL_MODES = ('nearest', 'reflect', 'wrap', 'constant')
INTERPOLATIONS = ('bilinear', 'nearest')
CENTERS = ('image', 'idg')
KINDS = ('fused', 'keras_cv', 'none')

_IDG_ARGS = ('rotation_range', 'width_shift_range', 'height_shift_range',
             'shear_range', 'zoom_range', 'horizontal_flip')


def _check_choice(name, value, choices):
  if value not in choices:
    raise ValueError(f'{name} must be one of {choices}, got {value!r}')


def _check_range(name, value):
  if (isinstance(value, bool) or not isinstance(value, (int, float)) or
      not math.isfinite(value) or value < 0):
    raise ValueError(
        f'{name} must be a non-negative number, got {value!r} (lists of '
        'allowed values, which ImageDataGenerator also accepts, are not '
        'supported)')


def zoom_bounds(zoom_range):
  """Returns ImageDataGenerator's (lower, upper) zoom factors.

  Args:
    zoom_range: a float z, meaning [1 - z, 1 + z], or a pair (lower, upper).

  Returns:
    (lower, upper) as Python floats.

  Raises:
    ValueError: if the range is malformed or reaches zero or below.
  """
  if isinstance(zoom_range, (list, tuple)):
    if len(zoom_range) != 2:
      raise ValueError(f'zoom_range pair must have 2 values, got {zoom_range}')
    lower, upper = (float(v) for v in zoom_range)
  else:
    _check_range('zoom_range', zoom_range)
    lower, upper = 1.0 - zoom_range, 1.0 + zoom_range
  if not 0 < lower <= upper or not math.isfinite(upper):
    raise ValueError(
        'zoom_range must give factors with 0 < lower <= upper, got '
        f'{zoom_range} -> ({lower}, {upper})')
  return lower, upper


def _shift_limit(shift_range, size):
  # ImageDataGenerator's rule: a range below 1 is a fraction of the size,
  # 1 or more is a number of pixels.
  return shift_range * size if shift_range < 1 else shift_range


def _uniform(shape, seed):
  if seed is None:
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
  # An int seed is stateless (same numbers for the same seed); a
  # keras.random.SeedGenerator advances, inside tf.function and fit too.
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
    seed: None (stateful TF random ops), an int (stateless: the same int
      gives the same parameters) or a `keras.random.SeedGenerator` (under
      tf.distribute with more than one replica, each replica draws its own
      parameters from it).

  Returns:
    A dict with keys theta, tx, ty, shear, zx, zy, flip_horizontal, each a
    float32 tensor of shape [batch_size] (flip_horizontal is 0. or 1.), in
    `apply_transform`'s meaning.

  Raises:
    ValueError: if a range is negative, not a number, or zoom reaches 0.
  """
  for name, value in (('rotation_range', rotation_range),
                      ('width_shift_range', width_shift_range),
                      ('height_shift_range', height_shift_range),
                      ('shear_range', shear_range)):
    _check_range(name, value)
  zoom_lower, zoom_upper = zoom_bounds(zoom_range)
  height = tf.cast(height, tf.float32)
  width = tf.cast(width, tf.float32)
  # One draw of seven independent streams: a single seed then serves all.
  uniform = _uniform([7, batch_size], seed)
  symmetric = 2.0 * uniform - 1.0
  if horizontal_flip:
    flip = tf.cast(uniform[6] < 0.5, tf.float32)
  else:
    flip = tf.zeros_like(uniform[6])
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
    float32 [batch_size, 8] rows [a0, a1, a2, b0, b1, b2, 0, 0] mapping each
    output pixel (x, y) to the input point (a0 x + a1 y + a2,
    b0 x + b1 y + b2), pixel centres at integer coordinates; the flip is
    folded in, so one resampling does the whole transform.

  Raises:
    ValueError: on an unknown key or center.
  """
  _check_choice('center', center, CENTERS)
  unknown = set(params) - set(PARAM_DEFAULTS)
  if unknown:
    raise ValueError(f'unknown transform parameters {sorted(unknown)}; '
                     f'expected some of {list(PARAM_DEFAULTS)}')

  def param(key):
    value = tf.cast(params.get(key, PARAM_DEFAULTS[key]), tf.float32)
    return tf.broadcast_to(value, [batch_size])

  height = tf.cast(height, tf.float32)
  width = tf.cast(width, tf.float32)
  theta = param('theta') * (math.pi / 180)
  shear = param('shear') * (math.pi / 180)
  zx, zy = param('zx'), param('zy')
  tx, ty = param('tx'), param('ty')
  flipped = tf.cast(tf.not_equal(param('flip_horizontal'), 0), tf.float32)

  cos, sin = tf.cos(theta), tf.sin(theta)
  # R(theta) . Shear(shear) . Zoom(zx, zy), multiplied out.
  a0 = cos * zx
  a1 = -zy * tf.sin(theta + shear)
  b0 = sin * zx
  b1 = zy * tf.cos(theta + shear)
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
  zeros = tf.zeros_like(a0)
  return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def apply_transform(images, params, fill_mode='nearest',
                    interpolation='bilinear', center='image'):
  """Applies explicit per-image ImageDataGenerator transforms, in one pass.

  The batched equivalent of `ImageDataGenerator().apply_transform(x, params)`
  (with its defaults fill_mode='nearest', interpolation order 1), vectorized
  over the batch.

  Args:
    images: [B, H, W, C] tensor or array of any real dtype.
    params: dict of scalars or [B] arrays with the keys of PARAM_DEFAULTS
      (theta, tx, ty, shear, zx, zy, flip_horizontal) in
      ImageDataGenerator's meaning; missing keys are the identity.
    fill_mode: one of FILL_MODES; 'constant' fills with 0.
    interpolation: 'bilinear' or 'nearest'.
    center: 'image' (default) or 'idg'; see `projective_transforms`.

  Returns:
    float32 [B, H, W, C] transformed images.

  Raises:
    ValueError: on a bad rank, fill_mode, interpolation, center or key.
  """
  _check_choice('fill_mode', fill_mode, FILL_MODES)
  _check_choice('interpolation', interpolation, INTERPOLATIONS)
  images = tf.convert_to_tensor(images)
  if images.shape.rank != 4:
    raise ValueError(f'images must be [B, H, W, C], got shape {images.shape}')
  images = tf.cast(images, tf.float32)
  shape = tf.shape(images)
  transforms = projective_transforms(params, shape[0], shape[1], shape[2],
                                     center=center)
  outputs = tf.raw_ops.ImageProjectiveTransformV3(
      images=images,
      transforms=transforms,
      output_shape=shape[1:3],
      fill_value=tf.constant(0.0, tf.float32),
      fill_mode=fill_mode.upper(),
      interpolation=interpolation.upper())
  outputs.set_shape(images.shape)
  return outputs


def _float32_layer_kwargs(kwargs):
  # Whatever policy is global (mixed_bfloat16 included) or was saved in a
  # config, augmentation runs in float32: ImageProjectiveTransformV3 has no
  # bfloat16 GPU kernel, and resampling in half precision loses detail.
  kwargs = dict(kwargs)
  kwargs.pop('dtype', None)
  kwargs['dtype'] = 'float32'
  return kwargs


class _ImageDataGeneratorAugmentation(keras.layers.Layer):
  """ImageDataGenerator's augmentation arguments, checked, stored and
  serialized once for both implementations; float32 whatever the policy,
  and never XLA-compiled (ImageProjectiveTransformV3 has no XLA kernel)."""

  def __init__(self, rotation_range=0., width_shift_range=0.,
               height_shift_range=0., shear_range=0., zoom_range=0.,
               horizontal_flip=False, fill_mode='nearest',
               interpolation='bilinear', seed=None, **kwargs):
    super().__init__(**_float32_layer_kwargs(kwargs))
    for name, value in (('rotation_range', rotation_range),
                        ('width_shift_range', width_shift_range),
                        ('height_shift_range', height_shift_range),
                        ('shear_range', shear_range)):
      _check_range(name, value)
    zoom_bounds(zoom_range)
    _check_choice('fill_mode', fill_mode, FILL_MODES)
    _check_choice('interpolation', interpolation, INTERPOLATIONS)
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
    self.supports_jit = False

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


@keras.saving.register_keras_serializable(package='xray_tfdata')
class RandomAffine(_ImageDataGeneratorAugmentation):
  """ImageDataGenerator's random affine augmentation, fused into one pass.

  Takes ImageDataGenerator's argument names and meanings (see
  `sample_params` and the module docstring; width_shift_range moves images
  horizontally, unlike ImageDataGenerator). Per image, draws the parameters
  and resamples once with ImageProjectiveTransformV3.

  Call with images [B, H, W, C] of any real dtype (uint8 included); returns
  float32. Augments only when `training` is truthy (model.fit); otherwise,
  including model.predict and model.evaluate, returns the input cast to
  float32.

  `supports_jit` is False because ImageProjectiveTransformV3 has no XLA kernel
  in TF 2.21: with `compile(jit_compile='auto')` on a GPU, Keras would
  otherwise turn XLA on for the whole model and fail to compile. A model
  containing this layer is therefore never XLA-compiled by Keras (Keras
  refuses `jit_compile=True` for it with a warning).
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
    return not any_range and zoom_bounds(self.zoom_range) == (1, 1)

  def call(self, images, training=None):
    images = tf.cast(images, tf.float32)
    if not training or self.is_identity:
      return images
    shape = tf.shape(images)
    params = sample_params(shape[0], shape[1], shape[2], **self.ranges,
                           seed=self.seed_generator)
    return apply_transform(images, params, fill_mode=self.fill_mode,
                           interpolation=self.interpolation)



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
class KerasCVAugmentation(_ImageDataGeneratorAugmentation):
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


@keras.saving.register_keras_serializable(package='xray_tfdata')
class NoAugmentation(keras.layers.Layer):
  """Casts images to float32 and nothing else: augmentation switched off.

  Keeps the model's input contract (uint8 in, float32 out) the same as with
  the augmenting layers, and keeps XLA available (supports_jit stays True).
  """

  def __init__(self, **kwargs):
    super().__init__(**_float32_layer_kwargs(kwargs))

  def call(self, images, training=None):
    del training  # Same output either way.
    return tf.cast(images, tf.float32)

  def compute_output_shape(self, input_shape):
    return input_shape


def make_augmentation(kind='fused', **idg_kwargs):
  """Returns the augmentation layer of the given kind.

  Args:
    kind: 'fused' (RandomAffine, the default), 'keras_cv'
      (KerasCVAugmentation) or 'none' (NoAugmentation; the ranges are
      accepted and ignored).
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
    return keras_cv_chain(**idg_kwargs)
  if kind == 'none':
    layer_kwargs = {key: value for key, value in idg_kwargs.items()
                    if key in ('name', 'trainable')}
    unknown = set(idg_kwargs) - set(_IDG_ARGS) - set(layer_kwargs) - {
        'fill_mode', 'interpolation', 'seed'}
    if unknown:
      raise TypeError(f'unexpected augmentation arguments {sorted(unknown)}')
    return NoAugmentation(**layer_kwargs)
  raise ValueError(f'unknown augmentation kind {kind!r}; expected one of '
                   f'{KINDS}')
