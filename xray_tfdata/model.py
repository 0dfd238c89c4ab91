"""The classifier: a backbone (the reference's VGG16 or one of the field's),
with a mixed-precision policy.

uint8 image -> augmentation (training only) -> gray to 3 channels -> the
backbone's own `preprocess_input` convention -> the backbone without its top,
its first `frozen_blocks` stages frozen -> the head -> Dense(L, sigmoid):
one probability per label (L = 1: the reference's P(pneumonia)).

Backbones (`checks.BACKBONES`; their stages in `checks.BACKBONE_STAGES`):
  vgg16            the reference's: caffe preprocessing (BGR minus the ImageNet
                   means), blocks 1-5, Flatten -> Dense(512) -> Dropout ->
                   Dense(64) -> Dropout head.
  densenet121      CheXNet's: torch preprocessing (0..1, ImageNet mean/std),
                   dense blocks conv2..conv5, global average pooling head.
  resnet50         caffe preprocessing, stages conv2..conv5, global average
                   pooling head.
  efficientnetv2s  the model's built-in Rescaling (to -1..1), blocks
                   block1..block6, global average pooling head.
  mini_vgg         a small VGG-style network trained from scratch (the demo),
                   VGG16's head.

Preprocessing lives inside the model so that the exported model takes the
stored uint8 pixels as they are, and so that augmentation runs before the
backbone's preprocessing, as it does in ImageDataGenerator.

Keras dtype policies are process-global: a layer takes the policy that is
global when it is created. Training code should pick the policy once, before
building anything (`build_model(policy=...)` does it for you).

Device side, any Keras 3 backend: the model is Keras layers and ops, and
this module imports without TensorFlow; `policy='auto'` asks the active
backend for its GPUs.
"""

import hashlib
import os
import re
import socket
import sys
import threading
import urllib.parse
import urllib.request

import keras
from keras import ops

from xray_tfdata import checks
from xray_tfdata import errors
from xray_tfdata import losses
from xray_tfdata import reference

# Keras' own sources and checksums of the notop ImageNet weights
# (keras/src/applications/vgg16.py, densenet.py, resnet.py,
# efficientnet_v2.py), as (file name, URL, MD5) per backbone.
_KERAS_APPLICATIONS_URL = ('https://storage.googleapis.com/tensorflow/'
                           'keras-applications/')
IMAGENET_FILENAME = 'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5'
IMAGENET_URL = _KERAS_APPLICATIONS_URL + 'vgg16/' + IMAGENET_FILENAME
IMAGENET_MD5 = '6d6bbae143d832006294945121d1f1fc'
IMAGENET_WEIGHTS = {
    'vgg16': (IMAGENET_FILENAME, IMAGENET_URL, IMAGENET_MD5),
    'densenet121': (
        'densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5',
        _KERAS_APPLICATIONS_URL + 'densenet/'
        'densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5',
        '30ee3e1110167f948a6b9946edeeb738'),
    'resnet50': (
        'resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5',
        _KERAS_APPLICATIONS_URL + 'resnet/'
        'resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5',
        '4d473c1dd8becc155b73f8504c6f6626'),
    'efficientnetv2s': (
        'efficientnetv2-s_notop.h5',
        _KERAS_APPLICATIONS_URL + 'efficientnet_v2/efficientnetv2-s_notop.h5',
        'af0682fb74e8c54910f2d4393339c070'),
}
# Probed before downloading, so that no network means an error in seconds.
# Every backbone's file is on the same host: one probe answers for all.
_PROBE_URL = IMAGENET_URL
_PROBE_TIMEOUT_S = 3.0
# Longest wait for any one network read during the download.
_DOWNLOAD_TIMEOUT_S = 30.0

# ImageNet channel means in BGR order, as vgg16.preprocess_input ('caffe').
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
# RGB means and standard deviations of 0..1 pixels, as
# densenet.preprocess_input ('torch'); gray replicated to RGB meets each.
_TORCH_RGB_MEAN = (0.485, 0.456, 0.406)
_TORCH_RGB_STD = (0.229, 0.224, 0.225)

# Tensor cores for float16 arrived with Volta (compute capability 7.0).
_MIN_FLOAT16_COMPUTE_CAPABILITY = (7, 0)
# CPU flags (Linux /proc/cpuinfo) whose presence makes oneDNN's bfloat16
# kernels faster than float32.
_BFLOAT16_CPU_FLAGS = frozenset({'avx512_bf16', 'amx_bf16'})


class WeightsError(errors.XrayError):
  """The requested backbone weights cannot be found or loaded."""


def _parse_capability(value):
  # JAX reports '9.0', TensorFlow (9, 0), PyTorch (9, 0); ROCm none.
  if value is None:
    return None
  if isinstance(value, str):
    try:
      return tuple(int(part) for part in value.split('.')[:2])
    except ValueError:
      return None
  return tuple(value)


def gpu_compute_capabilities(backend=None):
  """Returns the (major, minor) compute capability of each visible GPU.

  Asks the active Keras backend's own device list, so that the policy
  follows the devices the model will run on.

  Args:
    backend: 'tensorflow', 'jax' or 'torch'; None means
      `keras.backend.backend()`. Other backends (numpy) have no GPUs.

  Returns:
    A list with one (major, minor) tuple per GPU; a GPU whose driver does
    not report one (e.g. ROCm) is listed as None.
  """
  backend = backend or keras.backend.backend()
  # pylint: disable=g-import-not-at-top  (only the active backend is there)
  if backend == 'tensorflow':
    import tensorflow as tf
    return [_parse_capability(
        tf.config.experimental.get_device_details(gpu).get(
            'compute_capability'))
            for gpu in tf.config.list_physical_devices('GPU')]
  if backend == 'jax':
    import jax
    try:
      gpus = jax.devices('gpu')
    except RuntimeError:  # no GPU platform in this jaxlib
      return []
    return [_parse_capability(getattr(gpu, 'compute_capability', None))
            for gpu in gpus]
  if backend == 'torch':
    import torch
    if not torch.cuda.is_available():
      return []
    return [_parse_capability(torch.cuda.get_device_capability(index))
            for index in range(torch.cuda.device_count())]
  return []


def read_cpu_flags(cpuinfo_path='/proc/cpuinfo'):
  """Returns the CPU feature flags from /proc/cpuinfo, or an empty set.

  Other operating systems have no /proc/cpuinfo; they get float32 under 'auto'.
  """
  try:
    with open(cpuinfo_path) as f:
      for line in f:
        if line.startswith('flags'):
          return set(line.split(':', 1)[1].split())
  except OSError:
    pass
  return set()


def select_policy(policy='auto', gpus=None, cpu_flags=None):
  """Chooses a Keras dtype policy name for this hardware.

  'auto' picks 'mixed_float16' when there are GPUs and all have compute
  capability >= 7.0; 'float32' on any other GPU setup (the CPU does not train
  then); without GPUs, 'mixed_bfloat16' on CPUs with AVX512_BF16 or AMX and
  'float32' otherwise.

  Args:
    policy: 'auto', 'float32', 'mixed_float16' or 'mixed_bfloat16'. A named
      policy is returned unchanged, whatever the hardware.
    gpus: compute capabilities of the GPUs, as from
      `gpu_compute_capabilities()` (the default asks the active Keras
      backend); for tests.
    cpu_flags: CPU feature flags, as from `read_cpu_flags()` (the default reads
      /proc/cpuinfo); for tests.

  Returns:
    The policy name.

  Raises:
    checks.SettingError: unknown policy.
  """
  checks.check_policy(policy)
  if policy in checks.POLICIES:
    return policy
  if gpus is None:
    gpus = gpu_compute_capabilities()
  if gpus:
    if all(c is not None and tuple(c) >= _MIN_FLOAT16_COMPUTE_CAPABILITY
           for c in gpus):
      return 'mixed_float16'
    return 'float32'
  if cpu_flags is None:
    cpu_flags = read_cpu_flags()
  if _BFLOAT16_CPU_FLAGS & set(cpu_flags):
    return 'mixed_bfloat16'
  return 'float32'


@keras.saving.register_keras_serializable(package='xray_tfdata')
class VGG16Preprocess(keras.layers.Layer):
  """Gray to RGB, then `keras.applications.vgg16.preprocess_input`, as a layer.

  'caffe' mode: RGB to BGR, subtract the ImageNet BGR means, no scaling;
  expects pixels in 0..255. A single-channel image is taken as gray, like
  PIL's convert('RGB') that ImageDataGenerator's color_mode='rgb' does: its
  three channels are equal, so one broadcasting subtraction, [..., 1] minus
  the [3] means, makes the BGR image in one pass (fastest of the ways
  measured, BUILD_NOTES.md) instead of repeat, flip and subtract. Casts to
  the layer's compute dtype, since Keras does not autocast integer inputs.
  Keras ops only: any backend.
  """

  def call(self, images):
    images = ops.cast(images, self.compute_dtype)
    mean = ops.convert_to_tensor(_CAFFE_BGR_MEAN, self.compute_dtype)
    channels = images.shape[-1]
    if channels == 1:
      return images - mean
    if channels == 3:
      return ops.flip(images, axis=-1) - mean
    raise ValueError(f'expected 1 or 3 channels, got {channels}')

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (3,)


PREPROCESS_MODES = ('caffe', 'torch', 'raw', 'gray')


@keras.saving.register_keras_serializable(package='xray_tfdata')
class BackbonePreprocess(keras.layers.Layer):
  """Gray to RGB, then a `keras.applications` preprocess_input, as a layer.

  Modes, as `imagenet_utils.preprocess_input` names them:
    caffe  RGB to BGR minus the ImageNet BGR means, 0..255 (vgg16, resnet50);
           the same arithmetic as VGG16Preprocess.
    torch  / 255, minus the RGB means, / the RGB standard deviations
           (densenet121), in the order preprocess_input computes them, so
           that float32 results are equal to the bit.
    raw    the pixels as they are, 0..255 (efficientnetv2s, whose Keras
           model rescales them itself; its preprocess_input does nothing).
    gray   the one gray channel as it is, 0..255: for a backbone whose
           first convolution is a GrayConv2D, which subtracts caffe's means
           itself (`fold_gray_input`).
  A single-channel image is taken as gray: broadcasting its one channel
  against the three means makes the RGB image in the same pass; 'raw'
  repeats it. Casts to the layer's compute dtype (Keras does not autocast
  integer inputs). Keras ops only: any backend.
  """

  def __init__(self, mode='caffe', **kwargs):
    super().__init__(**kwargs)
    if mode not in PREPROCESS_MODES:
      raise ValueError(f'mode must be one of {PREPROCESS_MODES}, got {mode!r}')
    self.mode = mode

  def call(self, images):
    images = ops.cast(images, self.compute_dtype)
    channels = images.shape[-1]
    if channels not in (1, 3):
      raise ValueError(f'expected 1 or 3 channels, got {channels}')
    if self.mode == 'caffe':
      mean = ops.convert_to_tensor(_CAFFE_BGR_MEAN, self.compute_dtype)
      return (images if channels == 1 else ops.flip(images, axis=-1)) - mean
    if self.mode == 'torch':
      images = images / ops.convert_to_tensor(255.0, self.compute_dtype)
      mean = ops.convert_to_tensor(_TORCH_RGB_MEAN, self.compute_dtype)
      std = ops.convert_to_tensor(_TORCH_RGB_STD, self.compute_dtype)
      return (images - mean) / std
    if self.mode == 'gray':
      if channels != 1:
        raise ValueError(f'gray mode expects 1 channel, got {channels}')
      return images
    return ops.repeat(images, 3, axis=-1) if channels == 1 else images

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (1 if self.mode == 'gray' else 3,)

  def get_config(self):
    config = super().get_config()
    config.update(mode=self.mode)
    return config


# Backbones whose first convolution is folded for gray input (GrayConv2D):
# VGG16's block1_conv1 ('same' padding, caffe means). The other
# keras.applications backbones pad explicitly or normalise first.
FOLDED_GRAY_BACKBONES = ('vgg16',)


@keras.saving.register_keras_serializable(package='xray_tfdata')
class GrayConv2D(keras.layers.Conv2D):
  """A backbone's first Conv2D, as it acts on gray images, from one channel.

  The unfolded model feeds the convolution x - m_c in each channel c (gray
  x repeated, minus caffe's BGR mean m_c). By linearity that output equals
  conv(x, sum_c W_c) - conv(m, W) + b: one input channel instead of three,
  where conv(m, W) is the convolution of the constant mean image, zero
  padded as the original pads x - m (so the border is exact too). It is
  computed on one image per call, 1/B of the three-channel work.

  The kernel stays [kh, kw, 3, filters], as ImageNet's and any saved weights
  hold it, so weight files load unchanged; the sum is taken per call, so
  training the layer (frozen_blocks=0) trains that kernel.

  Args:
    channel_means: the three means subtracted from the gray pixels
      (caffe's BGR means for VGG16).
    **kwargs: Conv2D's.
  """

  def __init__(self, channel_means=_CAFFE_BGR_MEAN, **kwargs):
    super().__init__(**kwargs)
    self.channel_means = tuple(float(m) for m in channel_means)

  def build(self, input_shape):
    if input_shape[-1] != 1:
      raise ValueError(f'GrayConv2D takes 1 channel, got {input_shape[-1]}')
    # The kernel of the three-channel layer it replaces.
    super().build(tuple(input_shape[:-1]) + (len(self.channel_means),))
    self.input_spec = keras.layers.InputSpec(min_ndim=4, axes={-1: 1})

  def call(self, inputs):
    kernel = self.kernel
    folded = self.convolution_op(
        inputs, ops.sum(kernel, axis=-2, keepdims=True))
    means = ops.convert_to_tensor(self.channel_means, folded.dtype)
    mean_image = ops.broadcast_to(
        means, (1,) + tuple(inputs.shape[1:-1]) + (len(self.channel_means),))
    outputs = folded - self.convolution_op(mean_image, kernel)
    if self.use_bias:
      outputs = outputs + self.bias
    if self.activation is not None:
      outputs = self.activation(outputs)
    return outputs

  def compute_output_shape(self, input_shape):
    return super().compute_output_shape(
        tuple(input_shape[:-1]) + (len(self.channel_means),))

  def get_config(self):
    config = super().get_config()
    config.update(channel_means=list(self.channel_means))
    return config


# Keras 3 weight files (.weights.h5: backup/, best.weights.h5) address a
# model's layers by their class name and position ('conv2d', 'conv2d_1',
# ...), not by layer name: under the name Conv2D the folded layer keeps the
# path of the layer it replaces, so weights saved before the fold load into
# it and the other convolutions keep theirs. Serialization goes by the name
# registered above (xray_tfdata>GrayConv2D), so model.keras files are
# unaffected.
GrayConv2D.__name__ = 'Conv2D'


def fold_gray_input(base, channel_means=_CAFFE_BGR_MEAN):
  """The backbone taking [B, H, W, 1] gray pixels (0..255) instead of the
  caffe-preprocessed three-channel image: its first Conv2D replaced by a
  GrayConv2D with the same name and weights, every other layer shared.

  Args:
    base: a keras.applications backbone whose layers form a chain starting
      with a 'same'-padded Conv2D (VGG16).
    channel_means: what the unfolded preprocessing subtracts per channel.

  Returns:
    A keras.Model with base's name and layers (the first conv replaced).
  """
  first = base.layers[1]
  config = first.get_config()
  config.pop('dtype', None)  # the policy in force, as the original's
  conv = GrayConv2D(channel_means=channel_means, dtype=first.dtype_policy,
                    **config)
  gray = keras.Input(tuple(base.input.shape[1:-1]) + (1,),
                     name=base.layers[0].name)
  x = conv(gray)
  conv.set_weights(first.get_weights())
  for layer in base.layers[2:]:
    x = layer(x)
  return keras.Model(gray, x, name=base.name)


def keras_cache_path(backbone='vgg16'):
  """Returns where Keras caches the backbone's notop ImageNet weights.

  `$KERAS_HOME/models/` if KERAS_HOME is set, else `~/.keras/models/`
  (resolved when called; Keras itself reads KERAS_HOME once, at import).
  """
  keras_home = os.environ.get('KERAS_HOME')
  if not keras_home:
    home = os.path.expanduser('~')
    keras_home = os.path.join(home if os.access(home, os.W_OK) else '/tmp',
                              '.keras')
  return os.path.join(os.path.expanduser(keras_home), 'models',
                      IMAGENET_WEIGHTS[backbone][0])


def _md5(path):
  digest = hashlib.md5()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _url_reachable(url, timeout_s):
  """Whether an HTTP HEAD request to url succeeds within about timeout_s.

  A full request rather than a TCP connect: sandboxes and proxies accept
  connections to hosts they will not serve. Runs in a daemon thread because
  name resolution ignores socket timeouts.
  """
  reachable = threading.Event()

  def request():
    try:
      with urllib.request.urlopen(
          urllib.request.Request(url, method='HEAD'), timeout=timeout_s):
        reachable.set()
    except (OSError, ValueError):
      pass

  thread = threading.Thread(target=request, daemon=True)
  thread.start()
  thread.join(timeout_s)
  return reachable.is_set()


def resolve_weights(weights, backbone='vgg16'):
  """Returns None or a local weights file for the backbone.

  Args:
    weights: None; 'imagenet' (the Keras cache file, downloaded when missing
      and the network is up); or a path to the notop weights, either the
      legacy `.h5` format of Keras' ImageNet files or Keras 3 `.weights.h5`.
    backbone: one of IMAGENET_WEIGHTS (mini_vgg has none).

  Returns:
    None or a path.

  Raises:
    WeightsError: the file is missing and cannot be downloaded, or the path
      does not exist or is not an .h5 file. Fails within a few seconds
      without network.
  """
  if weights is None:
    return None
  filename, url, md5 = IMAGENET_WEIGHTS[backbone]
  if weights != 'imagenet':
    path = os.fspath(weights)
    if not os.path.isfile(path):
      raise WeightsError(f'weights file {path!r} does not exist')
    if not path.endswith(('.h5', '.hdf5')):
      raise WeightsError(
          f'weights file {path!r} is not an .h5 file: pass the {backbone} '
          f'notop weights ({filename} or a .weights.h5)')
    return path

  cache_path = keras_cache_path(backbone)
  if os.path.isfile(cache_path) and _md5(cache_path) == md5:
    return cache_path
  fix = (f'put {filename} (from {url}) at {cache_path}, '
         'or pass its local path as the weights')
  if not _url_reachable(_PROBE_URL, _PROBE_TIMEOUT_S):
    state = 'is corrupt' if os.path.exists(cache_path) else 'is not cached'
    host = urllib.parse.urlsplit(_PROBE_URL).netloc
    raise WeightsError(
        f'the {backbone} ImageNet weights file {state} and {host} is '
        f'unreachable: {fix}')
  # urlretrieve takes no timeout: the default socket timeout makes a
  # stalled download fail instead of hanging.
  previous_timeout = socket.getdefaulttimeout()
  socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
  try:
    return keras.utils.get_file(
        filename, url, cache_subdir='models',
        cache_dir=os.path.dirname(os.path.dirname(cache_path)),
        file_hash=md5)
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsError(
        f'downloading ImageNet weights failed ({e}): {fix}') from e
  finally:
    socket.setdefaulttimeout(previous_timeout)


# The layer names of each stage in checks.BACKBONE_STAGES, as Keras names
# them: VGG's block1_conv1 .. block1_pool; DenseNet's dense block
# conv2_block1_0_bn .. conv2_block6_concat and the transition pool2_bn ..
# pool2_pool after it; ResNet's conv2_block1_1_conv .. conv2_block3_out;
# EfficientNetV2's block1a_project_conv .. block1b_add.
STAGE_PATTERNS = {
    'vgg16': '^{stage}_',
    'mini_vgg': '^{stage}_',
    'densenet121': '^({stage}|{transition})_',
    'resnet50': '^{stage}_',
    'efficientnetv2s': '^{stage}[a-z]_',
}


def stage_pattern(backbone, stage):
  """The regular expression that matches the names of a stage's layers."""
  # DenseNet's transition after dense block convK is poolK.
  return re.compile(STAGE_PATTERNS[backbone].format(
      stage=stage, transition=stage.replace('conv', 'pool')))


def frozen_layer_count(base, frozen_blocks, backbone='vgg16'):
  """Number of leading backbone layers that make up stages 1..frozen_blocks.

  The stem (and the input layer) goes with the first stage, the layers after
  the last stage with the last, so that frozen_blocks = the number of stages
  freezes the whole backbone. VGG16's four blocks are the reference's 15 layers.

  Args:
    base: the backbone, a keras.Model whose layers are in graph order.
    frozen_blocks: 0 .. len(checks.BACKBONE_STAGES[backbone]).
    backbone: one of checks.BACKBONES.

  Returns:
    The count of leading layers of `base` to freeze.

  Raises:
    ValueError: frozen_blocks out of range.
  """
  stages = checks.BACKBONE_STAGES[backbone]
  if not 0 <= frozen_blocks <= len(stages):
    raise ValueError(
        f'frozen_blocks must be in 0..{len(stages)}, got {frozen_blocks}')
  if frozen_blocks == 0:
    return 0
  if frozen_blocks == len(stages):
    return len(base.layers)
  pattern = stage_pattern(backbone, stages[frozen_blocks - 1])
  return 1 + max(index for index, layer in enumerate(base.layers)
                 if pattern.match(layer.name))


# A VGG-style backbone small enough to train from scratch in minutes on a
# CPU: for the demo and tests, where ImageNet weights cannot be had. A
# randomly initialised VGG16 with frozen blocks learns nothing from its
# random features, and training all of it from scratch takes hours here.
# Its depth is declared with the checks, which refuse to freeze more blocks
# than it has: (16, 32, 64, 128).
_MINI_VGG_WIDTHS = tuple(
    16 * 2**block for block in range(checks.BACKBONE_BLOCKS['mini_vgg']))


def mini_vgg(input_shape):
  """VGG16's design (blocks of two 3x3 convs and a 2x2 max-pool) at 1/32
  of its width and four blocks deep, with batch normalization so that it
  trains from scratch in a few epochs; same layer names as VGG16."""
  inputs = keras.Input(input_shape)
  x = inputs
  for block, width in enumerate(_MINI_VGG_WIDTHS, start=1):
    for conv in (1, 2):
      x = keras.layers.Conv2D(width, 3, padding='same', use_bias=False,
                              name=f'block{block}_conv{conv}')(x)
      x = keras.layers.BatchNormalization(name=f'block{block}_bn{conv}')(x)
      x = keras.layers.ReLU(name=f'block{block}_relu{conv}')(x)
    x = keras.layers.MaxPooling2D(2, name=f'block{block}_pool')(x)
  return keras.Model(inputs, x, name='mini_vgg')


# Each keras.applications backbone: its constructor's name and its
# preprocess_input mode (BackbonePreprocess). Models keep Keras' own names
# (EfficientNetV2's name picks its preprocessing and its weights file).
_APPLICATIONS = {
    'vgg16': ('VGG16', 'caffe'),
    'densenet121': ('DenseNet121', 'torch'),
    'resnet50': ('ResNet50', 'caffe'),
    'efficientnetv2s': ('EfficientNetV2S', 'raw'),
}
# Backbones whose single-label ('auto') head is the reference's Flatten +
# dense layers; every multi-label model and the field's backbones get
# CheXNet's global average pooling straight into the output layer (see
# `resolve_head`).
_DENSE_HEAD_BACKBONES = ('vgg16', 'mini_vgg')
# Warnings already printed in this process (one line each, not one a build).
_WARNED = set()


def _warn_once(message):
  if message and message not in _WARNED:
    _WARNED.add(message)
    print(f'warning: {message}', file=sys.stderr, flush=True)


def _preprocess_layer(backbone, fold_gray=False):
  # Pixel preprocessing in float32: bfloat16 would round 0..255 pixels to
  # 8 significant bits before the mean is subtracted.
  if fold_gray:  # the means are subtracted inside GrayConv2D
    return BackbonePreprocess('gray', dtype='float32', name='vgg16_preprocess')
  if backbone in ('vgg16', 'mini_vgg'):
    return VGG16Preprocess(dtype='float32', name='vgg16_preprocess')
  return BackbonePreprocess(_APPLICATIONS[backbone][1], dtype='float32',
                            name=f'{backbone}_preprocess')


def resolve_head(head, backbone, num_labels):
  """The head a model gets: 'dense' or 'pooling'.

  'auto' gives the reference's Flatten -> dense head to a single-label
  vgg16 or mini_vgg (the reference experiment and the demo), and global
  average pooling -> Dense(L) to everything else: multi-label runs and the
  field's backbones, as CheXNet and torchxrayvision. Under the multi-label
  loss the dense head collapses on the field's label frequencies (its ReLUs
  die and every P sits near the base rate; BUILD_NOTES.md, Session 9 (h1)).

  Args:
    head: one of checks.HEADS ('auto', 'dense', 'pooling').
    backbone: one of checks.BACKBONES.
    num_labels: the model's outputs.

  Returns:
    'dense' or 'pooling'.

  Raises:
    checks.SettingError: an unknown head.
  """
  checks.check_choice('head', head, checks.HEADS)
  if head != 'auto':
    return head
  return ('dense' if backbone in _DENSE_HEAD_BACKBONES and num_labels == 1
          else 'pooling')


def _backbone(backbone, image_size, weights_path, fold_gray=False):
  """The backbone without its top, taking [B, H, W, 3] float images; with
  fold_gray, [B, H, W, 1] gray pixels (see `fold_gray_input`)."""
  input_shape = (image_size, image_size, 3)
  if backbone == 'mini_vgg':
    return mini_vgg(input_shape)
  application = getattr(keras.applications, _APPLICATIONS[backbone][0])
  try:
    base = application(include_top=False, weights=weights_path,
                       input_shape=input_shape)
    return fold_gray_input(base) if fold_gray else base
  except ValueError as e:
    if weights_path is None:
      raise
    raise WeightsError(
        f'weights file {weights_path!r} does not fit '
        f'{_APPLICATIONS[backbone][0]} without its top '
        f'({e})'.replace('\n', ' ')) from e


def build_model(image_size=reference.IMAGE_SIZE, channels_in=1, weights=None,
                frozen_blocks=reference.FROZEN_BLOCKS,
                dense_units=reference.DENSE_UNITS, dropout=reference.DROPOUT,
                augmentation=None, policy=None, name=None,
                backbone=reference.BACKBONE, num_labels=1, head='auto',
                fold_gray_input=False):
  """Builds the classifier on a backbone, taking uint8 images.

  Args:
    image_size: height and width of the input images, within
      `checks.BACKBONE_IMAGE_SIZES` (vgg16: 32 or more, mini_vgg: 16 or more,
      the others 32..512).
    channels_in: 1 (grayscale, as stored) or 3.
    weights: None, 'imagenet' or a local .h5 path; see `resolve_weights`.
    frozen_blocks: leading stages (`checks.BACKBONE_STAGES`: 0..5 of VGG16,
      0..4 of DenseNet-121, ResNet-50 and mini_vgg, 0..6 of EfficientNetV2-S)
      whose layers are not trained; their batch normalization runs in
      inference mode (Keras 3 does so for non-trainable BatchNormalization),
      so their moving statistics stay. With weights=None a one-line warning
      goes to stderr (random frozen layers never learn).
    dense_units: widths of the dense head's hidden layers.
    dropout: dropout rate after each hidden dense layer of the dense head.
    augmentation: None; a Keras layer applied first, which must augment
      only when training (e.g. from `xray_tfdata.augment.make_augmentation`);
      or a kind for `make_augmentation` ('fused', 'keras_cv', 'keras_core',
      'none'), which gets the reference settings,
      `augment.REFERENCE_AUGMENTATION`.
    policy: None keeps the current global dtype policy; otherwise 'auto' or
      a policy name (see `select_policy`), set globally before building.
    name: model name; None: 'xray_' + backbone.
    backbone: one of checks.BACKBONES: 'vgg16' (the reference's), 'densenet121',
      'resnet50', 'efficientnetv2s' (keras.applications, with a global
      average pooling head), or 'mini_vgg', a small VGG-style network
      trained from scratch (weights must be None), for the demo.
    num_labels: outputs, each a sigmoid probability: 1 (a single-label
      dataset's P(positive class)) or a multi-label dataset's labels.
    head: 'auto', 'dense' (Flatten -> dense_units with dropout) or
      'pooling' (global average pooling); see `resolve_head`.
    fold_gray_input: with channels_in=1 and a backbone of
      FOLDED_GRAY_BACKBONES, its first convolution reads the one gray
      channel (GrayConv2D). Off by default: exact, but measured slower
      (BUILD_NOTES.md, session 9 h7): the one-channel convolution and its
      separate mean correction cost more than the two channels they save.

  Returns:
    An uncompiled `keras.Model` mapping uint8 [B, H, W, channels_in] to
    float32 probabilities [B, num_labels] (P(pneumonia) [B, 1] by default).

  Raises:
    WeightsError: weights cannot be found or loaded.
    checks.SettingError: a bad backbone, frozen_blocks, image_size, weights
      for mini_vgg, dense_units, dropout or policy.
    ValueError: bad channels_in or num_labels.
  """
  if channels_in not in (1, 3):
    raise ValueError(f'channels_in must be 1 or 3, got {channels_in}')
  if (isinstance(num_labels, bool) or not isinstance(num_labels, int) or
      num_labels < 1):
    raise ValueError(f'num_labels must be an integer of at least 1, got '
                     f'{num_labels!r}')
  checks.check_backbone(backbone, frozen_blocks, weights,
                        min(image_size) if isinstance(image_size, (tuple, list))
                        else image_size)
  checks.check_dense_units(dense_units)
  checks.check_fraction('dropout', dropout)
  if policy is not None:
    keras.mixed_precision.set_global_policy(select_policy(policy))
  weights_path = (None if backbone == 'mini_vgg' else
                  resolve_weights(weights, backbone))
  _warn_once(checks.random_frozen_warning(backbone, frozen_blocks, weights))
  if isinstance(augmentation, str):
    from xray_tfdata import augment  # pylint: disable=g-import-not-at-top
    augmentation = augment.make_augmentation(augmentation,
                                             **augment.REFERENCE_AUGMENTATION)

  images = keras.Input((image_size, image_size, channels_in), dtype='uint8',
                       name='image')
  x = images
  if augmentation is not None:
    x = augmentation(x)
  # VGG16's first convolution sees gray as three equal channels: folded,
  # it reads the one channel (same output, a third of its multiply-adds,
  # but slower as measured: see fold_gray_input).
  fold_gray = (fold_gray_input and channels_in == 1 and
               backbone in FOLDED_GRAY_BACKBONES)
  x = _preprocess_layer(backbone, fold_gray)(x)
  base = _backbone(backbone, image_size, weights_path, fold_gray)
  for layer in base.layers[:frozen_layer_count(base, frozen_blocks,
                                               backbone)]:
    layer.trainable = False
  x = base(x)
  if resolve_head(head, backbone, num_labels) == 'dense':
    x = keras.layers.Flatten(name='flatten')(x)
    for index, units in enumerate(dense_units, start=1):
      x = keras.layers.Dense(units, activation='relu',
                             name=f'dense_{index}')(x)
      x = keras.layers.Dropout(dropout, name=f'dropout_{index}')(x)
  else:
    x = keras.layers.GlobalAveragePooling2D(name='avg_pool')(x)
  # float32 output: a sigmoid in float16/bfloat16 saturates and the loss
  # would be computed on rounded probabilities.
  probability = keras.layers.Dense(num_labels, activation='sigmoid',
                                   dtype='float32', name='probability')(x)
  return keras.Model(images, probability, name=name or f'xray_{backbone}')


def compile_model(model, learning_rate=reference.LEARNING_RATE,
                  jit_compile='auto', steps_per_execution=1,
                  label_names=None, pos_weight=None):
  """Compiles with Adam, the masked binary cross-entropy and the metrics of
  `losses.label_metrics`, for every number of outputs.

  One output (the reference's P(pneumonia)) trains on the reference's
  loss, Keras' binary cross-entropy (its class weights come from the
  training data as sample weights, see `training.create_inputs`), and shows
  the reference's per-epoch metrics: auc, tp, fp, tn, fn, accuracy,
  precision, recall. Several outputs add one AUC per label. Masked targets
  (`labels.MASKED`) take no part in either.

  Under a 'mixed_float16' model policy Keras 3 wraps the optimizer in a
  LossScaleOptimizer itself (Model.compile, auto_scale_loss=True), so it is
  not wrapped here.

  Args:
    model: from `build_model`.
    learning_rate: Adam learning rate, > 0.
    jit_compile: XLA. 'auto' (the default) lets Keras decide: off under
      TensorFlow on a CPU (measured slower there, BUILD_NOTES.md) and for
      any model holding ImageProjectiveTransformV3 (RandomAffine under
      TensorFlow), on under JAX, which otherwise runs op by op.
    steps_per_execution: training steps per compiled call.
    label_names: the model's output names, which name its per-label AUCs
      (with several outputs); None: 'label_<i>'.
    pos_weight: one weight per output on the loss's positive terms (see
      `losses.MaskedBinaryCrossentropy`), or None.

  Returns:
    The model, compiled.

  Raises:
    checks.SettingError: non-positive learning rate.
    ValueError: label_names or pos_weight of another length than the
      model's number of outputs.
  """
  checks.check_positive('learning_rate', learning_rate)
  num_labels = model.output_shape[-1]
  if label_names is None:
    label_names = [f'label_{i}' for i in range(num_labels)]
  for what, values in (('label_names', label_names),
                       ('pos_weight', pos_weight)):
    if values is not None and len(values) != num_labels:
      raise ValueError(f'{what} has {len(values)} entries for {num_labels} '
                       'outputs')
  model.compile(
      optimizer=keras.optimizers.Adam(learning_rate),
      loss=losses.MaskedBinaryCrossentropy(pos_weight),
      metrics=losses.label_metrics(label_names),
      jit_compile=jit_compile,
      steps_per_execution=steps_per_execution)
  return model
