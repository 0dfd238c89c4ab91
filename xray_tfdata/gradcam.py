"""Grad-CAM heatmaps (Selvaraju et al., ICCV 2017) on any Keras backend.

  heatmaps = gradcam.heatmaps(net, images)   # [N, H, W] in [0, 1]

Device side: Keras ops only, plus the one backend-specific step, the
gradient (TensorFlow's GradientTape, or jax.grad), so it runs where the
model runs, TensorFlow or JAX (it imports no TensorFlow under JAX).

The heatmap is taken at the model's last Conv2D (VGG16's block5_conv3,
mini_vgg's last conv): the gradient of the positive logit with respect to
that layer's output, averaged over space, weights its channels; the
weighted sum, through a ReLU, is upsampled to the image and scaled to
[0, 1] per image. The logit, not the probability: a saturated sigmoid has
no gradient left.

The model must be a chain of layers (each layer feeding the next, nested
models such as the VGG16 backbone included), as `model.build_model` makes:
it is run as two halves, up to the conv layer and after it.
"""

import keras
from keras import ops
import numpy as np

from xray_tfdata import errors


class GradCamError(errors.XrayError):
  """A model Grad-CAM cannot be computed for (no Conv2D, not a chain)."""


def _chain(net):
  """The model's layers in order, nested models expanded, inputs dropped."""
  layers = []
  for layer in net.layers:
    if isinstance(layer, keras.layers.InputLayer):
      continue
    if isinstance(layer, keras.Model):
      layers.extend(_chain(layer))
    else:
      layers.append(layer)
  return layers


def split_at_last_conv(net):
  """(layers up to and including the last Conv2D, the layers after it).

  Raises:
    GradCamError: no Conv2D.
  """
  layers = _chain(net)
  convs = [i for i, layer in enumerate(layers)
           if isinstance(layer, keras.layers.Conv2D)]
  if not convs:
    raise GradCamError(f'model {net.name} has no Conv2D layer for Grad-CAM')
  return layers[:convs[-1] + 1], layers[convs[-1] + 1:]


def _run(layers, x, logit=False):
  for index, layer in enumerate(layers):
    last = index == len(layers) - 1
    if (logit and last and isinstance(layer, keras.layers.Dense) and
        layer.activation is keras.activations.sigmoid):
      # The pre-sigmoid value, in float32 (the output layer's dtype).
      x = ops.cast(x, layer.kernel.dtype)
      return ops.matmul(x, layer.kernel) + layer.bias
    if (logit and last and isinstance(layer, keras.layers.Activation) and
        layer.activation is keras.activations.sigmoid):
      return ops.cast(x, 'float32')  # a sigmoid of its own: its input
    x = layer(x, training=False)
  return x


def _score(tail, features, output_index):
  logits = _run(tail, features, logit=True)
  if output_index is not None:
    logits = logits[:, output_index]
  return ops.sum(logits)


def forward(net, images):
  """The model's output, run as the two halves Grad-CAM uses (a check that
  the model is a chain: this equals net(images))."""
  head, tail = split_at_last_conv(net)
  return _run(tail, _run(head, images))


def _gradient(tail, features, output_index=None):
  """d(sum of the output's logits) / d(features), on the running backend."""
  backend = keras.backend.backend()
  if backend == 'tensorflow':
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tf.GradientTape() as tape:
      tape.watch(features)
      score = _score(tail, features, output_index)
    return tape.gradient(score, features)
  if backend == 'jax':
    import jax  # pylint: disable=g-import-not-at-top
    return jax.grad(lambda f: _score(tail, f, output_index))(features)
  raise GradCamError(f'Grad-CAM runs on TensorFlow or JAX, not {backend}')


def heatmaps(net, images, output_index=None):
  """Grad-CAM heatmaps of the positive class (of one label).

  Args:
    net: a binary classifier (one sigmoid output), or a multi-label one
      (L sigmoid outputs), a chain of layers.
    images: [N, H, W, C] as the model takes them (uint8 for build_model's).
    output_index: the output (label) whose logit is explained; None: the
      sum of all, the one output of a binary model.

  Returns:
    float32 NumPy [N, H, W], each image's map scaled to [0, 1] (all zeros
    where the map is zero everywhere).

  Raises:
    GradCamError: see `split_at_last_conv`, or another backend.
  """
  head, tail = split_at_last_conv(net)
  images = ops.convert_to_tensor(images)
  features = ops.cast(_run(head, images), 'float32')
  grads = ops.cast(_gradient(tail, features, output_index), 'float32')
  weights = ops.mean(grads, axis=(1, 2), keepdims=True)
  cam = ops.relu(ops.sum(weights * features, axis=-1, keepdims=True))
  height, width = images.shape[1], images.shape[2]
  cam = ops.image.resize(cam, (height, width), interpolation='bilinear')
  cam = ops.convert_to_numpy(cam)[..., 0]
  peak = cam.reshape(cam.shape[0], -1).max(axis=1)
  return (cam / np.where(peak > 0, peak, 1)[:, None, None]).astype(np.float32)


def overlay(image, heatmap, alpha=0.4):
  """An RGB uint8 picture of a grey image with the heatmap over it (jet).

  Args:
    image: [H, W] or [H, W, 1] uint8.
    heatmap: [H, W] in [0, 1].
    alpha: the heatmap's opacity.
  """
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  grey = np.asarray(image, np.float32).reshape(heatmap.shape)
  colour = colormaps['jet'](np.clip(heatmap, 0, 1))[..., :3] * 255
  mixed = (1 - alpha) * grey[..., None] + alpha * colour
  return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def write_overlays(out_dir, names, images, maps, alpha=0.4, suffix=''):
  """Writes one overlay PNG per image (for tools/predict --heatmap_dir).

  Args:
    out_dir: the folder (made if missing).
    names: a file stem per image; '<stem><suffix>.gradcam.png' is written
      (suffix: '.<label>' for a multi-label model's labels).
    images: [N, H, W, 1] uint8, as the model took them.
    maps: `heatmaps`' [N, H, W].
    alpha: the heatmap's opacity.

  Returns:
    The paths written, in order.
  """
  import io  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from xray_tfdata import atomic  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for name, image, heatmap in zip(names, images, maps):
    buffer = io.BytesIO()
    Image.fromarray(overlay(image, heatmap, alpha)).save(buffer, format='PNG')
    path = os.path.join(out_dir, f'{name}{suffix}.gradcam.png')
    atomic.write_bytes(path, buffer.getvalue())
    paths.append(path)
  return paths
