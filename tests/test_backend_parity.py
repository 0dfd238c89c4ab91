"""The device side against the real ImageDataGenerator, on any Keras backend.

Collected in the normal (TensorFlow) run, and run again by
tests/test_backends.py under KERAS_BACKEND=jax with TensorFlow made
unimportable (tests/no_tensorflow.py). So this file imports no TensorFlow:
the reference is Keras 3's ImageDataGenerator, which is numpy and scipy.
"""

import os
import sys

import keras
from keras.src.legacy.preprocessing.image import ImageDataGenerator
import numpy as np
import pytest
from scipy import ndimage

from xray_tfdata import augment
from xray_tfdata import model as model_lib

to_numpy = keras.ops.convert_to_numpy

# Parameter draws within the reference's ranges; the last set has a large
# shear so that its direction matters.
_REFERENCE_LIKE = dict(rotation=40, shift_x=0.3, shift_y=0.4, shear=0.2, zoom=0.4)
_LARGE_SHEAR = dict(rotation=40, shift_x=0.3, shift_y=0.4, shear=20, zoom=0.4)
# Bilinear resampling in float32 against scipy's in float64.
_TOLERANCE = 1e-3 * 255


def test_runs_on_the_backend_asked_for_without_importing_tensorflow():
  backend = os.environ.get('KERAS_BACKEND', 'tensorflow')
  assert keras.backend.backend() == backend
  if backend != 'tensorflow':
    # The device-side modules are imported above; none pulled TensorFlow in.
    assert 'tensorflow' not in sys.modules


def _smooth_image(rng, height, width, channels):
  noise = rng.uniform(0, 255, (height, width, channels))
  return ndimage.gaussian_filter(noise, (2, 2, 0)).astype(np.float32)


def _random_params(rng, height, width, ranges):
  return dict(
      theta=rng.uniform(-ranges['rotation'], ranges['rotation']),
      tx=rng.uniform(-ranges['shift_x'], ranges['shift_x']) * width,
      ty=rng.uniform(-ranges['shift_y'], ranges['shift_y']) * height,
      shear=rng.uniform(-ranges['shear'], ranges['shear']),
      zx=rng.uniform(1 - ranges['zoom'], 1 + ranges['zoom']),
      zy=rng.uniform(1 - ranges['zoom'], 1 + ranges['zoom']),
      flip_horizontal=bool(rng.random() < 0.5))


def _interior_mask(params, height, width):
  """Output pixels whose source lies at least 1 px inside the input.

  Found with ImageDataGenerator itself (constant fill on an all-ones image),
  so it does not depend on the code under test.
  """
  ones = np.ones((height, width, 1), np.float32)
  inside = ImageDataGenerator(fill_mode='constant', cval=0.0).apply_transform(
      ones, params)[..., 0] > 1 - 1e-6
  return ndimage.binary_erosion(inside, iterations=1)


def _assert_matches_idg(actual, images, idg_params, ours=None):
  """Each actual[i] equals ImageDataGenerator's transform of images[i] with
  idg_params[i], inside the image (ours[i] named in the message)."""
  height, width = images.shape[1:3]
  for i, params in enumerate(idg_params):
    expected = ImageDataGenerator().apply_transform(images[i], params)
    mask = _interior_mask(params, height, width)
    assert mask.sum() > 0.1 * height * width  # The comparison is not empty.
    diff = np.abs(actual[i] - expected)[mask]
    assert diff.max() < _TOLERANCE, (i, params, ours and ours[i], diff.max())


def _batch(params_list):
  return {key: np.array([p[key] for p in params_list], np.float32)
          for key in params_list[0]}


@pytest.mark.parametrize(
    'height, width, channels, center',
    [(32, 48, 1, 'idg'), (48, 32, 3, 'idg'), (40, 40, 1, 'image'),
     (32, 32, 3, 'image')])
@pytest.mark.parametrize('ranges', [_REFERENCE_LIKE, _LARGE_SHEAR],
                         ids=['reference_ranges', 'shear_20deg'])
def test_apply_transform_matches_image_data_generator(
    height, width, channels, center, ranges):
  rng = np.random.default_rng(height * 100 + width + channels)
  images = np.stack([_smooth_image(rng, height, width, channels)
                     for _ in range(8)])
  params_list = [_random_params(rng, height, width, ranges)
                 for _ in range(8)]

  actual = to_numpy(augment.apply_transform(
      images, _batch(params_list), center=center))

  assert actual.dtype == np.float32
  assert actual.shape == (8, height, width, channels)
  _assert_matches_idg(actual, images, params_list)


def _idg_centred(params, height, width):
  """The same transform as `params` about the image centre, written as
  ImageDataGenerator params (which turn about (H/2 - 0.5, W/2 - 0.5) in x, y
  on non-square images).

  With A = R(theta) Shear(shear) Zoom(zx, zy) (ImageDataGenerator's matrices,
  in x, y) an output point p maps to A (p - c) + R t + c. Matching it about
  ImageDataGenerator's centre c' needs t' = t + R^-1 (I - A) (c - c').
  """
  theta, shear = np.radians(params['theta']), np.radians(params['shear'])
  rotation = np.array([[np.cos(theta), -np.sin(theta)],
                       [np.sin(theta), np.cos(theta)]])
  shearing = np.array([[1, -np.sin(shear)], [0, np.cos(shear)]])
  linear = rotation @ shearing @ np.diag([params['zx'], params['zy']])
  offset = (np.array([(width - 1) / 2, (height - 1) / 2]) -
            np.array([(height - 1) / 2, (width - 1) / 2]))
  shift = (np.array([params['tx'], params['ty']]) +
           rotation.T @ (np.eye(2) - linear) @ offset)
  return dict(params, tx=shift[0], ty=shift[1])


@pytest.mark.parametrize('height, width', [(32, 48), (48, 32)])
def test_random_affine_layer_matches_image_data_generator_on_non_square(
    height, width):
  # The layer's own draws, recovered from a generator with the same seed:
  # checks that call() passes height and width the right way round, that it
  # flips, and that it turns about the image centre.
  rng = np.random.default_rng(9)
  images = np.stack([_smooth_image(rng, height, width, 1) for _ in range(12)])
  layer = augment.RandomAffine(**augment.REFERENCE_AUGMENTATION, seed=21)

  actual = to_numpy(layer(images, training=True))
  drawn = augment.sample_params(
      len(images), height, width, **augment.REFERENCE_AUGMENTATION,
      seed=keras.random.SeedGenerator(21))
  drawn = [{key: float(to_numpy(value)[i]) for key, value in drawn.items()}
           for i in range(len(images))]

  flips = [p['flip_horizontal'] for p in drawn]
  assert 0 < sum(flips) < len(flips)  # Both kinds of image are checked.
  _assert_matches_idg(actual, images,
                      [_idg_centred(p, height, width) for p in drawn], drawn)


def test_random_affine_flips_half_of_the_images():
  images = np.random.default_rng(10).uniform(0, 255, (200, 8, 12, 1))
  layer = augment.RandomAffine(horizontal_flip=True, seed=3)

  out = to_numpy(layer(images, training=True))

  mirrored = np.all(np.abs(out - images[:, :, ::-1]) < 1e-3, axis=(1, 2, 3))
  unchanged = np.all(np.abs(out - images) < 1e-3, axis=(1, 2, 3))
  assert np.all(mirrored ^ unchanged)  # Each image is one or the other.
  assert 0.4 < mirrored.mean() < 0.6


def test_non_square_rotates_about_image_centre_unlike_idg():
  rng = np.random.default_rng(1)
  image = _smooth_image(rng, 32, 48, 1)

  rotated = to_numpy(augment.apply_transform(image[None], {'theta': [180.0]}))
  idg = ImageDataGenerator().apply_transform(image, {'theta': 180.0})

  # 180 degrees about the true centre is a flip of both axes.
  np.testing.assert_allclose(rotated[0], image[::-1, ::-1], atol=1e-3)
  # ImageDataGenerator's centre is off on non-square images (documented).
  assert np.abs(idg - image[::-1, ::-1]).max() > 10


def test_identity_params_give_identity_for_uint8():
  images = np.random.default_rng(2).integers(0, 256, (3, 32, 48, 1), np.uint8)
  identity = dict(augment.PARAM_DEFAULTS)

  actual = to_numpy(augment.apply_transform(images, identity))
  missing_keys = to_numpy(augment.apply_transform(images, {}))

  assert actual.dtype == np.float32
  np.testing.assert_allclose(actual, images.astype(np.float32), atol=1e-3)
  np.testing.assert_allclose(missing_keys, images.astype(np.float32),
                             atol=1e-3)


def test_flip_only_mirrors_the_flagged_images():
  images = np.random.default_rng(3).uniform(0, 1, (3, 32, 48, 3))

  actual = to_numpy(augment.apply_transform(
      images, {'flip_horizontal': [1.0, 0.0, 1.0]}))

  np.testing.assert_allclose(actual[0], images[0, :, ::-1], atol=1e-5)
  np.testing.assert_allclose(actual[1], images[1], atol=1e-5)
  np.testing.assert_allclose(actual[2], images[2, :, ::-1], atol=1e-5)


def test_tx_is_horizontal_and_ty_vertical():
  images = np.random.default_rng(4).uniform(0, 1, (1, 32, 48, 1))

  moved_x = to_numpy(augment.apply_transform(images, {'tx': [3.0]}))
  moved_y = to_numpy(augment.apply_transform(images, {'ty': [2.0]}))

  # out(x) = in(x + tx): content moves left by tx, up by ty.
  np.testing.assert_allclose(moved_x[0, :, :-3], images[0, :, 3:], atol=1e-5)
  np.testing.assert_allclose(moved_y[0, :-2], images[0, 2:], atol=1e-5)


def test_bad_arguments_raise_value_error():
  images = np.zeros((1, 8, 8, 1), np.float32)
  with pytest.raises(ValueError, match='fill_mode'):
    augment.apply_transform(images, {}, fill_mode='mirror')
  with pytest.raises(ValueError, match='unknown transform parameters'):
    augment.apply_transform(images, {'rotation': [1.0]})
  with pytest.raises(ValueError, match=r'\[B, H, W, C\]'):
    augment.apply_transform(images[0], {})
  with pytest.raises(ValueError, match='rotation_range'):
    augment.RandomAffine(rotation_range=-1)
  with pytest.raises(ValueError, match='zoom_range'):
    augment.sample_params(4, 8, 8, zoom_range=1.5)
  with pytest.raises(ValueError, match='unknown augmentation kind'):
    augment.make_augmentation('albumentations')


@pytest.mark.parametrize('channels', [1, 3])
def test_preprocessing_equals_vgg16_preprocess_input_exactly(channels):
  images = np.random.default_rng(5).integers(
      0, 256, (2, 8, 8, channels), np.uint8)
  rgb = np.repeat(images, 3, axis=-1) if channels == 1 else images

  actual = to_numpy(model_lib.VGG16Preprocess()(images))

  expected = keras.applications.vgg16.preprocess_input(
      rgb.astype(np.float32))
  np.testing.assert_array_equal(actual, to_numpy(expected))


@pytest.mark.slow
def test_model_trains_a_few_steps_predicts_and_reloads(tmp_path):
  keras.utils.set_random_seed(0)
  rng = np.random.default_rng(6)
  images = rng.integers(0, 256, (8, 32, 32, 1), np.uint8)
  labels = np.array([0, 1] * 4, np.float32)
  net = model_lib.build_model(32, dense_units=(8, 4), augmentation='fused',
                              policy='float32')
  model_lib.compile_model(net)

  history = net.fit(images, labels, batch_size=4, epochs=2, verbose=0)
  predictions = net.predict(images, verbose=0)

  assert len(history.history['loss']) == 2
  assert np.all(np.isfinite(history.history['loss']))
  assert predictions.shape == (8, 1) and np.all((0 <= predictions) &
                                                (predictions <= 1))
  path = str(tmp_path / 'model.keras')
  net.save(path)
  np.testing.assert_allclose(
      keras.models.load_model(path).predict(images, verbose=0), predictions,
      atol=1e-6)
