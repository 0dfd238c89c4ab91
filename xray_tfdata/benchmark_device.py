"""The seed's epoch against this library's, on any Keras backend.

`tools/benchmark --mode=device_epoch`. It needs no TensorFlow, so it runs on
a JAX (or PyTorch) GPU host where TensorFlow cannot be installed; the
TensorFlow modes are in `benchmark`. Variants, one epoch (train + validation)
each per round, rounds interleaved after a warm-up:

  baseline     the seed as written: `flow_from_directory` with the seed's
               ImageDataGenerator augmentation and `preprocess_input` on one
               CPU core, the float32 model, validation one image per step.
  library      uint8 grayscale batches from memory, which is what the cached
               tf.data pipeline hands the device from its second epoch on,
               with the fused augmentation and preprocessing in the model,
               the `auto` policy and batched validation.
  library_<policy>
               the same under float32, mixed_float16 or mixed_bfloat16 (one
               whose policy `auto` already picked is not run twice).
  floor        the library's model on one batch already on the device: no
               input pipeline at all, the compute floor.

Also measured: ImageDataGenerator's own images/s (decode, augment,
preprocess; no model), the host's ceiling for the baseline.
"""

import datetime
import io
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time

import keras
from keras.src.legacy.preprocessing.image import ImageDataGenerator
import numpy as np
from PIL import Image

from xray_tfdata import augment
from xray_tfdata import errors
from xray_tfdata import imaging
from xray_tfdata import model as model_lib

REFERENCE_BATCH_SIZE = 62
# The seed's re-split: train 1,283 + 3,473, val 150 + 400.
REFERENCE_TRAIN_IMAGES = 4756
REFERENCE_VAL_IMAGES = 550
LIBRARY_POLICIES = ('float32', 'mixed_float16', 'mixed_bfloat16')
VARIANTS = ('baseline', 'library') + tuple(
    f'library_{p}' for p in LIBRARY_POLICIES) + ('floor',)
CLASS_NAMES = ('NORMAL', 'PNEUMONIA')

# Environment variables that change the speed, recorded with every result.
_RECORDED_ENV = ('KERAS_BACKEND', 'XLA_FLAGS', 'XLA_PYTHON_CLIENT_PREALLOCATE',
                 'XLA_PYTHON_CLIENT_MEM_FRACTION', 'JAX_PLATFORMS',
                 'CUDA_VISIBLE_DEVICES', 'TF_CPP_MIN_LOG_LEVEL',
                 'TF_CPU_ALLOCATOR_USE_BFC', 'TF_ENABLE_ONEDNN_OPTS',
                 'TF_NUM_INTRAOP_THREADS', 'TF_NUM_INTEROP_THREADS')
_CPU_FLAGS_OF_NOTE = ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16')


class BenchmarkError(errors.XrayError):
  """The benchmark's inputs are unusable (no images, bad variant names)."""


def devices():
  """Names of the active backend's devices, e.g. ['NVIDIA H200']."""
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


def reference_image_data_generator(augmentation=True):
  """The seed's ImageDataGenerator (augmentation off: its validation one).

  Keras 3's own class (numpy and scipy; no TensorFlow), the one
  `tf.keras.preprocessing.image.ImageDataGenerator` is under TensorFlow.
  """
  kwargs = dict(augment.REFERENCE_GENERATOR_KWARGS) if augmentation else {}
  return ImageDataGenerator(
      preprocessing_function=keras.applications.vgg16.preprocess_input,
      **kwargs)


def reference_flow(directory, image_size, batch_size, augmentation=True,
              shuffle=True, seed=0):
  """The seed's `flow_from_directory` iterator over class folders."""
  return reference_image_data_generator(augmentation).flow_from_directory(
      directory, target_size=(image_size, image_size),
      batch_size=batch_size, class_mode='binary', shuffle=shuffle, seed=seed)


def baseline_model(image_size):
  """The seed's model as it was written: float32, 3-channel float input
  already preprocessed by ImageDataGenerator; compiled as the seed's."""
  keras.mixed_precision.set_global_policy('float32')
  base = keras.applications.VGG16(include_top=False, weights=None,
                                  input_shape=(image_size, image_size, 3))
  for layer in base.layers[:15]:
    layer.trainable = False
  x = keras.layers.Flatten()(base.output)
  x = keras.layers.Dense(512, activation='relu')(x)
  x = keras.layers.Dropout(0.4)(x)
  x = keras.layers.Dense(64, activation='relu')(x)
  x = keras.layers.Dropout(0.4)(x)
  out = keras.layers.Dense(1, activation='sigmoid')(x)
  net = keras.Model(base.input, out)
  model_lib.compile_model(net)
  return net


def prepare_jpegs(work_dir, num_images, seed=0):
  """Creates (once) a pool of synthetic Kermany-like JPEGs of realistic sizes
  in work_dir/jpeg/NORMAL|PNEUMONIA and returns that folder.

  Raises:
    synthetic.SyntheticError: num_images too small, or the folder is a file.
  """
  from xray_tfdata import synthetic  # pylint: disable=g-import-not-at-top

  src_dir = os.path.join(work_dir, 'jpeg')
  if not os.path.exists(src_dir) or not os.listdir(src_dir):
    synthetic.make_synthetic_kermany(src_dir, num_images=num_images, seed=seed,
                                     layout='pool', progress=True)
  return src_dir


def _decode(task):
  # The converter's own decode (gray, resized, PNG), read back: the pixels
  # the TFRecords would hold.
  result = imaging.decode_and_resize(task)
  if isinstance(result, str):
    return None
  return np.asarray(Image.open(io.BytesIO(result[0])))


def load_images(src_dir, image_size, num_images, num_workers=None, seed=0):
  """Decodes num_images of the class folders into memory, as stored.

  Args:
    src_dir: folder with NORMAL/ and PNEUMONIA/ image folders.
    image_size: stored height and width.
    num_images: how many to load, drawn at random (with repeats if the
      folders hold fewer).
    num_workers: decoding processes; default all cores.
    seed: of the draw.

  Returns:
    (uint8 images [n, size, size, 1], float32 labels [n]), PNEUMONIA = 1.

  Raises:
    BenchmarkError: no decodable images in src_dir.
  """
  files = []
  for label, name in enumerate(CLASS_NAMES):
    folder = os.path.join(src_dir, name)
    if os.path.isdir(folder):
      files += [(os.path.join(folder, f), label)
                for f in sorted(os.listdir(folder))]
  if not files:
    raise BenchmarkError(f'{src_dir} has no NORMAL/ or PNEUMONIA/ images')
  rng = np.random.default_rng(seed)
  picks = rng.choice(len(files), num_images, replace=num_images > len(files))
  unique = sorted(set(picks.tolist()))
  tasks = [(files[i][0], (image_size, image_size)) for i in unique]
  workers = num_workers or os.cpu_count() or 1
  if workers > 1 and len(tasks) >= 64:
    # spawn: the caller may hold threads (a backend) that a fork would copy.
    with multiprocessing.get_context('spawn').Pool(workers) as pool:
      decoded = pool.map(_decode, tasks, chunksize=16)
  else:
    decoded = [_decode(task) for task in tasks]
  pixels = {i: d for i, d in zip(unique, decoded) if d is not None}
  if not pixels:
    raise BenchmarkError(f'no image in {src_dir} could be decoded')
  picks = [i for i in picks.tolist() if i in pixels]
  images = np.stack([pixels[i] for i in picks])[..., None]
  labels = np.array([files[i][1] for i in picks], np.float32)
  return images, labels


def balanced_class_weights(labels):
  """The seed's 'balanced' class weights, n / (2 n_c), from 0/1 labels."""
  counts = np.bincount(labels.astype(np.int64), minlength=2)
  if not counts.all():
    raise BenchmarkError(f'both classes are needed, got counts {counts}')
  return {c: len(labels) / (2 * int(n)) for c, n in enumerate(counts)}


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


def _library_model(image_size, policy):
  net = model_lib.build_model(image_size=image_size, weights=None,
                              augmentation='fused', policy=policy)
  keras.mixed_precision.set_global_policy('float32')
  return model_lib.compile_model(net)


def _plan(variants):
  """name -> policy for the variants to run; a library_<policy> that the
  `auto` library already is gets dropped (returned as the second value)."""
  unknown = set(variants) - set(VARIANTS)
  if unknown:
    raise BenchmarkError(f'unknown variants {sorted(unknown)}; choose from '
                         f'{", ".join(VARIANTS)}')
  auto = model_lib.select_policy('auto')
  plan, same_as_library = {}, None
  for name in variants:
    if name == 'baseline':
      plan[name] = 'float32'
    elif name in ('library', 'floor'):
      plan[name] = auto
    else:
      policy = name[len('library_'):]
      if 'library' in variants and policy == auto:
        same_as_library = name
        continue
      plan[name] = policy
  return plan, same_as_library


def benchmark_device_epoch(src_dir, image_size=224,
                           batch_size=REFERENCE_BATCH_SIZE,
                           train_images=REFERENCE_TRAIN_IMAGES,
                           val_images=REFERENCE_VAL_IMAGES, repeats=2,
                           variants=VARIANTS, idg_batches=10, warmup_steps=2,
                           log=print):
  """Seconds per epoch (train + validation) of each variant, side by side.

  Every variant trains the same VGG16 (blocks 1-4 frozen, the seed's head,
  weights=None: the same compute as with ImageNet weights) on
  `train_images // batch_size` full batches with the seed's class weights and
  validates on `val_images`.

  Args:
    src_dir: NORMAL/ and PNEUMONIA/ folders of JPEGs (the baseline reads
      them; the library variants decode train_images + val_images of them
      into memory first, untimed).
    image_size, batch_size: the seed's 224 and 62 by default.
    train_images, val_images: per epoch; the seed's split sizes by default.
    repeats: rounds after the warm-up; each round runs every variant once.
    variants: names from VARIANTS.
    idg_batches: batches timed per round for ImageDataGenerator alone.
    warmup_steps: training steps of each variant's warm-up fit (which
      compiles; the library's also validates fully, compiling both
      validation batch shapes).
    log: called with a progress line after each epoch; None for silence.

  Returns:
    A JSON-ready dict: machine, sizes, policies, per-variant epoch seconds
    (all rounds and medians), epoch images/s, speedup against the baseline,
    overhead against the floor, ImageDataGenerator's own images/s.

  Raises:
    BenchmarkError: unknown variants, or no usable images.
  """
  plan, same_as_library = _plan(variants)
  log = log or (lambda line: None)
  steps = max(1, train_images // batch_size)
  trained = steps * batch_size
  start = time.perf_counter()
  images, labels = load_images(src_dir, image_size, trained + val_images)
  log(f'decoded {len(images)} images into memory in '
      f'{time.perf_counter() - start:.1f} s')
  x_train, y_train = images[:trained], labels[:trained]
  x_val, y_val = images[trained:], labels[trained:]
  class_weight = balanced_class_weights(y_train)

  def library_fit(net, **kwargs):
    net.fit(x_train, y_train, batch_size=batch_size, epochs=1,
            validation_data=(x_val, y_val), class_weight=class_weight,
            shuffle=True, verbose=0, **kwargs)

  setups = {}  # name -> (epoch function, warm-up function)
  library_net = None
  for name, policy in plan.items():
    if name == 'baseline':
      net = baseline_model(image_size)
      train = reference_flow(src_dir, image_size, batch_size)
      # The seed validated one image per step, without augmentation.
      val = reference_flow(src_dir, image_size, 1, augmentation=False,
                      shuffle=False)
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
      net = library_net or _library_model(image_size, policy)
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
      net = _library_model(image_size, policy)
      if name == 'library':
        library_net = net
      setups[name] = (
          lambda net=net: library_fit(net),
          lambda net=net: library_fit(net, steps_per_epoch=warmup_steps))
  keras.mixed_precision.set_global_policy('float32')

  def timed(function):
    begin = time.perf_counter()
    function()
    return time.perf_counter() - begin

  warmup = {}
  for name, (_, warm) in setups.items():
    warmup[name] = timed(warm)
    log(f'warm-up {name}: {warmup[name]:.1f} s')
  idg = iter(reference_flow(src_dir, image_size, batch_size))
  idg_rates = []
  seconds = {name: [] for name in setups}
  for round_index in range(repeats):
    for name, (epoch, _) in setups.items():
      seconds[name].append(timed(epoch))
      log(f'round {round_index + 1} {name}: {seconds[name][-1]:.2f} s')
    idg_rates.append(idg_batches * batch_size / timed(
        lambda: [next(idg) for _ in range(idg_batches)]))
  medians = {n: statistics.median(s) for n, s in seconds.items()}
  result = {
      'mode': 'device_epoch', 'machine': machine_info(),
      'image_size': image_size, 'batch_size': batch_size,
      'train_images': trained, 'val_images': val_images, 'repeats': repeats,
      'policies': plan, 'same_as_library': same_as_library,
      'warmup_seconds': warmup, 'epoch_seconds': seconds,
      'median_epoch_seconds': medians,
      'median_train_images_per_s': {n: trained / m for n, m in medians.items()},
      'idg_images_per_s': idg_rates,
      'median_idg_images_per_s': statistics.median(idg_rates),
  }
  result.update(epoch_ratios(medians))
  return result


def epoch_ratios(medians):
  """speedup_vs_baseline and overhead_vs_floor of median epoch seconds, for
  whichever of the two reference variants was run."""
  ratios = {}
  if 'baseline' in medians:
    ratios['speedup_vs_baseline'] = {
        n: medians['baseline'] / m for n, m in medians.items()}
  if 'floor' in medians:
    ratios['overhead_vs_floor'] = {
        n: m / medians['floor'] - 1 for n, m in medians.items()}
  return ratios


def format_table(result):
  """A plain-text table of a device_epoch result."""
  machine = result['machine']
  lines = [f'backend {machine["backend"]} on {", ".join(machine["devices"])}; '
           f'{result["train_images"]} train + {result["val_images"]} val '
           f'images at {result["image_size"]} px, batch {result["batch_size"]}',
           f'{"variant":<24}{"policy":<16}{"median s/epoch":>15}'
           f'{"img/s":>9}{"x baseline":>12}{"vs floor":>10}  all rounds (s)']
  for name, median in result['median_epoch_seconds'].items():
    speedup = result.get('speedup_vs_baseline', {}).get(name)
    overhead = result.get('overhead_vs_floor', {}).get(name)
    lines.append(
        f'{name:<24}{result["policies"][name]:<16}{median:>15.2f}'
        f'{result["median_train_images_per_s"][name]:>9.1f}'
        f'{(f"{speedup:.2f}" if speedup else "-"):>12}'
        f'{(f"{overhead:+.1%}" if overhead is not None else "-"):>10}  '
        + ', '.join(f'{s:.2f}' for s in result['epoch_seconds'][name]))
  if result.get('same_as_library'):
    lines.append(f'({result["same_as_library"]} is the library variant: '
                 '`auto` picked that policy)')
  lines.append('ImageDataGenerator alone (decode, augment, preprocess; no '
               f'model): {result["median_idg_images_per_s"]:.1f} img/s')
  return '\n'.join(lines)


def write_json(result, path):
  with open(path, 'w') as f:
    json.dump(result, f, indent=2)
