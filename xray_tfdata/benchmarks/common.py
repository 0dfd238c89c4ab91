"""What every benchmark shares: timing, medians, ratios, the machine record
and the result's JSON. Keras (for the backend's name and devices), no
TensorFlow."""

import datetime
import json
import os
import platform
import statistics
import sys
import time

import keras
import numpy as np

from xray_tfdata import errors
from xray_tfdata import model as model_lib

# Environment variables that change the speed, recorded with every result.
_RECORDED_ENV = ('KERAS_BACKEND', 'XLA_FLAGS', 'XLA_PYTHON_CLIENT_PREALLOCATE',
                 'XLA_PYTHON_CLIENT_MEM_FRACTION', 'JAX_PLATFORMS',
                 'CUDA_VISIBLE_DEVICES', 'TF_CPP_MIN_LOG_LEVEL',
                 'TF_CPU_ALLOCATOR_USE_BFC', 'TF_ENABLE_ONEDNN_OPTS',
                 'TF_NUM_INTRAOP_THREADS', 'TF_NUM_INTEROP_THREADS',
                 'ONEDNN_MAX_CPU_ISA')  # caps oneDNN's ISA: emulates a CPU
_CPU_FLAGS_OF_NOTE = ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16')


class BenchmarkError(errors.XrayError):
  """The benchmark's inputs are unusable (no images, bad variant names)."""


def timed(function):
  """Seconds one call of function() takes."""
  begin = time.perf_counter()
  function()
  return time.perf_counter() - begin


def time_batches(next_batch, num_batches, sync=lambda b: b):
  """(images/s, images) over num_batches calls of next_batch; each returns a
  batch, or one value per image of it, whose first dimension is the batch
  size; sync waits for it (np.asarray for eager tensors)."""
  start = time.perf_counter()
  images = 0
  for _ in range(num_batches):
    batch = sync(next_batch())
    images += int(batch.shape[0])
  return images / (time.perf_counter() - start), images


def interleaved(runners, repeats, measure):
  """{name: [measure(name, runner) per round]}, rounds interleaving the
  runners so that a load change on a shared host hits them all."""
  values = {name: [] for name in runners}
  for _ in range(repeats):
    for name, runner in runners.items():
      values[name].append(measure(name, runner))
  return values


def medians(values):
  """{name: median of its list}."""
  return {name: statistics.median(v) for name, v in values.items()}


def ratios(values, reference, higher_is_better=True):
  """{name: how many times better than `reference`} of a {name: median}
  dict: rate / reference's rate, or reference's seconds / seconds."""
  base = values[reference]
  if higher_is_better:
    return {name: value / base for name, value in values.items()}
  return {name: base / value for name, value in values.items()}


def epoch_ratios(median_seconds):
  """speedup_vs_baseline and overhead_vs_floor of median epoch seconds, for
  whichever of the two reference variants was run."""
  result = {}
  if 'baseline' in median_seconds:
    result['speedup_vs_baseline'] = ratios(median_seconds, 'baseline',
                                           higher_is_better=False)
  if 'floor' in median_seconds:
    result['overhead_vs_floor'] = {
        n: m / median_seconds['floor'] - 1 for n, m in median_seconds.items()}
  return result


def devices():
  """Names of the active backend's devices, e.g. ['gpu:NVIDIA H200']."""
  backend = keras.backend.backend()
  # pylint: disable=g-import-not-at-top  (only the active backend is there)
  if backend == 'jax':
    import jax
    return [f'{d.platform}:{d.device_kind}' for d in jax.devices()]
  if backend == 'tensorflow':
    import tensorflow as tf
    return [f'{d.device_type}:{d.name}'
            for d in tf.config.list_physical_devices()]
  if backend == 'torch':
    import torch
    if torch.cuda.is_available():
      return [f'cuda:{torch.cuda.get_device_name(i)}'
              for i in range(torch.cuda.device_count())]
    return ['cpu']
  return [backend]


def machine_info():
  """Where, when and with what a result was measured: date, CPU and its
  flags of note, backend, devices, versions, environment."""
  versions = {'keras': keras.__version__, 'numpy': np.__version__}
  for name in ('tensorflow', 'jax', 'jaxlib', 'torch'):
    # Only what this process imported: importing TensorFlow here would make
    # a JAX benchmark carry it.
    module = sys.modules.get(name)
    versions[name] = getattr(module, '__version__', None)
  flags = model_lib.read_cpu_flags()
  return {
      'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
      'cpu_count': os.cpu_count(),
      'cpu_flags': sorted(f for f in _CPU_FLAGS_OF_NOTE if f in flags),
      'platform': platform.platform(),
      'python': platform.python_version(),
      'backend': keras.backend.backend(),
      'devices': devices(),
      # Kept under these names for the TensorFlow modes' readers.
      'tensorflow': versions['tensorflow'],
      'keras': keras.__version__,
      'versions': versions,
      'env': {name: os.environ.get(name) for name in _RECORDED_ENV},
  }


def write_json(result, path):
  """Writes a result dict as indented JSON."""
  with open(path, 'w') as f:
    json.dump(result, f, indent=2)


def format_rounds(values, digits=1):
  """'v1, v2, ...' of one variant's rounds."""
  return ', '.join(f'{v:.{digits}f}' for v in values)


def _leaf_layers(model):
  """The layers of a model, nested models (a keras.applications backbone)
  opened, in the model's topological order."""
  for layer in model.layers:
    if hasattr(layer, 'layers') and layer.layers:
      yield from _leaf_layers(layer)
    else:
      yield layer


def _layer_macs(layer):
  """Multiply-accumulates per image of one conv or dense layer, from its
  kernel and output shapes; 0 for any other layer."""
  kernel = getattr(layer, 'kernel', None)
  if kernel is None:
    kernel = getattr(layer, 'depthwise_kernel', None)
  if kernel is None or not hasattr(layer, 'output'):
    return 0
  out = [int(d) for d in layer.output.shape[1:]]  # without the batch
  k = [int(d) for d in kernel.shape]
  name = type(layer).__name__
  if name == 'Dense':
    # kernel [in, units]; out [..., units]: every output is `in` MACs.
    return int(np.prod(out)) * k[0]
  if name in ('Conv1D', 'Conv2D', 'Conv3D'):
    # kernel [*window, in / groups, filters]; out [*spatial, filters].
    return int(np.prod(out)) * int(np.prod(k[:-1]))
  if name == 'DepthwiseConv2D':
    # kernel [kh, kw, in, multiplier]; out [h, w, in * multiplier].
    return int(np.prod(out)) * k[0] * k[1]
  if name == 'SeparableConv2D':
    depthwise = [int(d) for d in layer.depthwise_kernel.shape]
    pointwise = [int(d) for d in layer.pointwise_kernel.shape]
    spatial = int(np.prod(out[:-1]))
    return (spatial * depthwise[2] * depthwise[3] * depthwise[0] * depthwise[1]
            + spatial * pointwise[2] * pointwise[3])
  return 0


def model_flops(model):
  """FLOPs per image of a built model's conv and dense layers.

  Counted from the layers' shapes: 2 FLOPs per multiply-accumulate. Other
  layers (batch norm, activations, pooling, the augmentation's resampling)
  are left out: on a GPU they are memory-bound and a small share of the
  FLOPs. Training is the forward pass, plus for each layer its kernel's
  gradient (as many FLOPs as its forward pass) if it is trainable, plus its
  input's gradient (again as many) if a trainable layer lies before it (frozen
  stages at the input end need no backward pass).

  Returns:
    {'forward': FLOPs per image of inference, 'train': of a training step,
     'trainable_share': the share of forward FLOPs in trainable layers}.
  """
  forward = train = trainable_flops = 0
  upstream_trainable = False
  for layer in _leaf_layers(model):
    flops = 2 * _layer_macs(layer)
    trainable = bool(layer.trainable_weights)
    forward += flops
    train += flops
    if trainable:
      train += flops
      trainable_flops += flops
    if upstream_trainable:
      train += flops
    upstream_trainable = upstream_trainable or trainable
  return {'forward': forward, 'train': train,
          'trainable_share': trainable_flops / forward if forward else 0.}


# Dense (no sparsity) peak TFLOP/s of tensor-core matmuls by compute dtype,
# from NVIDIA's datasheets (H100 SXM5 and H200 SXM share the H100's compute;
# A100 SXM4). float32 is the CUDA cores' FMA rate; 'tf32' is float32 inputs
# rounded to TF32 on the tensor cores, XLA's default for float32 on GPUs.
DENSE_PEAK_TFLOPS = {
    'H200': {'bfloat16': 989.4, 'float16': 989.4, 'tf32': 494.7,
             'float32': 66.9},
    'H100': {'bfloat16': 989.4, 'float16': 989.4, 'tf32': 494.7,
             'float32': 66.9},
    'A100': {'bfloat16': 312.0, 'float16': 312.0, 'tf32': 156.0,
             'float32': 19.5},
}


def dense_peak(device_names):
  """The DENSE_PEAK_TFLOPS row of the first device named after one of its
  keys (e.g. 'gpu:NVIDIA H200'), as (key, row); (None, None) when unknown
  (CPUs, other GPUs)."""
  for device in device_names:
    for key, row in DENSE_PEAK_TFLOPS.items():
      if key in device.upper():
        return key, row
  return None, None


def peak_for_policy(row, policy):
  """The peak TFLOP/s that a dtype policy computes at, from a
  DENSE_PEAK_TFLOPS row: bfloat16/float16 for the mixed policies, TF32 for
  float32."""
  if row is None:
    return None
  if 'bfloat16' in policy:
    return row['bfloat16']
  if 'float16' in policy:
    return row['float16']
  return row['tf32']
