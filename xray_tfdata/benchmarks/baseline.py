"""The baseline, shared by the benchmarks: the reference notebook's
ImageDataGenerator `flow_from_directory` with its augmentation and
`preprocess_input`, its VGG16 as written, and the synthetic Kermany-like
JPEGs it reads
(decoded into memory where a variant feeds batches from memory). Any Keras
backend, no TensorFlow."""

import io
import multiprocessing
import os

import keras
from keras.src.legacy.preprocessing.image import ImageDataGenerator
import numpy as np
from PIL import Image

from xray_tfdata import augment
from xray_tfdata import imaging
from xray_tfdata import model as model_lib
from xray_tfdata import reference
from xray_tfdata.benchmarks.common import BenchmarkError

CLASS_NAMES = ('NORMAL', 'PNEUMONIA')


def reference_image_data_generator(augmentation=True):
  """The reference's ImageDataGenerator (augmentation off: its validation
  one).

  Keras 3's own class (numpy and scipy; no TensorFlow), the one
  `tf.keras.preprocessing.image.ImageDataGenerator` is under TensorFlow.
  """
  kwargs = dict(augment.REFERENCE_GENERATOR_KWARGS) if augmentation else {}
  return ImageDataGenerator(
      preprocessing_function=keras.applications.vgg16.preprocess_input,
      **kwargs)


def reference_flow(directory, image_size, batch_size, augmentation=True,
                   shuffle=True, seed=0):
  """The reference's `flow_from_directory` iterator over class folders."""
  return reference_image_data_generator(augmentation).flow_from_directory(
      directory, target_size=(image_size, image_size),
      batch_size=batch_size, class_mode='binary', shuffle=shuffle, seed=seed)


def baseline_model(image_size, augmentation=None, policy='float32'):
  """The reference's model as it was written: float32, 3-channel float input
  already preprocessed by ImageDataGenerator; compiled as the reference's.

  Args:
    image_size: height and width.
    augmentation: None (the reference's); or a Keras layer run first on float
      RGB images in 0..255, then `vgg16.preprocess_input`: the same model
      as a Keras user puts augmentation layers in front of it.
    policy: the dtype policy it is built under (the reference's float32).
  """
  keras.mixed_precision.set_global_policy(policy)
  shape = (image_size, image_size, 3)
  base = keras.applications.VGG16(include_top=False, weights=None,
                                  input_shape=shape)
  # The notebook's layers[:15]: the input and blocks 1-4
  # (reference.FROZEN_BLOCKS).
  for layer in base.layers[:15]:
    layer.trainable = False
  x = keras.layers.Flatten()(base.output)
  for units in reference.DENSE_UNITS:
    x = keras.layers.Dense(units, activation='relu')(x)
    x = keras.layers.Dropout(reference.DROPOUT)(x)
  out = keras.layers.Dense(1, activation='sigmoid', dtype='float32')(x)
  net = keras.Model(base.input, out)
  if augmentation is not None:
    inputs = keras.Input(shape)
    x = keras.applications.vgg16.preprocess_input(augmentation(inputs))
    net = keras.Model(inputs, net(x))
  keras.mixed_precision.set_global_policy('float32')
  model_lib.compile_model(net)
  return net


def prepare_jpegs(work_dir, num_images, seed=0):
  """Creates (once) a pool of synthetic Kermany-like JPEGs of realistic sizes
  in work_dir/jpeg/NORMAL|PNEUMONIA and returns that folder.

  Raises:
    tree.SyntheticError: num_images too small, or the folder is a file.
  """
  from xray_tfdata.synthetic import kermany  # pylint: disable=g-import-not-at-top

  src_dir = os.path.join(work_dir, 'jpeg')
  if not os.path.exists(src_dir) or not os.listdir(src_dir):
    kermany.make_synthetic_kermany(src_dir, num_images=num_images, seed=seed,
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
  """The reference's 'balanced' class weights, n / (2 n_c), from 0/1 labels."""
  counts = np.bincount(labels.astype(np.int64), minlength=2)
  if not counts.all():
    raise BenchmarkError(f'both classes are needed, got counts {counts}')
  return {c: len(labels) / (2 * int(n)) for c, n in enumerate(counts)}

