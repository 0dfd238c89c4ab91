"""Tests for xray_tfdata.augment under TensorFlow: sampling, the layers in
Keras models, tf.function and tf.data, keras-cv, serialization.

The parity tests against the real ImageDataGenerator, which run on every
Keras backend, are in test_backend_parity.py."""

import os
import warnings

import keras
import numpy as np
import pytest
from scipy import ndimage
from scipy import stats
import tensorflow as tf

from xray_tfdata import augment

ImageDataGenerator = tf.keras.preprocessing.image.ImageDataGenerator


def _smooth_image(rng, height, width, channels):
  noise = rng.uniform(0, 255, (height, width, channels))
  return ndimage.gaussian_filter(noise, (2, 2, 0)).astype(np.float32)


def _idg_samples(count, height, width,
                 idg_kwargs=augment.REFERENCE_AUGMENTATION):
  generator = ImageDataGenerator(**idg_kwargs)
  np.random.seed(5)
  samples = [generator.get_random_transform((height, width, 1))
             for _ in range(count)]
  return {key: np.array([s[key] for s in samples], np.float64)
          for key in augment.PARAM_DEFAULTS}


def test_sampled_params_follow_image_data_generator_distributions():
  height, width = 32, 48
  ours = {key: value.numpy() for key, value in augment.sample_params(
      20000, height, width, **augment.REFERENCE_AUGMENTATION, seed=6).items()}
  idg = _idg_samples(3000, height, width)

  # Ranges (uniform half-widths) and moments of U(-a, a): mean 0, var a^2/3.
  ranges = augment.REFERENCE_AUGMENTATION
  limits = dict(theta=ranges['rotation_range'],
                tx=ranges['width_shift_range'] * width,
                ty=ranges['height_shift_range'] * height,
                shear=ranges['shear_range'])
  for key, limit in limits.items():
    values = ours[key]
    assert np.abs(values).max() <= limit
    assert np.abs(values).max() > 0.99 * limit
    assert abs(values.mean()) < 0.03 * limit
    assert values.var() == pytest.approx(limit**2 / 3, rel=0.05)
  for key in ('zx', 'zy'):
    assert ours[key].min() >= 0.6 and ours[key].max() <= 1.4
    assert ours[key].mean() == pytest.approx(1.0, abs=0.01)
    assert ours[key].var() == pytest.approx(0.8**2 / 12, rel=0.05)
  assert abs(np.corrcoef(ours['zx'], ours['zy'])[0, 1]) < 0.03
  assert abs(np.corrcoef(ours['theta'], ours['shear'])[0, 1]) < 0.03
  assert set(np.unique(ours['flip_horizontal'])) == {0.0, 1.0}
  assert ours['flip_horizontal'].mean() == pytest.approx(0.5, abs=0.02)

  # Against ImageDataGenerator's own draws (Kolmogorov-Smirnov). Its shift
  # ranges are swapped: its tx (horizontal) comes from height_shift_range *
  # rows, so our ty has its tx's distribution and our tx its ty's.
  pairs = [('theta', 'theta'), ('shear', 'shear'), ('zx', 'zx'),
           ('zy', 'zy'), ('tx', 'ty'), ('ty', 'tx')]
  for our_key, idg_key in pairs:
    result = stats.ks_2samp(ours[our_key], idg[idg_key])
    assert result.pvalue > 1e-3, (our_key, idg_key, result)
  assert abs(np.corrcoef(idg['zx'], idg['zy'])[0, 1]) < 0.08
  assert idg['flip_horizontal'].mean() == pytest.approx(
      ours['flip_horizontal'].mean(), abs=0.04)


def test_reference_augmentation_moves_images_as_the_notebook_did():
  # The notebook's call as written, through ImageDataGenerator's swap, and
  # REFERENCE_AUGMENTATION through the layer's documented meaning give the
  # same shifts on square images, key for key.
  size = 32
  ours = {key: value.numpy() for key, value in augment.sample_params(
      3000, size, size, **augment.REFERENCE_AUGMENTATION, seed=7).items()}
  idg = _idg_samples(3000, size, size, augment.REFERENCE_GENERATOR_KWARGS)
  assert augment.REFERENCE_GENERATOR_KWARGS['width_shift_range'] == 0.3
  assert augment.REFERENCE_GENERATOR_KWARGS['height_shift_range'] == 0.4
  assert augment.image_data_generator_kwargs(
      augment.REFERENCE_AUGMENTATION) == augment.REFERENCE_GENERATOR_KWARGS
  for key in ('tx', 'ty'):
    assert stats.ks_2samp(ours[key], idg[key]).pvalue > 1e-3, key


def test_shift_ranges_scale_with_their_own_axis():
  tall = augment.sample_params(5000, 100, 10, width_shift_range=0.2,
                               height_shift_range=0.2, seed=7)
  assert np.abs(tall['tx']).max() <= 2.0  # 0.2 * width
  assert np.abs(tall['ty']).max() > 19.0  # up to 0.2 * height
  pixels = augment.sample_params(5000, 100, 10, width_shift_range=3.0, seed=7)
  assert 2.9 < np.abs(pixels['tx']).max() <= 3.0  # >= 1 means pixels.


def test_sample_params_seeding():
  same_a = augment.sample_params(8, 32, 32, rotation_range=40, seed=11)
  same_b = augment.sample_params(8, 32, 32, rotation_range=40, seed=11)
  generator = keras.random.SeedGenerator(11)
  first = augment.sample_params(8, 32, 32, rotation_range=40, seed=generator)
  second = augment.sample_params(8, 32, 32, rotation_range=40, seed=generator)

  np.testing.assert_array_equal(same_a['theta'], same_b['theta'])
  assert not np.array_equal(first['theta'], second['theta'])
  assert len(np.unique(first['theta'])) == 8  # Per image.


def _images(batch=4, height=32, width=48, channels=1, seed=8):
  rng = np.random.default_rng(seed)
  return np.stack([_smooth_image(rng, height, width, channels)
                   for _ in range(batch)]).astype(np.uint8)


def test_random_affine_augments_only_when_training():
  images = _images()
  layer = augment.RandomAffine(**augment.REFERENCE_AUGMENTATION, seed=1)

  for training in (None, False):
    output = layer(images, training=training)
    assert output.dtype == tf.float32
    np.testing.assert_array_equal(output, images.astype(np.float32))
  augmented = layer(images, training=True).numpy()
  assert augmented.dtype == np.float32
  assert augmented.shape == images.shape
  per_image_change = np.abs(augmented - images).mean(axis=(1, 2, 3))
  assert (per_image_change > 1).all()
  assert len(np.unique(per_image_change.round(3))) == len(images)


def test_random_affine_is_deterministic_when_seeded():
  images = _images()
  first = augment.RandomAffine(**augment.REFERENCE_AUGMENTATION, seed=3)
  second = augment.RandomAffine(**augment.REFERENCE_AUGMENTATION, seed=3)

  np.testing.assert_array_equal(first(images, training=True),
                                second(images, training=True))


def _augmentation_model(layer, shape=(32, 48, 1)):
  inputs = keras.Input(shape, dtype='uint8')
  model = keras.Model(inputs, layer(inputs))
  model.compile(loss='mse')
  return model


@pytest.mark.parametrize('kind', ['fused', 'keras_cv'])
def test_model_predict_and_evaluate_see_unaugmented_images(kind):
  images = _images()
  target = images.astype(np.float32)
  model = _augmentation_model(
      augment.make_augmentation(kind, **augment.REFERENCE_AUGMENTATION, seed=2))

  np.testing.assert_array_equal(model.predict(images, verbose=0), target)
  assert model.evaluate(images, target, verbose=0) == 0.0
  with warnings.catch_warnings():
    warnings.filterwarnings('ignore', 'The model does not have any trainable')
    assert model.train_on_batch(images, target) > 10.0


def test_raw_keras_cv_layers_augment_in_inference():
  """The trap the wrapper exists for: keras-cv 0.9 ignores `training`."""
  import keras_cv  # pylint: disable=g-import-not-at-top

  images = _images().astype(np.float32)
  layer = keras_cv.layers.RandomRotation(40 / 360, fill_mode='nearest')
  assert np.abs(layer(images, training=False) - images).max() > 10


def test_keras_cv_chain_roughly_matches_fused_magnitudes():
  images = np.tile(_images(batch=1, height=48, width=48), (64, 1, 1, 1))
  fused = augment.make_augmentation('fused', **augment.REFERENCE_AUGMENTATION,
                                    seed=4)
  chain = augment.keras_cv_chain(**augment.REFERENCE_AUGMENTATION, seed=4)

  fused_out = fused(images, training=True).numpy()
  chain_out = chain(images, training=True).numpy()

  assert chain_out.shape == images.shape and chain_out.dtype == np.float32
  assert [type(l).__name__ for l in chain.chain] == [
      'RandomRotation', 'RandomTranslation', 'RandomShear', 'RandomZoom',
      'RandomFlip']
  fused_change = np.abs(fused_out - images).mean()
  chain_change = np.abs(chain_out - images).mean()
  assert 0.6 < chain_change / fused_change < 1.6
  # The chain's four passes smooth more than one pass: lower pixel spread.
  assert chain_out.std(axis=(1, 2)).mean() < fused_out.std(axis=(1, 2)).mean()


def test_keras_cv_chain_flips_half_of_non_square_images():
  images = np.random.default_rng(11).uniform(0, 255, (200, 8, 12, 1))
  chain = augment.keras_cv_chain(horizontal_flip=True, seed=2)

  out = chain(images.astype(np.float32), training=True).numpy()

  mirrored = np.all(np.abs(out - images[:, :, ::-1]) < 1e-3, axis=(1, 2, 3))
  unchanged = np.all(np.abs(out - images) < 1e-3, axis=(1, 2, 3))
  assert np.all(mirrored ^ unchanged)  # Each image is one or the other.
  assert 0.4 < mirrored.mean() < 0.6


@pytest.fixture
def mixed_bfloat16():
  keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy('float32')


@pytest.mark.parametrize('kind', ['fused', 'keras_cv', 'none'])
def test_augmentation_runs_in_float32_under_mixed_bfloat16(
    mixed_bfloat16, kind):  # pylint: disable=redefined-outer-name
  del mixed_bfloat16
  layer = augment.make_augmentation(kind, **augment.REFERENCE_AUGMENTATION)
  inputs = keras.Input((32, 48, 1), dtype='uint8')
  features = keras.layers.GlobalAveragePooling2D()(layer(inputs))
  model = keras.Model(inputs, keras.layers.Dense(1)(features))
  model.compile(optimizer='sgd', loss='mse')

  assert layer.compute_dtype == 'float32'
  assert layer(_images(), training=True).dtype == tf.float32
  assert layer(tf.cast(_images(), tf.bfloat16), training=True).dtype == (
      tf.float32)
  history = model.fit(_images(), np.zeros(4), epochs=1, verbose=0)
  assert np.isfinite(history.history['loss'][0])


def test_augmentation_works_in_tf_function_and_tf_data():
  images = _images(batch=4)
  layer = augment.RandomAffine(**augment.REFERENCE_AUGMENTATION, seed=5)
  eager = layer(images, training=True)

  graph = tf.function(lambda x: layer(x, training=True))(images)
  dataset = tf.data.Dataset.from_tensor_slices(images).batch(2).map(
      lambda batch: layer(batch, training=True))
  batches = list(dataset)

  for output in [eager, graph] + batches:
    assert output.dtype == tf.float32
    assert np.abs(output.numpy() - images[:len(output)]).mean() > 1
  assert [b.shape.as_list() for b in batches] == [[2, 32, 48, 1]] * 2


@pytest.mark.parametrize('kind', ['fused', 'keras_cv', 'none'])
def test_model_with_augmentation_saves_and_reloads(tmp_path, kind):
  images = _images()
  layer = augment.make_augmentation(kind, **augment.REFERENCE_AUGMENTATION,
                                    seed=6, name='augmentation')
  model = _augmentation_model(layer)
  path = os.path.join(tmp_path, 'model.keras')

  model.save(path)
  reloaded = keras.models.load_model(path)

  reloaded_layer = reloaded.get_layer('augmentation')
  assert type(reloaded_layer) is type(layer)
  assert reloaded_layer.get_config() == layer.get_config()
  np.testing.assert_array_equal(reloaded.predict(images, verbose=0),
                                images.astype(np.float32))
  if kind != 'none':
    assert np.abs(reloaded_layer(images, training=True) - images).mean() > 1


def test_augmenting_layers_keep_keras_from_enabling_xla():
  model = _augmentation_model(augment.RandomAffine(rotation_range=10))
  assert not model.layers[1].supports_jit
  with pytest.warns(UserWarning, match='jit_compile'):
    model.compile(loss='mse', jit_compile=True)
  assert model.jit_compile is False
  assert augment.make_augmentation('none').supports_jit


@pytest.mark.parametrize('height, width', [(32, 48), (48, 32)])
def test_keras_cv_wrapper_with_pinned_zoom_matches_image_data_generator(
    height, width):
  """The keras-cv chain with its only random part pinned (zoom_range as a
  one-value pair, so every image gets zx = zy = 0.8) against the real
  ImageDataGenerator on a non-square image, about the image centre."""
  from test_backend_parity import _assert_matches_idg  # pylint: disable=g-import-not-at-top
  from test_backend_parity import _idg_centred  # pylint: disable=g-import-not-at-top
  images = np.stack([_smooth_image(np.random.default_rng(12 + i), height,
                                   width, 1) for i in range(3)])
  chain = augment.keras_cv_chain(zoom_range=(0.8, 0.8), seed=1)

  out = chain(images, training=True).numpy()

  params = dict(augment.PARAM_DEFAULTS, zx=0.8, zy=0.8)
  _assert_matches_idg(out, images, [_idg_centred(params, height, width)] * 3)
