"""Side-by-side benchmarks against the seed's ImageDataGenerator baseline.

Machines here are shared and noisy, so every variant runs in the same
process, interleaved round by round, and the report gives medians and ratios
rather than single timings.

  input: images/s delivered to the model's first conv layer: the seed's
    `flow_from_directory` iterator (decode + augment + preprocess_input on the
    host) against DatasetBuilder + the augmentation layers (fused and
    keras-cv) + preprocessing, as they run on the device.
  epoch: seconds per epoch (train + validation) of the seed's baseline as it
    was written, of this library (fused and keras-cv), and of the model alone
    on tensors already in memory (the compute floor).
  ops: images/s of the parts, on tensors in memory: one resampling pass,
    the gray->BGR preprocessing, both (the fused path's device work), and
    the model's training step and inference at batch 1 and full batch. It
    explains the other two, and compares process settings (runtime.py) when
    run under different environment variables.
"""

import json
import os
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from xray_tfdata import augment
from xray_tfdata import benchmark_device
from xray_tfdata import demo
from xray_tfdata import model as model_lib
from xray_tfdata import pipeline

REFERENCE_BATCH_SIZE = benchmark_device.REFERENCE_BATCH_SIZE

# The seed's baseline and the machine record are shared with the
# TensorFlow-free device_epoch mode, where they are defined.
machine_info = benchmark_device.machine_info
reference_flow = benchmark_device.reference_flow
_baseline_model = benchmark_device.baseline_model


def _device_preprocess(kind):
  """Augmentation + gray->BGR preprocessing, as the model runs them.

  Returns a tf.function giving one pixel per image of the result: the whole
  batch is computed (an op computes its whole output) but not copied back to
  the host, as on a GPU where it would go on to the first convolution.
  """
  augmentation = (augment.make_augmentation(kind, **augment.REFERENCE_AUGMENTATION)
                  if kind != 'none' else None)
  preprocess = model_lib.VGG16Preprocess()

  @tf.function
  def run(images):
    x = augmentation(images, training=True) if augmentation else images
    return preprocess(x)[:, 0, 0, 0]  # [B]: one value per image

  return run


def _time_batches(next_batch, num_batches, sync=lambda b: b):
  """Images/s over num_batches calls; each call returns a batch, or one
  value per image of it, whose first dimension is the batch size."""
  start = time.perf_counter()
  images = 0
  for _ in range(num_batches):
    batch = sync(next_batch())
    images += int(batch.shape[0])
  return images / (time.perf_counter() - start), images


def benchmark_input(src_dir, data_dir, image_size=224, batch_size=REFERENCE_BATCH_SIZE,
                    baseline_batches=15, batches=60, repeats=3,
                    kinds=('host', 'none', 'fused', 'keras_cv')):
  """Images/s of the seed's iterator against this pipeline, side by side.

  Args:
    src_dir: the pool of class folders the TFRecords were made from.
    data_dir: the converted dataset of the same images.
    baseline_batches, batches: batches timed per round for the baseline and
      for each pipeline variant (the baseline is about 50 times slower).
    repeats: rounds; each round times every variant once.
    kinds: what to time after the tf.data pipeline: 'host' nothing (the
      host's part alone: read, decode or cache, shuffle, batch, which is all
      the host does when the model runs on a GPU); 'none' the gray->BGR
      preprocessing; 'fused' and 'keras_cv' the augmentation and the
      preprocessing. On a CPU-only machine all of it shares the same cores.

  Returns:
    dict with per-variant lists of images/s, medians and ratios.
  """
  builder = pipeline.DatasetBuilder(data_dir)
  flow = reference_flow(src_dir, image_size, batch_size)
  flow_iter = iter(flow)
  variants = {'imagedatagenerator': lambda: next(flow_iter)[0]}
  runs = {}
  for kind in kinds:
    # Repeated: the timing loop draws more batches than one pass holds.
    ds = builder.as_dataset('train', batch_size, training=True, seed=0,
                            repeat=True)
    it = iter(ds)
    if kind == 'host':
      variants['tfdata+host'] = lambda it=it: next(it)[0]
    else:
      run = _device_preprocess(kind)
      variants[f'tfdata+{kind}'] = lambda it=it, run=run: run(next(it)[0])
    runs[kind] = builder.steps_per_epoch('train', batch_size)
  # Warm-up: graph tracing, and one full pass so the cache holds the split
  # (its cold rate is reported separately).
  cold = {}
  for name, next_batch in variants.items():
    if name == 'imagedatagenerator':
      next_batch()
      continue
    steps = runs[name.split('+', 1)[1]]
    cold[name], _ = _time_batches(next_batch, steps, _sync)
  rates = {name: [] for name in variants}
  images_timed = {name: 0 for name in variants}
  for _ in range(repeats):
    for name, next_batch in variants.items():
      n = baseline_batches if name == 'imagedatagenerator' else batches
      rate, images = _time_batches(next_batch, n, _sync)
      rates[name].append(rate)
      images_timed[name] += images
  medians = {name: statistics.median(r) for name, r in rates.items()}
  base = medians['imagedatagenerator']
  return {
      'mode': 'input', 'machine': machine_info(), 'image_size': image_size,
      'batch_size': batch_size,
      'repeats': repeats, 'images_per_s': rates, 'median_images_per_s': medians,
      'first_pass_images_per_s': cold, 'images_timed': images_timed,
      'ratio_vs_baseline': {n: m / base for n, m in medians.items()},
  }


OPS = ('transform', 'preprocess', 'fused+preprocess', 'train_step',
       'predict_batch', 'predict_one')


def _op_runners(ops, image_size, batch_size, policy):
  """name -> (callable returning a value to wait for, images per call)."""
  rng = np.random.default_rng(0)
  images = tf.constant(rng.integers(
      0, 256, (batch_size, image_size, image_size, 1), dtype=np.uint8))
  pixels = tf.cast(images, tf.float32)
  params = augment.sample_params(batch_size, image_size, image_size, seed=0,
                                 **augment.REFERENCE_AUGMENTATION)
  preprocess = model_lib.VGG16Preprocess()
  fused = _device_preprocess('fused')
  runners = {
      'transform': tf.function(
          lambda: augment.apply_transform(pixels, params)[:, 0, 0, 0]),
      'preprocess': tf.function(lambda: preprocess(images)[:, 0, 0, 0]),
      'fused+preprocess': lambda: fused(images),
  }
  runners = {name: (run, batch_size) for name, run in runners.items()
             if name in ops}
  if {'train_step', 'predict_batch', 'predict_one'} & set(ops):
    net = _reference_model(image_size, 'fused', policy)
    keras.mixed_precision.set_global_policy('float32')
    labels = (rng.random(batch_size) < 0.73).astype(np.float32)
    runners['train_step'] = (
        lambda: net.train_on_batch(images, labels), batch_size)
    runners['predict_batch'] = (
        lambda: net.predict_on_batch(images), batch_size)
    runners['predict_one'] = (lambda: net.predict_on_batch(images[:1]), 1)
  return {name: runners[name] for name in ops}


def benchmark_ops(image_size=224, batch_size=REFERENCE_BATCH_SIZE, calls=10,
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
  model_ops = {'train_step', 'predict_batch'}

  def count(name):
    if name == 'predict_one':
      return batch_size
    return max(1, calls // 5) if name in model_ops else calls

  def images_per_s(run, images, calls):
    start = time.perf_counter()
    for _ in range(calls):
      _sync(run())
    return images * calls / (time.perf_counter() - start)

  for run, _ in runners.values():  # warm-up: tracing
    _sync(run())
  rates = {name: [] for name in runners}
  for _ in range(repeats):
    for name, (run, images) in runners.items():
      rates[name].append(images_per_s(run, images, count(name)))
  return {
      'mode': 'ops', 'machine': machine_info(), 'image_size': image_size,
      'batch_size': batch_size, 'policy': policy, 'repeats': repeats,
      'images_per_s': rates,
      'median_images_per_s': {n: statistics.median(r) for n, r in rates.items()},
  }


def _sync(batch):
  # Eager ops may still be running; converting to numpy waits for the value.
  return np.asarray(batch)


def _reference_model(image_size, augmentation, policy):
  keras.mixed_precision.set_global_policy(policy)
  net = model_lib.build_model(image_size=image_size, weights=None,
                              augmentation=augmentation)
  model_lib.compile_model(net)
  return net


def benchmark_epoch(src_dir, data_dir, image_size=224, batch_size=REFERENCE_BATCH_SIZE,
                    train_images=248, val_images=62, repeats=3, policy='auto',
                    variants=('baseline', 'fused', 'keras_cv', 'floor')):
  """Seconds per epoch (train + validation), side by side.

  Every variant trains the same VGG16 (blocks 1-4 frozen, the seed's head,
  weights=None: the same compute as ImageNet weights) on `train_images`
  images and validates on `val_images`, one epoch per round, after a warm-up
  epoch; rounds interleave the variants.

  Returns:
    dict with per-variant epoch seconds, medians, images/s, the ratio against
    the baseline and the input overhead against the compute floor.
  """
  builder = pipeline.DatasetBuilder(data_dir)
  policy = model_lib.select_policy(policy)
  steps = max(1, train_images // batch_size)
  class_weight = builder.info.class_weights('train')
  setups = {}
  if 'baseline' in variants:
    net = _baseline_model(image_size)
    train = reference_flow(src_dir, image_size, batch_size)
    # The seed validated one image per step.
    val = reference_flow(src_dir, image_size, 1, augmentation=False,
                    shuffle=False)
    setups['baseline'] = (net, train, val, min(val_images, val.samples))
  for kind in ('fused', 'keras_cv'):
    if kind in variants:
      aug = augment.make_augmentation(kind, **augment.REFERENCE_AUGMENTATION)
      net = _reference_model(image_size, aug, policy)
      # Repeated, like the trainer's: `steps` (train_images // batch_size)
      # need not be one pass over the split.
      train = builder.as_dataset('train', batch_size, training=True, seed=0,
                                 repeat=True)
      val = builder.as_dataset('val', batch_size).take(
          -(-val_images // batch_size)).cache()
      setups[kind] = (net, train, val, None)
  if 'floor' in variants:
    aug = augment.make_augmentation('fused', **augment.REFERENCE_AUGMENTATION)
    net = _reference_model(image_size, aug, policy)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, image_size, image_size, 1),
                          dtype=np.uint8)
    labels = (rng.random(batch_size) < 0.73).astype(np.float32)
    train = tf.data.Dataset.from_tensors((images, labels)).repeat()
    val = tf.data.Dataset.from_tensors((images, labels)).repeat(
        -(-val_images // batch_size))
    setups['floor'] = (net, train, val, None)
  keras.mixed_precision.set_global_policy('float32')

  def one_epoch(name):
    net, train, val, val_steps = setups[name]
    start = time.perf_counter()
    net.fit(train, epochs=1, steps_per_epoch=steps, validation_data=val,
            validation_steps=val_steps, class_weight=class_weight, verbose=0,
            shuffle=False)
    return time.perf_counter() - start

  for name in setups:  # warm-up: tracing, caches
    one_epoch(name)
  seconds = {name: [] for name in setups}
  for _ in range(repeats):
    for name in setups:
      seconds[name].append(one_epoch(name))
  medians = {n: statistics.median(s) for n, s in seconds.items()}
  trained = steps * batch_size
  result = {
      'mode': 'epoch', 'machine': machine_info(), 'image_size': image_size,
      'batch_size': batch_size,
      'policy': policy, 'train_images': trained, 'val_images': val_images,
      'repeats': repeats, 'epoch_seconds': seconds,
      'median_epoch_seconds': medians,
      'median_train_images_per_s': {n: trained / m for n, m in medians.items()},
  }
  result.update(benchmark_device.epoch_ratios(medians))
  return result


def format_table(result):
  """A plain-text table of a benchmark result."""
  lines = []
  if result['mode'] == 'input':
    lines.append(f'{"variant":<22}{"median img/s":>14}{"first pass":>12}'
                 f'{"x baseline":>12}  all rounds')
    for name, median in result['median_images_per_s'].items():
      cold = result['first_pass_images_per_s'].get(name)
      lines.append(
          f'{name:<22}{median:>14.1f}'
          f'{(f"{cold:.1f}" if cold else "-"):>12}'
          f'{result["ratio_vs_baseline"][name]:>12.2f}  '
          + ', '.join(f'{r:.1f}' for r in result['images_per_s'][name]))
  elif result['mode'] == 'ops':
    lines.append(f'{"op":<20}{"median img/s":>14}  all rounds')
    for name, median in result['median_images_per_s'].items():
      lines.append(f'{name:<20}{median:>14.1f}  ' + ', '.join(
          f'{r:.1f}' for r in result['images_per_s'][name]))
  else:
    lines.append(f'{"variant":<12}{"median s/epoch":>16}{"train img/s":>13}'
                 f'{"x baseline":>12}{"vs floor":>10}  all rounds (s)')
    for name, median in result['median_epoch_seconds'].items():
      speedup = result.get('speedup_vs_baseline', {}).get(name)
      overhead = result.get('overhead_vs_floor', {}).get(name)
      lines.append(
          f'{name:<12}{median:>16.2f}'
          f'{result["median_train_images_per_s"][name]:>13.1f}'
          f'{(f"{speedup:.2f}" if speedup else "-"):>12}'
          f'{(f"{overhead:+.1%}" if overhead is not None else "-"):>10}  '
          + ', '.join(f'{s:.1f}' for s in result['epoch_seconds'][name]))
  return '\n'.join(lines)


def write_json(result, path):
  with open(path, 'w') as f:
    json.dump(result, f, indent=2)


def prepare_data(work_dir, num_images, image_size, seed=0):
  """Creates (once) a synthetic pool of realistic-size JPEGs and its
  TFRecords re-split with the seed's proportions; returns (src_dir, data_dir).

  The baseline reads the pool with flow_from_directory (train and
  validation draw from the same images; only speed is measured here).
  """
  src_dir = benchmark_device.prepare_jpegs(work_dir, num_images, seed=seed)
  data_dir = os.path.join(work_dir, f'tfrecords_{image_size}')
  demo.convert_pool(src_dir, data_dir, num_images, image_size, seed=seed)
  return src_dir, data_dir
