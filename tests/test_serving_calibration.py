"""The exported SavedModel with temperature scaling inside (issue 21):
its output equals the calibrated probability, and it returns the
threshold and the decision."""

import io
import os

import numpy as np
from PIL import Image
import pytest

from xray_tfdata import evaluation
from xray_tfdata import serving

SIZE = 16


def over_confident_model():
  """uint8 image -> sigmoid(40 * (mean brightness - 0.5)): far too sure."""
  import keras  # pylint: disable=g-import-not-at-top
  inputs = keras.Input((SIZE, SIZE, 1), dtype='uint8')
  # Whatever policy an earlier test left: these numbers are compared.
  keras.mixed_precision.set_global_policy('float32')
  x = keras.layers.Rescaling(1 / 255)(inputs)
  x = keras.layers.GlobalAveragePooling2D()(x)
  outputs = keras.layers.Dense(
      1, activation='sigmoid', dtype='float32',
      kernel_initializer=keras.initializers.Constant(40.0),
      bias_initializer=keras.initializers.Constant(-20.0))(x)
  return keras.Model(inputs, outputs)


@pytest.mark.slow  # exports and loads a SavedModel
def test_saved_model_returns_calibrated_probability_and_decision(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  net = over_confident_model()
  rng = np.random.default_rng(0)
  # Brightness around 0.5, so that the probabilities are not all 0 or 1.
  brightness = 128 + np.linspace(-14, 14, 8)[:, None, None, None]
  images = np.clip(brightness + rng.normal(0, 3, (8, SIZE, SIZE, 1)), 0,
                   255).astype(np.uint8)
  calibration = {'temperature': 2.5, 'threshold': 0.4}
  serving.export_model(net, str(tmp_path), SIZE, calibration=calibration)
  blobs = []
  for image in images:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buffer, format='PNG')
    blobs.append(buffer.getvalue())
  served = tf.saved_model.load(os.path.join(tmp_path, serving.SERVING_DIR))
  out = {k: v.numpy() for k, v in served.serve(tf.constant(blobs)).items()}
  raw = net.predict(images, verbose=0).reshape(-1)
  assert 0.05 < raw.min() and raw.max() < 0.95 and raw.std() > 0.05
  want = evaluation.apply_temperature(raw, 2.5)
  np.testing.assert_allclose(out['probability'], want, atol=1e-5)
  # Softer than the model itself: closer to 1/2.
  assert (np.abs(out['probability'] - 0.5) < np.abs(raw - 0.5)).all()
  np.testing.assert_array_equal(out['threshold'], np.full(8, 0.4, np.float32))
  np.testing.assert_array_equal(out['positive'], out['probability'] > 0.4)
