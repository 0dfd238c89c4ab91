"""Grad-CAM of one output of a multi-label model (issue 19)."""

import numpy as np

from xray_tfdata import gradcam


def two_channel_model():
  """Output 0 is the mean brightness, output 1 the mean darkness, each from
  its own conv channel: Grad-CAM of output 0 peaks at the brightest
  pixel, of output 1 at the darkest."""
  import keras  # pylint: disable=g-import-not-at-top
  keras.mixed_precision.set_global_policy('float32')
  inputs = keras.Input((12, 12, 1), dtype='uint8')
  x = keras.layers.Rescaling(1 / 255)(inputs)
  x = keras.layers.Conv2D(
      2, 1, kernel_initializer=keras.initializers.Constant([[[[1.0, -1.0]]]]),
      bias_initializer=keras.initializers.Constant([0.0, 1.0]))(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  outputs = keras.layers.Dense(
      2, activation='sigmoid', dtype='float32',
      kernel_initializer=keras.initializers.Constant([[4.0, 0.0], [0.0, 4.0]]),
      bias_initializer='zeros')(x)
  return keras.Model(inputs, outputs)


def test_each_outputs_heatmap_peaks_where_that_output_looks():
  net = two_channel_model()
  image = np.full((1, 12, 12, 1), 128, np.uint8)
  image[0, 2, 9] = 250  # bright
  image[0, 10, 1] = 5   # dark
  bright = gradcam.heatmaps(net, image, output_index=0)[0]
  dark = gradcam.heatmaps(net, image, output_index=1)[0]
  assert np.unravel_index(np.argmax(bright), bright.shape) == (2, 9)
  assert np.unravel_index(np.argmax(dark), dark.shape) == (10, 1)
  assert bright.max() == dark.max() == 1.0
