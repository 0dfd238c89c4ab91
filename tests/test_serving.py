"""The exported serving signature (xray_tfdata.serving) against the
converter (xray_tfdata.imaging): the same source file, the same pixels."""

import io
import os

import numpy as np
from PIL import Image
import pytest

from xray_tfdata import imaging
from xray_tfdata import serving

SIZE = 32


def _identity_model():
  """uint8 [N, SIZE, SIZE, 1] -> the same pixels as float32 [N, SIZE *
  SIZE]: the 'probabilities' the signature returns are then the pixels it
  decoded and resized."""
  import keras  # pylint: disable=g-import-not-at-top
  images = keras.Input((SIZE, SIZE, 1), dtype='uint8')
  pixels = keras.layers.Rescaling(1.0, dtype='float32')(images)
  return keras.Model(images, keras.layers.Flatten()(pixels))


def _radiograph_like(shape, seed):
  """Smooth structure plus noise: detail finer than the stored size, which
  a resize without the converter's anti-aliased filter folds into other
  values."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
  values = (128 + 60 * np.sin(xx / 7.0) + 40 * np.cos(yy / 5.0) +
            rng.normal(0, 30, shape))
  return np.clip(values, 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def served(tmp_path_factory):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  model_dir = str(tmp_path_factory.mktemp('export'))
  serving.export_model(_identity_model(), model_dir, SIZE)
  return tf.saved_model.load(os.path.join(model_dir, serving.SERVING_DIR))


@pytest.mark.parametrize('shape', [(120, 90), (97, 140), (20, 26)])
def test_serving_resizes_as_the_converter_does(served, tmp_path, shape):
  """A PNG larger (and one smaller) than the stored size, sent as encoded
  bytes to the 'serve' signature, comes out as the pixels the converter
  stores for the same file (PIL's bilinear, anti-aliased; TensorFlow's
  antialias=True computes the same filter, to one grey level). Nearest,
  bilinear without anti-aliasing, bicubic or area differ by 7 or more grey
  levels somewhere, and by over 1.5 on average."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'source.png')
  Image.fromarray(_radiograph_like(shape, seed=sum(shape))).save(path)
  png, height, width = imaging.decode_and_resize((path, (SIZE, SIZE)))
  assert (height, width) == shape
  stored = np.asarray(Image.open(io.BytesIO(png))).astype(np.int64)

  with open(path, 'rb') as f:
    encoded = f.read()
  out = served.serve(tf.constant([encoded, encoded]))['probability'].numpy()
  pixels = out.reshape(2, SIZE, SIZE).astype(np.int64)
  np.testing.assert_array_equal(pixels[0], pixels[1])
  difference = np.abs(pixels[0] - stored)
  assert difference.max() <= 1, difference.max()
  assert difference.mean() <= 0.3, difference.mean()


def test_serving_keeps_stored_size_images_as_they_are(served, tmp_path):
  """An image already at the stored size (what predict_paths sends, having
  decoded it as the converter does) is passed through unchanged."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  pixels = _radiograph_like((SIZE, SIZE), seed=1)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, 'PNG')
  out = served.serve(tf.constant([buffer.getvalue()]))['probability'].numpy()
  np.testing.assert_array_equal(out.reshape(SIZE, SIZE), pixels)
