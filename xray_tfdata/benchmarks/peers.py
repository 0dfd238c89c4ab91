"""The pipeline a Keras user writes today, as the benchmarks' peer.

`keras.utils.image_dataset_from_directory` on the class folders (decode and
resize the JPEGs to float32 RGB in tf.data), optionally `.cache()` after it
as the tf.data and Keras tutorials write (`cache().shuffle(1000)
.prefetch(AUTOTUNE)`: the decoded float32 RGB batches, twelve times the
bytes of this library's uint8 grey), then the Keras 3 core augmentation
layers RandomRotation, RandomTranslation, RandomShear, RandomZoom and
RandomFlip with the reference's ranges converted to their meanings
(`augment_keras_core`), then `vgg16.preprocess_input`, in the model.
"""

import keras
import tensorflow as tf

from xray_tfdata import augment
from xray_tfdata.augment_keras_core import KerasCoreAugmentation
from xray_tfdata.benchmarks import baseline

# The variants' names in the reports.
KERAS_USER = 'keras_user'
KERAS_USER_CACHE = 'keras_user+cache'
VARIANTS = (KERAS_USER, KERAS_USER_CACHE)


def keras_user_dataset(src_dir, image_size, batch_size, cache=False,
                       training=True, seed=0):
  """Batches of (float32 RGB [B, S, S, 3] in 0..255, float32 labels [B, 1])
  from class folders, as a Keras user reads them.

  Args:
    src_dir: NORMAL/ and PNEUMONIA/ folders of images.
    image_size: S.
    batch_size: B.
    cache: `.cache().shuffle(1000)` after it (shuffle only when training).
    training: shuffle the files (every pass) or not.
    seed: of the shuffle.
  """
  ds = keras.utils.image_dataset_from_directory(
      src_dir, label_mode='binary', class_names=list(baseline.CLASS_NAMES),
      image_size=(image_size, image_size), batch_size=batch_size,
      shuffle=training, seed=seed, verbose=False)
  if cache:
    ds = ds.cache()
    if training:
      ds = ds.shuffle(1000, seed=seed)
  return ds.prefetch(tf.data.AUTOTUNE)


def keras_core_augmentation():
  """The Keras core layers chain with the reference's ranges."""
  return KerasCoreAugmentation(**augment.REFERENCE_AUGMENTATION)


def keras_user_device_preprocess():
  """Augmentation + `vgg16.preprocess_input` as the peer's model runs them;
  a tf.function giving one value per image (see library.device_preprocess)."""
  augmentation = keras_core_augmentation()

  @tf.function
  def run(images):
    x = augmentation(images, training=True)
    return keras.applications.vgg16.preprocess_input(x)[:, 0, 0, 0]

  return run


def keras_user_model(image_size, policy):
  """The reference's VGG16 (blocks 1-4 frozen, its head, weights=None) with the
  Keras core augmentation layers and preprocess_input in front, compiled."""
  return baseline.baseline_model(
      image_size, augmentation=keras_core_augmentation(), policy=policy)
