"""Tests for xray_tfdata.augment against the real ImageDataGenerator."""

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

# Parameter draws within the seed's ranges; the last set has a large shear so
# that its direction matters.
_SEED_LIKE = dict(rotation=40, shift_x=0.3, shift_y=0.4, shear=0.2, zoom=0.4)
_LARGE_SHEAR = dict(rotation=40, shift_x=0.3, shift_y=0.4, shear=20, zoom=0.4)


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


def _batch(params_list):
  return {key: np.array([p[key] for p in params_list], np.float32)
          for key in params_list[0]}


@pytest.mark.parametrize(
    'height, width, channels, center',
    [(32, 48, 1, 'idg'), (48, 32, 3, 'idg'), (40, 40, 1, 'image'),
     (32, 32, 3, 'image')])
@pytest.mark.parametrize('ranges', [_SEED_LIKE, _LARGE_SHEAR],
                         ids=['seed_ranges', 'shear_20deg'])
def test_apply_transform_matches_image_data_generator(
    height, width, channels, center, ranges):
  rng = np.random.default_rng(height * 100 + width + channels)
  images, params_list, expected = [], [], []
  for _ in range(8):
    image = _smooth_image(rng, height, width, channels)
    params = _random_params(rng, height, width, ranges)
    images.append(image)
    params_list.append(params)
    expected.append(ImageDataGenerator().apply_transform(image, params))

  actual = augment.apply_transform(
      np.stack(images), _batch(params_list), center=center).numpy()

  assert actual.dtype == np.float32
  assert actual.shape == (8, height, width, channels)
  for i, params in enumerate(params_list):
    mask = _interior_mask(params, height, width)
    assert mask.sum() > 0.1 * height * width  # The comparison is not empty.
    diff = np.abs(actual[i] - expected[i])[mask]
    assert diff.max() < 1e-3 * 255, (i, params, diff.max())


def test_non_square_rotates_about_image_centre_unlike_idg():
  rng = np.random.default_rng(1)
  image = _smooth_image(rng, 32, 48, 1)

  rotated = augment.apply_transform(image[None], {'theta': [180.0]})[0]
  idg = ImageDataGenerator().apply_transform(image, {'theta': 180.0})

  # 180 degrees about the true centre is a flip of both axes.
  np.testing.assert_allclose(rotated, image[::-1, ::-1], atol=1e-3)
  # ImageDataGenerator's centre is off on non-square images (documented).
  assert np.abs(idg - image[::-1, ::-1]).max() > 10


def test_identity_params_give_identity_for_uint8():
  images = np.random.default_rng(2).integers(0, 256, (3, 32, 48, 1), np.uint8)
  identity = dict(augment.PARAM_DEFAULTS)

  actual = augment.apply_transform(images, identity)
  missing_keys = augment.apply_transform(images, {})

  assert actual.dtype == tf.float32
  np.testing.assert_allclose(actual, images.astype(np.float32), atol=1e-3)
  np.testing.assert_allclose(missing_keys, images.astype(np.float32),
                             atol=1e-3)


def test_flip_only_mirrors_the_flagged_images():
  images = np.random.default_rng(3).uniform(0, 1, (3, 32, 48, 3))

  actual = augment.apply_transform(
      images, {'flip_horizontal': [1.0, 0.0, 1.0]}).numpy()

  np.testing.assert_allclose(actual[0], images[0, :, ::-1], atol=1e-5)
  np.testing.assert_allclose(actual[1], images[1], atol=1e-5)
  np.testing.assert_allclose(actual[2], images[2, :, ::-1], atol=1e-5)


def test_tx_is_horizontal_and_ty_vertical():
  images = np.random.default_rng(4).uniform(0, 1, (1, 32, 48, 1))

  moved_x = augment.apply_transform(images, {'tx': [3.0]}).numpy()
  moved_y = augment.apply_transform(images, {'ty': [2.0]}).numpy()

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


def _idg_samples(count, height, width):
  generator = ImageDataGenerator(**augment.SEED_AUGMENTATION)
  np.random.seed(5)
  samples = [generator.get_random_transform((height, width, 1))
             for _ in range(count)]
  return {key: np.array([s[key] for s in samples], np.float64)
          for key in augment.PARAM_DEFAULTS}


def test_sampled_params_follow_image_data_generator_distributions():
  height, width = 32, 48
  ours = {key: value.numpy() for key, value in augment.sample_params(
      20000, height, width, **augment.SEED_AUGMENTATION, seed=6).items()}
  idg = _idg_samples(3000, height, width)

  # Ranges (uniform half-widths) and moments of U(-a, a): mean 0, var a^2/3.
  limits = dict(theta=40, tx=0.3 * width, ty=0.4 * height, shear=0.2)
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
  layer = augment.RandomAffine(**augment.SEED_AUGMENTATION, seed=1)

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
  first = augment.RandomAffine(**augment.SEED_AUGMENTATION, seed=3)
  second = augment.RandomAffine(**augment.SEED_AUGMENTATION, seed=3)

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
      augment.make_augmentation(kind, **augment.SEED_AUGMENTATION, seed=2))

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
  fused = augment.make_augmentation('fused', **augment.SEED_AUGMENTATION,
                                    seed=4)
  chain = augment.keras_cv_chain(**augment.SEED_AUGMENTATION, seed=4)

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
  layer = augment.make_augmentation(kind, **augment.SEED_AUGMENTATION)
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
  layer = augment.RandomAffine(**augment.SEED_AUGMENTATION, seed=5)
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
  layer = augment.make_augmentation(kind, **augment.SEED_AUGMENTATION,
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
