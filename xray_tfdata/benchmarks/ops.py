"""Images/s of the pipeline's and the model's parts, on tensors in memory:
`tools/benchmark --mode=ops`.

One resampling pass, the gray->BGR preprocessing, both (the fused path's
device work), and the model's training step and inference at batch 1 and
full batch. It explains the input and epoch benchmarks, and compares process
settings (runtime.py) when run under different environment variables.
"""

import time

import keras
import numpy as np
import tensorflow as tf

from xray_tfdata import augment
from xray_tfdata import model as model_lib
from xray_tfdata import reference
from xray_tfdata import trunk_cache
from xray_tfdata.benchmarks import baseline
from xray_tfdata.benchmarks import common
from xray_tfdata.benchmarks import library


OPS = ('transform', 'preprocess', 'fused+preprocess', 'train_step',
       'predict_batch', 'predict_one', 'predict_trunk', 'predict_head',
       'first_conv', 'first_conv_folded')
# The validation pass split where the trunk cache cuts it (predict_batch =
# the frozen trunk + the trainable head), and VGG16's first convolution on
# the preprocessed three-channel image and folded on the gray one: where
# the levers of issue 37 act.
_MODEL_OPS = ('train_step', 'predict_batch', 'predict_one', 'predict_trunk',
              'predict_head', 'first_conv', 'first_conv_folded')


def _op_runners(ops, image_size, batch_size, policy):
  """name -> (callable returning a value to wait for, images per call)."""
  rng = np.random.default_rng(0)
  images = tf.constant(rng.integers(
      0, 256, (batch_size, image_size, image_size, 1), dtype=np.uint8))
  pixels = tf.cast(images, tf.float32)
  params = augment.sample_params(batch_size, image_size, image_size, seed=0,
                                 **augment.REFERENCE_AUGMENTATION)
  preprocess = model_lib.VGG16Preprocess()
  fused = library.device_preprocess('fused')
  runners = {
      'transform': tf.function(
          lambda: augment.apply_transform(pixels, params)[:, 0, 0, 0]),
      'preprocess': tf.function(lambda: preprocess(images)[:, 0, 0, 0]),
      'fused+preprocess': lambda: fused(images),
  }
  runners = {name: (run, batch_size) for name, run in runners.items()
             if name in ops}
  if set(_MODEL_OPS) & set(ops):
    net = library.reference_model(image_size, 'fused', policy)
    keras.mixed_precision.set_global_policy('float32')
    trunk, head = trunk_cache.split_model(net)
    features = trunk.predict_on_batch(images)
    runners['predict_trunk'] = (lambda: trunk.predict_on_batch(images),
                                batch_size)
    runners['predict_head'] = (lambda: head.predict_on_batch(features),
                               batch_size)
    conv = library.reference_model(image_size, 'fused', policy,
                                   fold_gray=True).get_layer('vgg16').layers[1]
    keras.mixed_precision.set_global_policy('float32')
    config = {**conv.get_config(), 'dtype': conv.dtype_policy}
    config.pop('channel_means')
    three = keras.layers.Conv2D.from_config(config)
    three.build((None, image_size, image_size, 3))
    three.set_weights(conv.get_weights())
    bgr = preprocess(images)
    runners['first_conv'] = (tf.function(lambda: three(bgr)[:, 0, 0, 0]),
                             batch_size)
    runners['first_conv_folded'] = (
        tf.function(lambda: conv(pixels)[:, 0, 0, 0]), batch_size)
    labels = (rng.random(batch_size) < 0.73).astype(np.float32)
    runners['train_step'] = (
        lambda: net.train_on_batch(images, labels), batch_size)
    runners['predict_batch'] = (
        lambda: net.predict_on_batch(images), batch_size)
    runners['predict_one'] = (lambda: net.predict_on_batch(images[:1]), 1)
  return {name: runners[name] for name in ops}


def benchmark_ops(image_size=reference.IMAGE_SIZE,
                  batch_size=reference.BATCH_SIZE, calls=10,
                  repeats=3, ops=OPS, policy='float32'):
  """Images/s of the pipeline's and the model's parts, on tensors in memory.

  Args:
    image_size, batch_size: of the uint8 gray batch every op gets.
    calls: calls timed per round for the ops on whole batches; the model's
      ops (seconds each at 224 px) get max(1, calls // 5), predict_one
      batch_size calls.
    repeats: rounds, interleaving the ops.
    ops: names from OPS.
    policy: dtype policy of the model ops ('auto', 'float32',
      'mixed_bfloat16', ...); the augmentation always runs in float32.

  Returns:
    dict with per-op lists of images/s and medians.

  Raises:
    ValueError: an op name not in OPS, or an unknown policy.
  """
  unknown = set(ops) - set(OPS)
  if unknown:
    raise ValueError(f'unknown ops {sorted(unknown)}; choose from {OPS}')
  policy = model_lib.select_policy(policy)
  runners = _op_runners(ops, image_size, batch_size, policy)
  model_ops = set(_MODEL_OPS) - {'predict_one'}

  def count(name):
    if name == 'predict_one':
      return batch_size
    return max(1, calls // 5) if name in model_ops else calls

  def images_per_s(run, images, calls):
    start = time.perf_counter()
    for _ in range(calls):
      library.sync(run())
    return images * calls / (time.perf_counter() - start)

  for run, _ in runners.values():  # warm-up: tracing
    library.sync(run())
  rates = {name: [] for name in runners}
  for _ in range(repeats):
    for name, (run, images) in runners.items():
      rates[name].append(images_per_s(run, images, count(name)))
  return {
      'mode': 'ops', 'machine': common.machine_info(), 'image_size': image_size,
      'batch_size': batch_size, 'policy': policy, 'repeats': repeats,
      'images_per_s': rates,
      'median_images_per_s': common.medians(rates),
  }


def format_table(result):
  """A plain-text table of an ops result."""
  lines = []
  lines.append(f'{"op":<20}{"median img/s":>14}  all rounds')
  for name, median in result['median_images_per_s'].items():
    lines.append(f'{name:<20}{median:>14.1f}  ' + ', '.join(
        f'{r:.1f}' for r in result['images_per_s'][name]))
  return '\n'.join(lines)
