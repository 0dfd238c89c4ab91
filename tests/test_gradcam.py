"""Grad-CAM: on images with one planted bright lesion that a tiny model has
learned, the heatmap's maximum falls inside the lesion's box, under the
running backend (TensorFlow here) and under JAX (a process without
TensorFlow). No TensorFlow import here, so the file runs under both."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import REPO_ROOT
from xray_tfdata import gradcam

SIZE = 32
LESION = 6


def lesion_images(n, seed):
  """Noise; half the images carry a bright LESION x LESION square at a
  random place. Returns (uint8 images, labels, boxes (row, col))."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 100, (n, SIZE, SIZE, 1)).astype(np.uint8)
  labels = np.arange(n) % 2
  boxes = rng.integers(2, SIZE - LESION - 2, (n, 2))
  for image, label, (row, col) in zip(images, labels, boxes):
    if label:
      image[row:row + LESION, col:col + LESION] = 230
  return images, labels.astype(np.float32), boxes


def tiny_model():
  keras.utils.set_random_seed(0)
  # Whatever policy an earlier test left: these numbers are compared.
  keras.mixed_precision.set_global_policy('float32')
  inputs = keras.Input((SIZE, SIZE, 1), dtype='uint8')
  x = keras.layers.Rescaling(1 / 255)(inputs)
  x = keras.layers.Conv2D(8, 3, padding='same', activation='relu')(x)
  x = keras.layers.Conv2D(8, 3, padding='same', activation='relu')(x)
  x = keras.layers.GlobalMaxPooling2D()(x)
  outputs = keras.layers.Dense(1, activation='sigmoid')(x)
  return keras.Model(inputs, outputs)


@pytest.fixture(scope='module')
def trained():
  net = tiny_model()
  net.compile(optimizer=keras.optimizers.Adam(0.01),
              loss='binary_crossentropy')
  images, labels, _ = lesion_images(256, seed=1)
  net.fit(images, labels, batch_size=32, epochs=15, verbose=0)
  return net


@pytest.mark.slow  # trains a tiny model (about 10 s)
def test_heatmap_maximum_inside_the_lesion(trained):
  images, labels, boxes = lesion_images(40, seed=2)
  probs = np.asarray(trained.predict(images, verbose=0)).reshape(-1)
  # The model has learned the lesion.
  assert (probs[labels == 1] > 0.5).mean() > 0.9
  assert (probs[labels == 0] < 0.5).mean() > 0.9
  positives = labels == 1
  maps = gradcam.heatmaps(trained, images[positives])
  assert maps.shape == (positives.sum(), SIZE, SIZE)
  assert maps.min() >= 0 and np.isclose(maps.max(), 1)
  hits = 0
  for heatmap, (row, col) in zip(maps, boxes[positives]):
    peak_row, peak_col = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    hits += (row <= peak_row < row + LESION) and (col <= peak_col < col + LESION)
  assert hits >= 0.9 * positives.sum(), hits


def test_overlays_are_the_image_under_the_jet_colour_map(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.full((8, 8, 1), 100, np.uint8)
  heatmap = np.zeros((8, 8), np.float32)
  heatmap[2, 3] = 1.0
  paths = gradcam.write_overlays(str(tmp_path / 'maps'), ['a'], [image],
                                 [heatmap], alpha=0.5)
  assert paths == [str(tmp_path / 'maps' / 'a.gradcam.png')]
  with Image.open(paths[0]) as png:
    rgb = np.asarray(png.convert('RGB')).astype(int)
  # jet: 0 is dark blue (0, 0, 127.5), 1 dark red (127.5, 0, 0).
  assert np.abs(rgb[0, 0] - np.array([50, 50, 114])).max() <= 1
  assert np.abs(rgb[2, 3] - np.array([114, 50, 50])).max() <= 1


def test_split_model_equals_the_model_and_overlay():
  from xray_tfdata import model  # pylint: disable=g-import-not-at-top
  net = model.build_model(SIZE, backbone='mini_vgg', weights=None,
                          frozen_blocks=0, dense_units=(4,), dropout=0.0,
                          augmentation='fused', policy='float32')
  head, tail = gradcam.split_at_last_conv(net)
  assert head[-1].name == 'block4_conv2'
  images, _, _ = lesion_images(4, seed=3)
  np.testing.assert_allclose(
      keras.ops.convert_to_numpy(gradcam.forward(net, images)),
      keras.ops.convert_to_numpy(net(images, training=False)), atol=1e-5)
  maps = gradcam.heatmaps(net, images)
  assert maps.shape == (4, SIZE, SIZE) and maps.dtype == np.float32
  picture = gradcam.overlay(images[0], maps[0])
  assert picture.shape == (SIZE, SIZE, 3) and picture.dtype == np.uint8
  with pytest.raises(gradcam.GradCamError, match='no Conv2D'):
    inputs = keras.Input((4,))
    gradcam.heatmaps(keras.Model(inputs, keras.layers.Dense(1)(inputs)),
                     np.zeros((1, 4)))


@pytest.mark.slow  # a JAX process
def test_under_jax_without_tensorflow():
  if keras.backend.backend() == 'jax':
    pytest.skip('this is the JAX run itself')
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'tests', 'no_tensorflow.py'),
       '-q', '-p', 'no:cacheprovider', '-k', 'heatmap_maximum',
       os.path.join(REPO_ROOT, 'tests', 'test_gradcam.py')],
      capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
      env=dict(os.environ, KERAS_BACKEND='jax', JAX_PLATFORMS='cpu'))
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert '1 passed' in result.stdout, result.stdout[-2000:]
