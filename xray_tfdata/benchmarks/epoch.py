"""Seconds per epoch (train + validation), side by side:
`tools/benchmark --mode=epoch`.

The reference notebook's baseline as it was written, the pipeline a Keras
user writes today (`image_dataset_from_directory` without and with
`.cache()`, the Keras core augmentation layers; see `peers`), this library
(fused and keras-cv), and the model alone on tensors already in memory (the
compute floor).
"""

import time

import keras
import numpy as np
import tensorflow as tf

from xray_tfdata import augment
from xray_tfdata import model as model_lib
from xray_tfdata import pipeline
from xray_tfdata import reference
from xray_tfdata import trunk_cache
from xray_tfdata.benchmarks import baseline
from xray_tfdata.benchmarks import common
from xray_tfdata.benchmarks import library
from xray_tfdata.benchmarks import peers


# The exact levers of issue 37, each measured side by side as (folded gray
# first convolution, validation trunk cache): 'fused' has the cache and not
# the fold (measured slower, `model.build_model`'s fold_gray_input);
# fused_uncached is the library as it was before both; fused_folded and
# fused_folded_uncached add the fold.
LEVER_VARIANTS = {'fused_uncached': (False, False),
                  'fused_folded': (True, True),
                  'fused_folded_uncached': (True, False)}
DEFAULT_VARIANTS = ('baseline',) + peers.VARIANTS + ('fused', 'keras_cv',
                                                     'floor')
VARIANTS = DEFAULT_VARIANTS + tuple(LEVER_VARIANTS)  # run when named
# A short epoch by default: four of the reference's batches to train on and
# one to validate, so that every variant's rounds fit in minutes on a CPU
# (device_epoch times the reference's whole split).
TRAIN_IMAGES = 4 * reference.BATCH_SIZE
VAL_IMAGES = reference.BATCH_SIZE


def benchmark_epoch(src_dir, data_dir, image_size=reference.IMAGE_SIZE,
                    batch_size=reference.BATCH_SIZE, train_images=TRAIN_IMAGES,
                    val_images=VAL_IMAGES, repeats=3, policy='auto',
                    variants=DEFAULT_VARIANTS):
  """Seconds per epoch (train + validation), side by side.

  Every variant trains the same VGG16 (blocks 1-4 frozen, the reference's head,
  weights=None: the same compute as ImageNet weights) on `train_images`
  images and validates on `val_images`, one epoch per round, after a warm-up
  epoch; rounds interleave the variants.

  The peers (keras_user, keras_user+cache) train the reference's model with the
  Keras core augmentation layers in front, under the same policy as ours.

  Returns:
    dict with per-variant epoch seconds, medians, images/s, the ratio against
    the baseline and each peer (speedup_vs_<name>) and the input overhead
    against the compute floor.

  Raises:
    common.BenchmarkError: an unknown variant.
  """
  unknown = set(variants) - set(VARIANTS)
  if unknown:
    raise common.BenchmarkError(f'unknown variants {sorted(unknown)}; choose '
                                f'from {", ".join(VARIANTS)}')
  builder = pipeline.DatasetBuilder(data_dir)
  policy = model_lib.select_policy(policy)
  steps = max(1, train_images // batch_size)
  class_weight = builder.info.class_weights('train')
  setups = {}
  if 'baseline' in variants:
    net = baseline.baseline_model(image_size)
    train = baseline.reference_flow(src_dir, image_size, batch_size)
    # The reference validated one image per step.
    val = baseline.reference_flow(src_dir, image_size, 1, augmentation=False,
                                  shuffle=False)
    setups['baseline'] = (net, train, val, min(val_images, val.samples), [])
  for name in peers.VARIANTS:
    if name in variants:
      cache = name == peers.KERAS_USER_CACHE
      net = peers.keras_user_model(image_size, policy)
      train = peers.keras_user_dataset(src_dir, image_size, batch_size,
                                       cache=cache).repeat()
      val = peers.keras_user_dataset(src_dir, image_size, batch_size,
                                     cache=cache, training=False).take(
                                         -(-val_images // batch_size))
      setups[name] = (net, train, val, None, [])
  for name in ('fused', 'keras_cv') + tuple(LEVER_VARIANTS):
    if name in variants:
      fold, cache = LEVER_VARIANTS.get(name, (False, True))
      kind = 'keras_cv' if name == 'keras_cv' else 'fused'
      aug = augment.make_augmentation(kind, **augment.REFERENCE_AUGMENTATION)
      net = library.reference_model(image_size, aug, policy, fold_gray=fold)
      # Repeated, like the trainer's: `steps` (train_images // batch_size)
      # need not be one pass over the split.
      train = builder.as_dataset('train', batch_size, training=True, seed=0,
                                 repeat=True)
      val = builder.as_dataset('val', batch_size).take(
          -(-val_images // batch_size)).cache()
      # As training.fit validates: from the cached frozen trunk.
      val, callbacks = (trunk_cache.validation_plan(
          net, val, trunk_cache.validation_key(builder)) if cache
                        else (val, []))
      setups[name] = (net, train, val, None, callbacks)
  if 'floor' in variants:
    aug = augment.make_augmentation('fused', **augment.REFERENCE_AUGMENTATION)
    net = library.reference_model(image_size, aug, policy)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, image_size, image_size, 1),
                          dtype=np.uint8)
    labels = (rng.random(batch_size) < 0.73).astype(np.float32)
    train = tf.data.Dataset.from_tensors((images, labels)).repeat()
    val = tf.data.Dataset.from_tensors((images, labels)).repeat(
        -(-val_images // batch_size))
    setups['floor'] = (net, train, val, None, [])
  keras.mixed_precision.set_global_policy('float32')

  def one_epoch(name):
    net, train, val, val_steps, callbacks = setups[name]
    start = time.perf_counter()
    net.fit(train, epochs=1, steps_per_epoch=steps, validation_data=val,
            validation_steps=val_steps, class_weight=class_weight, verbose=0,
            shuffle=False, callbacks=callbacks)
    return time.perf_counter() - start

  for name in setups:  # warm-up: tracing, caches
    one_epoch(name)
  seconds = {name: [] for name in setups}
  for _ in range(repeats):
    for name in setups:
      seconds[name].append(one_epoch(name))
  medians = common.medians(seconds)
  trained = steps * batch_size
  result = {
      'mode': 'epoch', 'machine': common.machine_info(), 'image_size': image_size,
      'batch_size': batch_size,
      'policy': policy, 'train_images': trained, 'val_images': val_images,
      'repeats': repeats, 'epoch_seconds': seconds,
      'median_epoch_seconds': medians,
      'median_train_images_per_s': {n: trained / m for n, m in medians.items()},
  }
  result.update(common.epoch_ratios(medians))
  for peer in peers.VARIANTS:
    if peer in medians:
      result[f'speedup_vs_{peer}'] = common.ratios(medians, peer,
                                                   higher_is_better=False)
  return result


def format_table(result):
  """A plain-text table of an epoch result."""
  peer_columns = [p for p in peers.VARIANTS if f'speedup_vs_{p}' in result]
  lines = [f'{"variant":<18}{"median s/epoch":>16}{"train img/s":>13}'
           f'{"x baseline":>12}'
           + ''.join(f'{"x " + p:>20}' for p in peer_columns)
           + f'{"vs floor":>10}  all rounds (s)']
  for name, median in result['median_epoch_seconds'].items():
    speedup = result.get('speedup_vs_baseline', {}).get(name)
    overhead = result.get('overhead_vs_floor', {}).get(name)
    lines.append(
        f'{name:<18}{median:>16.2f}'
        f'{result["median_train_images_per_s"][name]:>13.1f}'
        f'{(f"{speedup:.2f}" if speedup else "-"):>12}'
        + ''.join(f'{result[f"speedup_vs_{p}"][name]:>20.2f}'
                  for p in peer_columns)
        + f'{(f"{overhead:+.1%}" if overhead is not None else "-"):>10}  '
        + common.format_rounds(result['epoch_seconds'][name]))
  return '\n'.join(lines)
