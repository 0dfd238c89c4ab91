"""The reference notebook's epoch against this library's, on any Keras
backend.

`tools/benchmark --mode=device_epoch`. It needs no TensorFlow, so it runs on
a JAX (or PyTorch) GPU host where TensorFlow cannot be installed; the
TensorFlow modes are the package's other modules. Variants, one epoch (train + validation)
each per round, rounds interleaved after a warm-up:

  baseline     the reference as written: `flow_from_directory` with its
               ImageDataGenerator augmentation and `preprocess_input` on one
               CPU core, the float32 model, validation one image per step.
  library      uint8 grayscale batches from memory, which is what the cached
               tf.data pipeline hands the device from its second epoch on,
               with the fused augmentation and preprocessing in the model,
               the `auto` policy and batched validation.
  keras_core   the same model and batches with the Keras 3 core
               augmentation layers (RandomRotation, RandomTranslation,
               RandomShear, RandomZoom, RandomFlip: five passes) in place of
               the fused one: what a Keras user would pick instead.
  library_<policy>
               the same under float32, mixed_float16 or mixed_bfloat16 (one
               whose policy `auto` already picked is not run twice).
  floor        the library's model on one batch already on the device: no
               input pipeline at all, the compute floor.

`backbone` picks the model of every variant but the baseline (which is the
reference's VGG16, so it runs with vgg16 only) from `checks.BACKBONES`, at
`image_size` (DenseNet-121 at 224 and 512 px on a GPU, for one).

Also measured: ImageDataGenerator's own images/s (decode, augment,
preprocess; no model), the host's ceiling for the baseline; and each
variant's achieved TFLOP/s, from a FLOP count of its model's conv and dense
layers (`common.model_flops`), against the device's dense peak where it is
known (`common.DENSE_PEAK_TFLOPS`).
"""

import statistics
import time

import keras
import numpy as np

from xray_tfdata import checks
from xray_tfdata import model as model_lib
from xray_tfdata import reference
from xray_tfdata.benchmarks import baseline
from xray_tfdata.benchmarks import common
from xray_tfdata.benchmarks.common import BenchmarkError

LIBRARY_POLICIES = ('float32', 'mixed_float16', 'mixed_bfloat16')
VARIANTS = ('baseline', 'library', 'keras_core') + tuple(
    f'library_{p}' for p in LIBRARY_POLICIES) + ('floor',)
BACKBONES = checks.BACKBONES


class _DeviceBatches(keras.utils.PyDataset):
  """The same batch, already on the device, `steps` times: no host work."""

  def __init__(self, images, labels, sample_weight, steps):
    super().__init__()
    self.batch = (keras.ops.convert_to_tensor(images),
                  keras.ops.convert_to_tensor(labels),
                  keras.ops.convert_to_tensor(sample_weight))
    self.steps = steps

  def __len__(self):
    return self.steps

  def __getitem__(self, index):
    return self.batch


def default_frozen_blocks(backbone):
  """The reference's frozen stages for vgg16; none for the others, which
  are fine-tuned whole (CheXNet's DenseNet-121) or trained from scratch."""
  return reference.FROZEN_BLOCKS if backbone == 'vgg16' else 0


def _library_model(image_size, policy, backbone='vgg16', augmentation='fused',
                   frozen_blocks=None):
  if frozen_blocks is None:
    frozen_blocks = default_frozen_blocks(backbone)
  net = model_lib.build_model(image_size=image_size, weights=None,
                              augmentation=augmentation, policy=policy,
                              backbone=backbone, frozen_blocks=frozen_blocks)
  keras.mixed_precision.set_global_policy('float32')
  return model_lib.compile_model(net)


def default_variants(backbone):
  """VARIANTS, less the baseline for a backbone other than the reference's."""
  return tuple(v for v in VARIANTS if backbone == 'vgg16' or v != 'baseline')


def _plan(variants, backbone='vgg16'):
  """name -> policy for the variants to run; a library_<policy> that the
  `auto` library already is gets dropped (returned as the second value)."""
  unknown = set(variants) - set(VARIANTS)
  if unknown:
    raise BenchmarkError(f'unknown variants {sorted(unknown)}; choose from '
                         f'{", ".join(VARIANTS)}')
  if backbone not in BACKBONES:
    raise BenchmarkError(f'unknown backbone {backbone!r}; choose from '
                         f'{", ".join(BACKBONES)}')
  if 'baseline' in variants and backbone != 'vgg16':
    raise BenchmarkError(
        f'the baseline is the reference\'s VGG16; with --backbone={backbone} '
        'leave it out of --variants (the keras_core variant is the peer)')
  auto = model_lib.select_policy('auto')
  plan, same_as_library = {}, None
  for name in variants:
    if name == 'baseline':
      plan[name] = 'float32'
    elif name in ('library', 'keras_core', 'floor'):
      plan[name] = auto
    else:
      policy = name[len('library_'):]
      if 'library' in variants and policy == auto:
        same_as_library = name
        continue
      plan[name] = policy
  return plan, same_as_library


def benchmark_device_epoch(src_dir, image_size=reference.IMAGE_SIZE,
                           batch_size=reference.BATCH_SIZE,
                           train_images=reference.TRAIN_IMAGES,
                           val_images=reference.VAL_IMAGES, repeats=2,
                           variants=None, idg_batches=10, warmup_steps=2,
                           log=print, backbone='vgg16', frozen_blocks=None):
  """Seconds per epoch (train + validation) of each variant, side by side.

  Every variant trains the same model (by default the reference's: VGG16, blocks
  1-4 frozen, its head; weights=None: the same compute as with ImageNet
  weights) on `train_images // batch_size` full batches with the reference's
  class weights and validates on `val_images`.

  Args:
    src_dir: NORMAL/ and PNEUMONIA/ folders of JPEGs (the baseline reads
      them; the library variants decode train_images + val_images of them
      into memory first, untimed).
    image_size, batch_size: the reference's by default.
    train_images, val_images: per epoch; the reference's split sizes by
      default.
    repeats: rounds after the warm-up; each round runs every variant once.
    variants: names from VARIANTS; None: `default_variants(backbone)`.
    idg_batches: batches timed per round for ImageDataGenerator alone.
    warmup_steps: training steps of each variant's warm-up fit (which
      compiles; the library's also validates fully, compiling both
      validation batch shapes).
    log: called with a progress line after each epoch; None for silence.
    backbone: the model of every variant but the baseline, from BACKBONES.
    frozen_blocks: its stages frozen; None: `default_frozen_blocks`.

  Returns:
    A JSON-ready dict: machine, sizes, policies, per-variant epoch seconds
    (all rounds and medians), epoch images/s, speedup against the baseline,
    overhead against the floor, ImageDataGenerator's own images/s, each
    model's FLOPs per image, achieved TFLOP/s and, where the device's peak
    is known, the share of it.

  Raises:
    BenchmarkError: unknown variants or backbone, the baseline with another
      backbone, or no usable images.
  """
  if variants is None:
    variants = default_variants(backbone)
  if frozen_blocks is None:
    frozen_blocks = default_frozen_blocks(backbone)
  plan, same_as_library = _plan(variants, backbone)
  log = log or (lambda line: None)
  steps = max(1, train_images // batch_size)
  trained = steps * batch_size
  start = time.perf_counter()
  images, labels = baseline.load_images(src_dir, image_size,
                                        trained + val_images)
  log(f'decoded {len(images)} images into memory in '
      f'{time.perf_counter() - start:.1f} s')
  x_train, y_train = images[:trained], labels[:trained]
  x_val, y_val = images[trained:], labels[trained:]
  class_weight = baseline.balanced_class_weights(y_train)

  def library_fit(net, **kwargs):
    net.fit(x_train, y_train, batch_size=batch_size, epochs=1,
            validation_data=(x_val, y_val), class_weight=class_weight,
            shuffle=True, verbose=0, **kwargs)

  setups = {}  # name -> (epoch function, warm-up function)
  nets = {}
  library_net = None
  for name, policy in plan.items():
    if name == 'baseline':
      net = baseline.baseline_model(image_size)
      train = baseline.reference_flow(src_dir, image_size, batch_size)
      # The reference validated one image per step, without augmentation.
      val = baseline.reference_flow(src_dir, image_size, 1,
                                    augmentation=False, shuffle=False)
      setups[name] = (
          lambda net=net, train=train, val=val, n=steps, v=val_images:
          net.fit(train, epochs=1, steps_per_epoch=n, validation_data=val,
                  validation_steps=v, class_weight=class_weight, verbose=0),
          lambda net=net, train=train, val=val: net.fit(
              train, epochs=1, steps_per_epoch=warmup_steps,
              validation_data=val, validation_steps=warmup_steps,
              class_weight=class_weight, verbose=0))
    elif name == 'floor':
      # The library's own model where there is one: same compute, and its
      # compiled steps are reused (the batches have the same shapes).
      net = library_net or _library_model(image_size, policy, backbone,
                                          frozen_blocks=frozen_blocks)
      weights = np.array([class_weight[int(y)] for y in y_train[:batch_size]],
                         np.float32)
      train = _DeviceBatches(x_train[:batch_size], y_train[:batch_size],
                             weights, steps)
      val = _DeviceBatches(x_train[:batch_size], y_train[:batch_size],
                           np.ones(batch_size, np.float32),
                           -(-val_images // batch_size))
      setups[name] = (
          lambda net=net, train=train, val=val: net.fit(
              train, epochs=1, validation_data=val, verbose=0),
          lambda net=net, train=train, val=val: net.fit(
              train, epochs=1, steps_per_epoch=warmup_steps,
              validation_data=val, verbose=0))
    else:
      net = _library_model(
          image_size, policy, backbone,
          'keras_core' if name == 'keras_core' else 'fused', frozen_blocks)
      if name == 'library':
        library_net = net
      setups[name] = (
          lambda net=net: library_fit(net),
          lambda net=net: library_fit(net, steps_per_epoch=warmup_steps))
    nets[name] = net
  keras.mixed_precision.set_global_policy('float32')

  warmup = {}
  for name, (_, warm) in setups.items():
    warmup[name] = common.timed(warm)
    log(f'warm-up {name}: {warmup[name]:.1f} s')
  idg = iter(baseline.reference_flow(src_dir, image_size, batch_size))
  idg_rates = []
  seconds = {name: [] for name in setups}
  for round_index in range(repeats):
    for name, (epoch, _) in setups.items():
      seconds[name].append(common.timed(epoch))
      log(f'round {round_index + 1} {name}: {seconds[name][-1]:.2f} s')
    idg_rates.append(idg_batches * batch_size / common.timed(
        lambda: [next(idg) for _ in range(idg_batches)]))
  medians = common.medians(seconds)
  machine = common.machine_info()
  flops = {name: common.model_flops(net) for name, net in nets.items()}
  peak_device, peak_row = common.dense_peak(machine['devices'])
  achieved, share = {}, {}
  for name, median in medians.items():
    epoch_flops = (trained * flops[name]['train']
                   + val_images * flops[name]['forward'])
    achieved[name] = epoch_flops / median / 1e12
    peak = common.peak_for_policy(peak_row, plan[name])
    share[name] = achieved[name] / peak if peak else None
  result = {
      'mode': 'device_epoch', 'machine': machine, 'backbone': backbone,
      'frozen_blocks': frozen_blocks,
      'image_size': image_size, 'batch_size': batch_size,
      'train_images': trained, 'val_images': val_images, 'repeats': repeats,
      'policies': plan, 'same_as_library': same_as_library,
      'warmup_seconds': warmup, 'epoch_seconds': seconds,
      'median_epoch_seconds': medians,
      'median_train_images_per_s': {n: trained / m for n, m in medians.items()},
      'idg_images_per_s': idg_rates,
      'median_idg_images_per_s': statistics.median(idg_rates),
      'flops_per_image': flops, 'achieved_tflops': achieved,
      'peak_device': peak_device, 'dense_peak_tflops': peak_row,
      'share_of_peak': share,
  }
  result.update(common.epoch_ratios(medians))
  return result


def format_table(result):
  """A plain-text table of a device_epoch result."""
  machine = result['machine']
  lines = [f'backend {machine["backend"]} on {", ".join(machine["devices"])}; '
           f'{result.get("backbone", "vgg16")} ({result.get("frozen_blocks")} '
           f'stages frozen), {result["train_images"]} train + '
           f'{result["val_images"]} val images at {result["image_size"]} px, '
           f'batch {result["batch_size"]}',
           f'{"variant":<24}{"policy":<16}{"median s/epoch":>15}'
           f'{"img/s":>9}{"x baseline":>12}{"vs floor":>10}{"TFLOP/s":>9}'
           f'{"of peak":>9}  all rounds (s)']
  for name, median in result['median_epoch_seconds'].items():
    speedup = result.get('speedup_vs_baseline', {}).get(name)
    overhead = result.get('overhead_vs_floor', {}).get(name)
    share = result.get('share_of_peak', {}).get(name)
    lines.append(
        f'{name:<24}{result["policies"][name]:<16}{median:>15.2f}'
        f'{result["median_train_images_per_s"][name]:>9.1f}'
        f'{(f"{speedup:.2f}" if speedup else "-"):>12}'
        f'{(f"{overhead:+.1%}" if overhead is not None else "-"):>10}'
        f'{result["achieved_tflops"][name]:>9.3f}'
        f'{(f"{share:.1%}" if share is not None else "-"):>9}  '
        + common.format_rounds(result['epoch_seconds'][name], 2))
  if result.get('same_as_library'):
    lines.append(f'({result["same_as_library"]} is the library variant: '
                 '`auto` picked that policy)')
  flops = result['flops_per_image']
  any_name = next(iter(flops))
  lines.append(f'model FLOPs per image (conv + dense): '
               f'{flops[any_name]["forward"] / 1e9:.2f} G forward, '
               f'{flops[any_name]["train"] / 1e9:.2f} G training step')
  if result.get('peak_device'):
    lines.append(f'dense peak of the {result["peak_device"]} (TFLOP/s): '
                 + ', '.join(f'{k} {v}' for k, v in
                             result['dense_peak_tflops'].items()))
  else:
    lines.append('dense peak: not known for this device')
  lines.append('ImageDataGenerator alone (decode, augment, preprocess; no '
               f'model): {result["median_idg_images_per_s"]:.1f} img/s')
  return '\n'.join(lines)
