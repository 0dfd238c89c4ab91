"""The seed's VGG16 transfer-learning model, with a mixed-precision policy.

uint8 image -> augmentation (training only) -> gray to 3 channels ->
`vgg16.preprocess_input` -> VGG16 without its top, blocks 1-4 frozen ->
Flatten -> Dense(512) -> Dropout -> Dense(64) -> Dropout -> Dense(1, sigmoid).

Preprocessing lives inside the model so that the exported model takes the
stored uint8 pixels as they are, and so that augmentation runs before the
VGG16 preprocessing, as it does in ImageDataGenerator.

Keras dtype policies are process-global: a layer takes the policy that is
global when it is created. Training code should pick the policy once, before
building anything (`build_model(policy=...)` does it for you).

Device side, any Keras 3 backend: the model is Keras layers and ops, and
this module imports without TensorFlow; `policy='auto'` asks the active
backend for its GPUs.
"""

import hashlib
import os
import socket
import threading
import urllib.parse
import urllib.request

import keras
from keras import ops

from xray_tfdata import checks
from xray_tfdata import errors

POLICIES = checks.POLICIES

# Keras' own source and checksum for the notop ImageNet weights
# (keras/src/applications/vgg16.py).
IMAGENET_FILENAME = 'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5'
IMAGENET_URL = ('https://storage.googleapis.com/tensorflow/keras-applications/'
                'vgg16/' + IMAGENET_FILENAME)
IMAGENET_MD5 = '6d6bbae143d832006294945121d1f1fc'
# Probed before downloading, so that no network means an error in seconds.
_PROBE_URL = IMAGENET_URL
_PROBE_TIMEOUT_S = 3.0
# Longest wait for any one network read during the download.
_DOWNLOAD_TIMEOUT_S = 30.0

# ImageNet channel means in BGR order, as vgg16.preprocess_input ('caffe').
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

# Tensor cores for float16 arrived with Volta (compute capability 7.0).
_MIN_FLOAT16_COMPUTE_CAPABILITY = (7, 0)
# CPU flags (Linux /proc/cpuinfo) whose presence makes oneDNN's bfloat16
# kernels faster than float32.
_BFLOAT16_CPU_FLAGS = frozenset({'avx512_bf16', 'amx_bf16'})


class WeightsError(errors.XrayError):
  """The requested VGG16 weights cannot be found or loaded."""


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
  if policy in POLICIES:
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


def keras_cache_path():
  """Returns where Keras caches the notop ImageNet weights.

  `$KERAS_HOME/models/` if KERAS_HOME is set, else `~/.keras/models/`
  (resolved when called; Keras itself reads KERAS_HOME once, at import).
  """
  keras_home = os.environ.get('KERAS_HOME')
  if not keras_home:
    home = os.path.expanduser('~')
    keras_home = os.path.join(home if os.access(home, os.W_OK) else '/tmp',
                              '.keras')
  return os.path.join(os.path.expanduser(keras_home), 'models',
                      IMAGENET_FILENAME)


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


def resolve_weights(weights):
  """Returns None or a local weights file for `keras.applications.VGG16`.

  Args:
    weights: None; 'imagenet' (the Keras cache file, downloaded when missing
      and the network is up); or a path to the notop weights, either the
      legacy `.h5` format of Keras' ImageNet file or Keras 3 `.weights.h5`.

  Returns:
    None or a path.

  Raises:
    WeightsError: the file is missing and cannot be downloaded, or the path
      does not exist or is not an .h5 file. Fails within a few seconds
      without network.
  """
  if weights is None:
    return None
  if weights != 'imagenet':
    path = os.fspath(weights)
    if not os.path.isfile(path):
      raise WeightsError(f'weights file {path!r} does not exist')
    if not path.endswith(('.h5', '.hdf5')):
      raise WeightsError(
          f'weights file {path!r} is not an .h5 file: pass the VGG16 notop '
          f'weights ({IMAGENET_FILENAME} or a .weights.h5)')
    return path

  cache_path = keras_cache_path()
  if os.path.isfile(cache_path) and _md5(cache_path) == IMAGENET_MD5:
    return cache_path
  fix = (f'put {IMAGENET_FILENAME} (from {IMAGENET_URL}) at {cache_path}, '
         'or pass its local path as the weights')
  if not _url_reachable(_PROBE_URL, _PROBE_TIMEOUT_S):
    state = 'is corrupt' if os.path.exists(cache_path) else 'is not cached'
    host = urllib.parse.urlsplit(_PROBE_URL).netloc
    raise WeightsError(
        f'the ImageNet weights file {state} and {host} is unreachable: {fix}')
  # urlretrieve takes no timeout: the default socket timeout makes a
  # stalled download fail instead of hanging.
  previous_timeout = socket.getdefaulttimeout()
  socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
  try:
    return keras.utils.get_file(
        IMAGENET_FILENAME, IMAGENET_URL, cache_subdir='models',
        cache_dir=os.path.dirname(os.path.dirname(cache_path)),
        file_hash=IMAGENET_MD5)
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsError(
        f'downloading ImageNet weights failed ({e}): {fix}') from e
  finally:
    socket.setdefaulttimeout(previous_timeout)


def frozen_layer_count(base, frozen_blocks):
  """Number of leading VGG16 layers that make up blocks 1..frozen_blocks.

  Block k ends at the k-th pooling layer; the input layer counts, so four
  blocks are the seed's 15 layers.
  """
  if frozen_blocks == 0:
    return 0
  pools = 0
  for index, layer in enumerate(base.layers):
    if isinstance(layer, keras.layers.MaxPooling2D):
      pools += 1
      if pools == frozen_blocks:
        return index + 1
  raise ValueError(f'frozen_blocks must be in 0..{pools}, got {frozen_blocks}')


BACKBONES = checks.BACKBONES
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


def build_model(image_size=224, channels_in=1, weights=None, frozen_blocks=4,
                dense_units=(512, 64), dropout=0.4, augmentation=None,
                policy=None, name='xray_vgg16', backbone='vgg16'):
  """Builds the seed's VGG16 classifier, taking uint8 images.

  Args:
    image_size: height and width of the input images (vgg16: 32 or more,
      mini_vgg: 16 or more).
    channels_in: 1 (grayscale, as stored) or 3.
    weights: None, 'imagenet' or a local .h5 path; see `resolve_weights`.
    frozen_blocks: leading blocks (0..5 of VGG16, 0..4 of mini_vgg) whose
      layers are not trained.
    dense_units: widths of the dense head's hidden layers.
    dropout: dropout rate after each hidden dense layer.
    augmentation: None; a Keras layer applied first, which must augment
      only when training (e.g. from `xray_tfdata.augment.make_augmentation`);
      or a kind for `make_augmentation` ('fused', 'keras_cv', 'none'), which
      gets the reference settings, `augment.REFERENCE_AUGMENTATION`.
    policy: None keeps the current global dtype policy; otherwise 'auto' or
      a policy name (see `select_policy`), set globally before building.
    name: model name.
    backbone: 'vgg16' (the seed's), or 'mini_vgg', a small VGG-style
      network trained from scratch (weights must be None), for the demo.

  Returns:
    An uncompiled `keras.Model` mapping uint8 [B, H, W, channels_in] to
    float32 P(pneumonia) [B, 1].

  Raises:
    WeightsError: weights cannot be found or loaded.
    checks.SettingError: a bad backbone, frozen_blocks, weights for
      mini_vgg, dense_units, dropout or policy.
    ValueError: bad channels_in.
  """
  if channels_in not in (1, 3):
    raise ValueError(f'channels_in must be 1 or 3, got {channels_in}')
  checks.check_backbone(backbone, frozen_blocks, weights,
                        min(image_size) if isinstance(image_size, (tuple, list))
                        else image_size)
  checks.check_dense_units(dense_units)
  checks.check_fraction('dropout', dropout)
  if policy is not None:
    keras.mixed_precision.set_global_policy(select_policy(policy))
  weights_path = resolve_weights(weights)
  if isinstance(augmentation, str):
    from xray_tfdata import augment  # pylint: disable=g-import-not-at-top
    augmentation = augment.make_augmentation(augmentation,
                                             **augment.REFERENCE_AUGMENTATION)

  images = keras.Input((image_size, image_size, channels_in), dtype='uint8',
                       name='image')
  x = images
  if augmentation is not None:
    x = augmentation(x)
  # Pixel preprocessing in float32: bfloat16 would round 0..255 pixels to
  # 8 significant bits before the mean is subtracted.
  x = VGG16Preprocess(dtype='float32', name='vgg16_preprocess')(x)
  try:
    if backbone == 'mini_vgg':
      base = mini_vgg((image_size, image_size, 3))
    else:
      base = keras.applications.VGG16(
          include_top=False, weights=weights_path,
          input_shape=(image_size, image_size, 3))
  except ValueError as e:
    if weights_path is None:
      raise
    raise WeightsError(
        f'weights file {weights_path!r} does not fit VGG16 without its top '
        f'({e})'.replace('\n', ' ')) from e
  for layer in base.layers[:frozen_layer_count(base, frozen_blocks)]:
    layer.trainable = False
  x = base(x)
  x = keras.layers.Flatten(name='flatten')(x)
  for index, units in enumerate(dense_units, start=1):
    x = keras.layers.Dense(units, activation='relu', name=f'dense_{index}')(x)
    x = keras.layers.Dropout(dropout, name=f'dropout_{index}')(x)
  # float32 output: a sigmoid in float16/bfloat16 saturates and the loss
  # would be computed on rounded probabilities.
  probability = keras.layers.Dense(1, activation='sigmoid', dtype='float32',
                                   name='probability')(x)
  return keras.Model(images, probability, name=name)


def reference_metrics():
  """The reference notebook's metrics, with its names."""
  return [
      keras.metrics.AUC(name='auc'),
      keras.metrics.TruePositives(name='tp'),
      keras.metrics.FalsePositives(name='fp'),
      keras.metrics.TrueNegatives(name='tn'),
      keras.metrics.FalseNegatives(name='fn'),
      keras.metrics.BinaryAccuracy(name='accuracy'),
      keras.metrics.Precision(name='precision'),
      keras.metrics.Recall(name='recall'),
  ]


def compile_model(model, learning_rate=1e-4, jit_compile='auto',
                  steps_per_execution=1):
  """Compiles with Adam, binary cross-entropy and the reference metrics.

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

  Returns:
    The model, compiled.

  Raises:
    checks.SettingError: non-positive learning rate.
  """
  checks.check_positive('learning_rate', learning_rate)
  model.compile(
      optimizer=keras.optimizers.Adam(learning_rate),
      loss=keras.losses.BinaryCrossentropy(),
      metrics=reference_metrics(),
      jit_compile=jit_compile,
      steps_per_execution=steps_per_execution)
  return model
