"""The Keras 3 core augmentation chain (augment_keras_core), on any backend.

Each converted range is measured on the pixels: a bar's angle for rotation,
a dot's displacement for translation, a square's extent for zoom, a bar's
slope for shear, against ImageDataGenerator's meanings of the ranges, not
against the conversion formulas. Imports no TensorFlow: tests/test_backends.py
runs this file again under JAX without TensorFlow.
"""

import math
import os

import keras
import numpy as np
import pytest

import xray_tfdata  # pylint: disable=unused-import  (registers the layers)
from xray_tfdata import augment
from xray_tfdata import augment_keras_core
from xray_tfdata import config as config_lib
from xray_tfdata import reference

to_numpy = keras.ops.convert_to_numpy
_COUNT = 300  # images per measured distribution


def _augment(image, count=_COUNT, seed=3, **ranges):
  layer = augment.make_augmentation('keras_core', seed=seed, **ranges)
  batch = np.repeat(image[None, :, :, None], count, axis=0)
  return to_numpy(layer(batch, training=True))[..., 0].astype(np.float64)


def _moments(images):
  """Intensity-weighted centroid (x, y) and central second moments."""
  height, width = images.shape[1:]
  y, x = np.mgrid[:height, :width].astype(np.float64)
  mass = images.sum(axis=(1, 2))
  cx = (images * x).sum(axis=(1, 2)) / mass
  cy = (images * y).sum(axis=(1, 2)) / mass
  dx = x[None] - cx[:, None, None]
  dy = y[None] - cy[:, None, None]
  mxx = (images * dx * dx).sum(axis=(1, 2)) / mass
  myy = (images * dy * dy).sum(axis=(1, 2)) / mass
  mxy = (images * dx * dy).sum(axis=(1, 2)) / mass
  return cx, cy, mxx, myy, mxy


def test_rotation_range_is_degrees():
  bar = np.zeros((33, 33), np.float32)
  bar[15:18, 4:29] = 255  # horizontal, through the centre
  _, _, mxx, myy, mxy = _moments(_augment(bar, rotation_range=40))
  angles = np.degrees(0.5 * np.arctan2(2 * mxy, mxx - myy))
  assert np.abs(angles).max() <= 41
  assert np.abs(angles).max() >= 37
  # Uniform in +-40 degrees: mean |angle| 20.
  assert 17 < np.abs(angles).mean() < 23


def test_shift_ranges_are_fractions_of_their_own_axis():
  dot = np.zeros((33, 33), np.float32)
  dot[15:18, 15:18] = 255
  cx, cy, _, _, _ = _moments(_augment(dot, width_shift_range=0.4,
                                      height_shift_range=0.3))
  dx, dy = np.abs(cx - 16), np.abs(cy - 16)
  # width_shift_range moves images sideways by up to 0.4 of the width, and
  # height_shift_range vertically by up to 0.3 of the height.
  assert dx.max() <= 0.4 * 33 + 0.5 and dx.max() >= 0.36 * 33
  assert dy.max() <= 0.3 * 33 + 0.5 and dy.max() >= 0.26 * 33
  assert 0.17 * 33 < dx.mean() < 0.23 * 33


def test_zoom_range_scales_each_axis_in_one_minus_to_one_plus_z():
  square = np.zeros((33, 33), np.float32)
  square[11:22, 11:22] = 255  # side 11, centred
  _, _, mxx, myy, _ = _moments(_augment(square, zoom_range=0.4))
  # A uniform square of side L has variance L**2 / 12 along each axis; the
  # output-to-input scale z shows it at side 11 / z (z > 1 zooms out).
  zx = 11 / np.sqrt(12 * mxx)
  zy = 11 / np.sqrt(12 * myy)
  for z in (zx, zy):
    assert 0.57 < z.min() < 0.65 and 1.35 < z.max() < 1.45
  # Independent axes, as ImageDataGenerator draws zx and zy.
  assert abs(np.corrcoef(zx, zy)[0, 1]) < 0.25
  assert np.abs(zx - zy).max() > 0.5


def test_shear_range_is_degrees_as_a_coefficient():
  bar = np.zeros((49, 49), np.float32)
  bar[2:15, 23:26] = 255  # vertical, near the top (the shear is not centred)
  _, _, _, myy, mxy = _moments(_augment(bar, shear_range=40))
  slopes = np.abs(mxy / myy)  # dx/dy of the bar
  # tan(40 deg) = 0.839; 40 degrees in radians (0.698) or as a fraction
  # (0.4) would stay below 0.75.
  assert slopes.max() <= math.tan(math.radians(40)) + 0.03
  assert slopes.max() >= 0.78


def test_horizontal_flip_mirrors_half_of_the_images():
  rng = np.random.default_rng(11)
  image = rng.uniform(0, 255, (8, 12)).astype(np.float32)
  out = _augment(image, count=200, horizontal_flip=True)
  mirrored = np.all(np.abs(out - image[:, ::-1]) < 1e-3, axis=(1, 2))
  unchanged = np.all(np.abs(out - image) < 1e-3, axis=(1, 2))
  assert np.all(mirrored ^ unchanged)
  assert 0.4 < mirrored.mean() < 0.6


def test_reference_chain_layers_and_training_only():
  layer = augment.make_augmentation(
      'keras_core', **reference.AUGMENTATION, seed=1)
  assert isinstance(layer, augment_keras_core.KerasCoreAugmentation)
  assert tuple(type(l).__name__ for l in layer.chain) == (
      augment_keras_core.LAYER_NAMES)
  assert all(type(l) is getattr(keras.layers, type(l).__name__)
             for l in layer.chain)
  images = np.random.default_rng(2).integers(0, 256, (4, 32, 32, 1),
                                             dtype=np.uint8)
  unchanged = to_numpy(layer(images, training=False))
  assert unchanged.dtype == np.float32
  np.testing.assert_array_equal(unchanged, images.astype(np.float32))
  changed = to_numpy(layer(images, training=True))
  assert changed.dtype == np.float32 and changed.shape == images.shape
  assert np.abs(changed - images).mean() > 5
  # Only the layers whose range is set.
  assert [type(l).__name__ for l in augment.make_augmentation(
      'keras_core', rotation_range=10).chain] == ['RandomRotation']


def test_float32_under_mixed_bfloat16_and_model_round_trip(tmp_path):
  keras.mixed_precision.set_global_policy('mixed_bfloat16')
  layer = augment.make_augmentation(
      'keras_core', **reference.AUGMENTATION, seed=6,
      name='augmentation')
  inputs = keras.Input((32, 32, 1), dtype='uint8')
  model = keras.Model(inputs, layer(inputs))
  assert layer.compute_dtype == 'float32'
  assert all(l.compute_dtype == 'float32' for l in layer.chain)
  images = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 1),
                                             dtype=np.uint8)
  assert to_numpy(layer(images, training=True)).dtype == np.float32
  path = os.path.join(tmp_path, 'model.keras')
  model.save(path)
  reloaded = keras.models.load_model(path)
  reloaded_layer = reloaded.get_layer('augmentation')
  assert type(reloaded_layer) is augment_keras_core.KerasCoreAugmentation
  assert reloaded_layer.get_config() == layer.get_config()
  np.testing.assert_array_equal(reloaded.predict(images, verbose=0),
                                images.astype(np.float32))


def test_jit_follows_the_backend():
  # Under TensorFlow the layers resample with ImageProjectiveTransformV3
  # (no XLA kernel); elsewhere they compile with the model.
  layer = augment.make_augmentation('keras_core', rotation_range=10)
  expected = keras.backend.backend() != 'tensorflow'
  assert layer.supports_jit is expected
  assert all(l.supports_jit is expected for l in layer.chain)


@pytest.mark.parametrize('ranges, needle', [
    (dict(width_shift_range=1.0), 'fractions below 1'),
    (dict(shear_range=50), 'below 45 degrees'),
    (dict(rotation_range=-1), 'rotation_range'),
])
def test_ranges_it_cannot_express_are_refused(ranges, needle):
  with pytest.raises(ValueError, match=needle):
    augment.make_augmentation('keras_core', **ranges)


def test_train_config_accepts_keras_core():
  config_lib.TrainConfig(data_dir='x', augmentation='keras_core').validate()
