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
                 'TF_NUM_INTRAOP_THREADS', 'TF_NUM_INTEROP_THREADS')
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
