"""Grad-CAM heatmaps (Selvaraju et al., ICCV 2017) on any Keras backend.

  heatmaps = gradcam.heatmaps(net, images)   # [N, H, W] in [0, 1]
  gradcam.write_overlays(out_dir, names, images, maps, label='Effusion',
                         probabilities=p, threshold=0.41)

Device side: Keras ops only, plus the one backend-specific step, the
gradient (TensorFlow's GradientTape, or jax.grad), so it runs where the
model runs, TensorFlow or JAX (it imports no TensorFlow under JAX).

The target is the last spatial feature map before the head pools or
flattens it, found from the model's graph (`find_target`): walking back from
the output, the first [B, h, w, C] tensor, inside a nested backbone where
it comes from one, and before a max or average pooling that only shrinks
it (VGG16's block5_pool: Grad-CAM's paper takes block5_conv3, at twice
the resolution). So DenseNet-121 gets its final 1,024-channel 'relu'
(not a 32-channel growth layer), ResNet-50 'conv5_block3_out',
EfficientNetV2-S 'top_activation', whatever head follows. The model is
then run as two halves through its own graph (DenseNet's concatenations
and ResNet's additions included): images -> that map (`features`), and the
map -> the output's logits; the gradient of the logit with respect to the
map, averaged over space, weights its channels; the weighted sum, through
a ReLU, is upsampled to the image and scaled to [0, 1] per image. The
logit, not the probability: a saturated sigmoid has no gradient left.

A per-image [0, 1] map says where, not how much: the overlays
(`overlay`, `write_overlays`) colour P x map, so a map for P = 0.005 is
all dark blue and one for P = 0.93 peaks at 0.93, and each names its
label, P and the decision at the run's threshold.

Running part of a graph needs Keras' functional internals (a node's
operation, its arguments and `_nodes_by_depth`, as Keras' own
`Function._run_through_graph` uses them): Keras 3 builds no model from an
intermediate tensor ("not connected to inputs").
"""

import collections

import keras
from keras import ops
import numpy as np

from xray_tfdata import errors

# Layers that shrink a spatial map without mixing its channels: Grad-CAM
# steps back over them to the higher-resolution map they pool.
_SPATIAL_POOLING = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)


class GradCamError(errors.XrayError):
  """A model Grad-CAM cannot be computed for (no spatial feature map, or
  a graph whose output does not pass through one map alone)."""


# Where the target map is: `path` lists the nested models the map lies in,
# outermost first, each as (the model, the node that calls the next one);
# `model` is the innermost (the net itself when the map is at its level),
# `tensor` the map's symbolic tensor in it; `logit_layer` the output's
# sigmoid Dense, whose logits are computed from `logit_input`, its input
# (None: `logit_input` holds the logits itself).
Target = collections.namedtuple(
    'Target', 'name shape path model tensor logit_layer logit_input')


def _history(tensor):
  return tensor._keras_history  # pylint: disable=protected-access


def _producer(tensor):
  """(operation, node) that made a symbolic tensor; (None, None) for an
  Input."""
  history = _history(tensor)
  operation = history.operation
  if operation is None or isinstance(operation, keras.layers.InputLayer):
    return None, None
  return operation, operation._inbound_nodes[history.node_index]  # pylint: disable=protected-access


def _logit_end(net):
  """(the output's sigmoid Dense or None, the tensor whose logits are
  explained): the Dense's input (its logits are computed from it), the
  input of a sigmoid Activation, or the output itself."""
  if len(net.outputs) != 1:
    raise GradCamError(f'model {net.name} has {len(net.outputs)} outputs; '
                       'Grad-CAM explains a model with one')
  output = net.outputs[0]
  layer, node = _producer(output)
  sigmoid = getattr(layer, 'activation', None) is keras.activations.sigmoid
  if sigmoid and isinstance(layer, keras.layers.Dense):
    return layer, node.input_tensors[0]
  if sigmoid and isinstance(layer, keras.layers.Activation):
    return None, node.input_tensors[0]
  return None, output


def find_target(net):
  """The last spatial feature map before the model's head pools or
  flattens it (see the module's docstring).

  Args:
    net: a Keras functional model with one output ([B, L] or [B]).

  Returns:
    A `Target`: its `name` is the layer that makes the map
    ('block5_conv3', 'relu', 'conv5_block3_out', ...) and `shape` the map's
    (h, w, C).

  Raises:
    GradCamError: no [B, h, w, C] tensor on the way back from the output,
      or a merge (several inputs) before one is reached.
  """
  logit_layer, logit_input = _logit_end(net)
  path, model, tensor = [], net, logit_input
  while True:
    operation, node = _producer(tensor)
    if operation is None:
      raise GradCamError(
          f'model {net.name} has no spatial feature map [batch, height, '
          'width, channels] between its input and its output for Grad-CAM')
    if len(tensor.shape) == 4 and isinstance(operation, keras.Model):
      # A nested backbone: go on inside it, from its own output.
      path.append((model, node))
      model = operation
      tensor = operation.outputs[_history(tensor).tensor_index]
      continue
    inputs = node.input_tensors
    if len(tensor.shape) == 4 and not (
        isinstance(operation, _SPATIAL_POOLING) and len(inputs) == 1 and
        len(inputs[0].shape) == 4):
      return Target(operation.name, tuple(tensor.shape[1:]), path, model,
                    tensor, logit_layer, logit_input)
    if len(inputs) != 1:
      raise GradCamError(
          f'model {net.name}: {operation.name} merges {len(inputs)} inputs '
          'between the output and the last spatial feature map; Grad-CAM '
          'needs one path from that map to the output')
    tensor = inputs[0]


def _run(model, given, wanted):
  """Runs part of a functional model's graph in inference mode.

  Args:
    model: the functional model whose graph holds the tensors.
    given: {id(symbolic tensor): value}, where the run starts.
    wanted: symbolic tensors whose values are returned.

  Returns:
    The values of `wanted`, in order.

  Raises:
    GradCamError: a wanted tensor needs a value not in `given` (a skip
      connection around the target map).
  """
  values = dict(given)
  # Keras' own Function._run_through_graph, from arbitrary tensors: deepest
  # nodes first; a node already given (the seam) is not run again, one
  # whose inputs are not known (upstream of the seam) not at all.
  for depth in sorted(model._nodes_by_depth, reverse=True):  # pylint: disable=protected-access
    for node in model._nodes_by_depth[depth]:  # pylint: disable=protected-access
      if not node.operation or node.is_input:
        continue
      if all(id(x) in values for x in node.outputs):
        continue
      if any(id(x) not in values for x in node.input_tensors):
        continue
      args, kwargs = node.arguments.fill_in(values)
      if 'training' in getattr(node.operation, '_call_context_args', ()):
        kwargs['training'] = False
      outputs = keras.tree.flatten(node.operation(*args, **kwargs))
      for symbolic, value in zip(node.outputs, outputs):
        values[id(symbolic)] = value
  missing = [x for x in wanted if id(x) not in values]
  if missing:
    raise GradCamError(
        f'model {model.name}: {missing[0].name} cannot be computed from the '
        'Grad-CAM target alone (a connection bypasses it)')
  return [values[id(x)] for x in wanted]


def features(net, images, target=None):
  """The target map's values: the first half of the model.

  Args:
    net: the model.
    images: [N, H, W, C] as the model takes them.
    target: `find_target(net)`, when already known.

  Returns:
    [N, h, w, C] in the model's compute dtype.
  """
  target = target or find_target(net)
  inputs = keras.tree.flatten(images)
  model_inputs = net.inputs
  for model, call in target.path:
    inputs = _run(model, {id(x): v for x, v in zip(model_inputs, inputs)},
                  call.input_tensors)
    model_inputs = call.operation.inputs
  return _run(target.model,
              {id(x): v for x, v in zip(model_inputs, inputs)},
              [target.tensor])[0]


def logits(target, feature_map):
  """The second half: the output's logits [N, L] (float32) from the
  target map's values."""
  given, model = {id(target.tensor): feature_map}, target.model
  for outer, call in reversed(target.path):
    # Out of a nested model: its outputs are the caller's node's outputs.
    values = _run(model, given, model.outputs)
    given = {id(x): v for x, v in zip(call.outputs, values)}
    model = outer
  x = _run(model, given, [target.logit_input])[0]
  layer = target.logit_layer
  if layer is None:
    return ops.cast(x, 'float32')
  # The pre-sigmoid value, in float32 (the output layer's dtype).
  return ops.matmul(ops.cast(x, layer.kernel.dtype), layer.kernel) + layer.bias


def forward(net, images):
  """The model's output, run as the two halves Grad-CAM uses (a check of
  the split: sigmoid of this equals net(images))."""
  target = find_target(net)
  return logits(target, features(net, images, target))


def _score(target, feature_map, output_index):
  scores = logits(target, feature_map)
  if output_index is not None:
    scores = scores[:, output_index]
  return ops.sum(scores)


def _gradient(target, feature_map, output_index=None):
  """d(sum of the output's logits) / d(map), on the running backend."""
  backend = keras.backend.backend()
  if backend == 'tensorflow':
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tf.GradientTape() as tape:
      tape.watch(feature_map)
      score = _score(target, feature_map, output_index)
    return tape.gradient(score, feature_map)
  if backend == 'jax':
    import jax  # pylint: disable=g-import-not-at-top
    return jax.grad(lambda f: _score(target, f, output_index))(feature_map)
  raise GradCamError(f'Grad-CAM runs on TensorFlow or JAX, not {backend}')


def heatmaps(net, images, output_index=None):
  """Grad-CAM heatmaps of the positive class (of one label).

  Args:
    net: a model of L sigmoid outputs, one per label (L = 1: the
      reference's P(pneumonia)), as `model.build_model` makes them on any
      backbone.
    images: [N, H, W, C] as the model takes them (uint8 for build_model's).
    output_index: the output (label) whose logit is explained; None: the
      sum of all, the one output of a binary model.

  Returns:
    float32 NumPy [N, H, W], each image's map scaled to [0, 1] (all zeros
    where the map is zero everywhere): where the model looked, not how
    strongly; `overlay` weighs it by P.

  Raises:
    GradCamError: see `find_target`, or another backend.
  """
  target = find_target(net)
  images = ops.convert_to_tensor(images)
  feature_map = ops.cast(features(net, images, target), 'float32')
  grads = ops.cast(_gradient(target, feature_map, output_index), 'float32')
  weights = ops.mean(grads, axis=(1, 2), keepdims=True)
  cam = ops.relu(ops.sum(weights * feature_map, axis=-1, keepdims=True))
  height, width = images.shape[1], images.shape[2]
  cam = ops.image.resize(cam, (height, width), interpolation='bilinear')
  cam = ops.convert_to_numpy(cam)[..., 0]
  peak = cam.reshape(cam.shape[0], -1).max(axis=1)
  return (cam / np.where(peak > 0, peak, 1)[:, None, None]).astype(np.float32)


# How the overlays colour the map, written into each one.
SCALE_NOTE = 'colour = P x Grad-CAM / its max (jet, 0..1)'


def overlay(image, heatmap, probability=1.0, alpha=0.4):
  """An RGB uint8 picture of a grey image with P x the heatmap over it.

  Args:
    image: [H, W] or [H, W, 1] uint8, the stored image.
    heatmap: [H, W] in [0, 1], as `heatmaps` scales it.
    probability: the model's P for the label: the colour is jet(P x map),
      so that maps of unlikely findings stay blue (SCALE_NOTE).
    alpha: the colour's opacity.
  """
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  grey = np.asarray(image, np.float32).reshape(heatmap.shape)
  strength = np.clip(float(probability) * np.asarray(heatmap), 0, 1)
  colour = colormaps['jet'](strength)[..., :3] * 255
  mixed = (1 - alpha) * grey[..., None] + alpha * colour
  return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def caption(label, probability, threshold, decision):
  """The overlay's text lines: the label, P, the decision at the threshold,
  and how the colour is scaled."""
  side = '>' if probability > threshold else '<='
  return [f'{label}: P={probability:.3f} {side} t={threshold:.3f}',
          f'decision: {decision}', SCALE_NOTE]


def annotated(image, heatmap, label, probability, threshold, decision,
              alpha=0.4):
  """The overlay with its caption below it, as a PIL image.

  The top H x W pixels are `overlay(image, heatmap, probability)`, the
  stored image at its own size; the caption strip below (wider where its
  text needs it, black elsewhere) holds `caption`'s lines. The same facts
  go into the PNG's text chunks ('label', 'probability', 'threshold',
  'decision', 'scale') for programs.

  Returns:
    (PIL.Image RGB, PIL.PngImagePlugin.PngInfo).
  """
  from PIL import Image, ImageDraw, ImageFont, PngImagePlugin  # pylint: disable=g-import-not-at-top,g-multiple-import
  picture = overlay(image, heatmap, probability, alpha)
  height, width = picture.shape[:2]
  lines = caption(label, probability, threshold, decision)
  font = ImageFont.load_default()
  boxes = [font.getbbox(line) for line in lines]
  line_height = max(box[3] for box in boxes) + 3
  canvas = Image.new('RGB', (max(width, max(box[2] for box in boxes) + 4),
                             height + line_height * len(lines) + 2))
  canvas.paste(Image.fromarray(picture), (0, 0))
  draw = ImageDraw.Draw(canvas)
  for index, line in enumerate(lines):
    draw.text((2, height + 1 + index * line_height), line,
              fill=(255, 255, 255), font=font)
  info = PngImagePlugin.PngInfo()
  for key, value in (('label', label), ('probability', f'{probability:.6f}'),
                     ('threshold', f'{threshold:.6f}'),
                     ('decision', decision), ('scale', SCALE_NOTE)):
    info.add_text(key, str(value))
  return canvas, info


def write_overlays(out_dir, names, images, maps, label, probabilities,
                   threshold, decisions=None, alpha=0.4, suffix=''):
  """Writes one annotated overlay PNG per image (tools/predict
  --heatmap_dir), each atomically.

  Args:
    out_dir: the folder (made if missing).
    names: a file stem per image; '<stem><suffix>.gradcam.png' is written
      (suffix: '.<label>' for a multi-label model's labels).
    images: [N, H, W, 1] uint8, the stored images as the model took them.
    maps: `heatmaps`' [N, H, W].
    label: the label (the positive class of a binary model) the maps
      explain.
    probabilities: P of the label per image, as reported beside the
      overlays (tools/predict: the serving signature's, calibrated).
    threshold: the run's threshold on P's scale.
    decisions: the decision's words per image; None: 'positive' where P
      exceeds the threshold, else 'negative'.
    alpha: the colour's opacity.

  Returns:
    The paths written, in order.
  """
  import io  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from xray_tfdata import atomic  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  probabilities = [float(p) for p in probabilities]
  if decisions is None:
    decisions = ['positive' if p > threshold else 'negative'
                 for p in probabilities]
  paths = []
  for name, image, heatmap, probability, decision in zip(
      names, images, maps, probabilities, decisions):
    picture, info = annotated(image, heatmap, label, probability,
                              float(threshold), decision, alpha)
    buffer = io.BytesIO()
    picture.save(buffer, format='PNG', pnginfo=info)
    path = os.path.join(out_dir, f'{name}{suffix}.gradcam.png')
    atomic.write_bytes(path, buffer.getvalue())
    paths.append(path)
  return paths
