"""serving: the exported SavedModel's 'serve' signature and predict."""

import io
import os

import keras
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from xray_tfdata import imaging
from xray_tfdata import serving

SIZE = 16


@keras.saving.register_keras_serializable(package='xray_tfdata_test')
class FailsOnAnEmptyBatch(keras.layers.Layer):
  """Passes its input through, and fails on a batch of 0 images, as
  oneDNN's bfloat16 convolution does on AVX512_BF16 CPUs ("input depth must
  be evenly divisible by filter depth: 3 vs 64")."""

  def call(self, images):
    tf.debugging.assert_greater(tf.shape(images)[0], 0,
                                message='an empty batch reached the net')
    return images


def _net():
  inputs = keras.Input((SIZE, SIZE, 1), dtype='uint8')
  x = FailsOnAnEmptyBatch()(inputs)
  x = keras.layers.Flatten()(keras.ops.cast(x, 'float32') / 255.0)
  outputs = keras.layers.Dense(1, activation='sigmoid', dtype='float32',
                               kernel_initializer='random_normal')(x)
  return keras.Model(inputs, outputs)


def _png(pixels):
  buffer = io.BytesIO()
  Image.fromarray(pixels, 'L').save(buffer, 'PNG')
  return buffer.getvalue()


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp('model'))
  keras.utils.set_random_seed(3)
  net = _net()
  serving.export_model(net, model_dir, SIZE)
  return net, tf.saved_model.load(os.path.join(model_dir,
                                               serving.SERVING_DIR))


def test_the_test_layer_fails_on_an_empty_batch(exported):
  """The check below means something only if the net itself cannot take
  an empty batch."""
  net, _ = exported
  with pytest.raises(tf.errors.InvalidArgumentError, match='empty batch'):
    net(tf.zeros([0, SIZE, SIZE, 1], tf.uint8), training=False)


def test_serve_takes_an_empty_batch_without_running_the_net(exported):
  _, served = exported
  probability = served.serve(tf.constant([], tf.string))['probability']
  assert probability.shape == (0,) and probability.dtype == tf.float32


def test_serve_scores_images_as_the_net_does(exported):
  net, served = exported
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, SIZE, SIZE), np.uint8)
  for count in (1, 3):
    probability = served.serve(tf.constant(
        [_png(image) for image in images[:count]]))['probability'].numpy()
    expected = net.predict(images[:count, ..., None], verbose=0).reshape(-1)
    np.testing.assert_allclose(probability, expected, atol=1e-6)
