"""This library's side as the TensorFlow benchmarks run it: the synthetic
dataset converted once, the device-side augmentation and preprocessing, the
reference model."""

import os

import keras
import numpy as np
import tensorflow as tf

from xray_tfdata import augment
from xray_tfdata import demo
from xray_tfdata import model as model_lib
from xray_tfdata.benchmarks import baseline


def device_preprocess(kind):
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


def sync(batch):
  # Eager ops may still be running; converting to numpy waits for the value.
  return np.asarray(batch)


def reference_model(image_size, augmentation, policy, fold_gray=False):
  keras.mixed_precision.set_global_policy(policy)
  net = model_lib.build_model(image_size=image_size, weights=None,
                              augmentation=augmentation,
                              fold_gray_input=fold_gray)
  model_lib.compile_model(net)
  return net


def prepare_data(work_dir, num_images, image_size, seed=0):
  """Creates (once) a synthetic pool of realistic-size JPEGs and its
  TFRecords re-split with the reference's proportions; returns (src_dir,
  data_dir).

  The baseline reads the pool with flow_from_directory (train and
  validation draw from the same images; only speed is measured here).
  """
  src_dir = baseline.prepare_jpegs(work_dir, num_images, seed=seed)
  data_dir = os.path.join(work_dir, f'tfrecords_{image_size}')
  demo.convert_pool(src_dir, data_dir, num_images, image_size, seed=seed)
  return src_dir, data_dir
