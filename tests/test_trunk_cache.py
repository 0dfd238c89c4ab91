"""Validation from cached frozen-trunk features equals Keras' own."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from xray_tfdata import model as model_lib
from xray_tfdata import trunk_cache

SIZE = 32


def _data(n, seed):
  rng = np.random.default_rng(seed)
  labels = (rng.random(n) < 0.5).astype(np.float32)
  images = rng.integers(0, 120, (n, SIZE, SIZE, 1)).astype(np.uint8)
  images[labels == 1, 8:24, 8:24] += 100  # a bright square: learnable
  return images, labels


def _net(frozen_blocks=4):
  keras.utils.set_random_seed(0)
  net = model_lib.build_model(SIZE, frozen_blocks=frozen_blocks,
                              dense_units=(16, 8), policy='float32',
                              augmentation='fused')
  return model_lib.compile_model(net)


class _KerasValidation(keras.callbacks.Callback):
  """Runs Keras' own validation after CachedValidation, at the same
  weights, and keeps both."""

  def __init__(self, val):
    super().__init__()
    self.val = val
    self.pairs = []

  def on_epoch_end(self, epoch, logs=None):
    own = self.model.evaluate(self.val, verbose=0, return_dict=True)
    self.pairs.append(({k: logs[f'val_{k}'] for k in own}, own))


# 4: the reference's (VGG16's block 5 and the head train); 5: the whole
# backbone frozen, the head alone trains.
@pytest.mark.slow
@pytest.mark.parametrize('frozen_blocks', [4, 5])
def test_cached_validation_equals_keras_validation_to_the_bit(frozen_blocks):
  images, labels = _data(48, 0)
  val_images, val_labels = _data(20, 1)  # 8, 8, 4: a short last batch
  train = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
  val = tf.data.Dataset.from_tensor_slices((val_images, val_labels)).batch(8)
  net = _net(frozen_blocks)
  data, callbacks = trunk_cache.validation_plan(net, val, {'split': 'val'})
  assert data is None and len(callbacks) == 1
  check = _KerasValidation(val)
  net.fit(train, epochs=3, validation_data=data,
          callbacks=callbacks + [check], verbose=0, shuffle=False)
  assert callbacks[0].computed == 1  # once, reused by epochs 2 and 3
  assert set(check.pairs[0][1]) >= {'loss', 'auc', 'tp', 'fn', 'accuracy'}
  for cached, own in check.pairs:
    assert cached == own  # every metric, exactly
  # The head trained: validation moved between epochs (so the equality
  # above compared live weights, not a stale copy).
  assert check.pairs[0][1]['loss'] != check.pairs[-1][1]['loss']
  history = net.history.history
  assert history['val_loss'] == [own['loss'] for _, own in check.pairs]


@pytest.mark.slow  # two evaluations of VGG16
def test_features_are_recomputed_when_the_trunk_changes():
  val_images, val_labels = _data(8, 1)
  val = tf.data.Dataset.from_tensor_slices((val_images, val_labels)).batch(8)
  net = _net()
  _, (callback,) = trunk_cache.validation_plan(net, val, {'split': 'val'})
  callback.set_model(net)
  logs = {}
  callback.on_epoch_end(0, logs)
  conv = net.get_layer('vgg16').get_layer('block1_conv2')
  conv.kernel.assign(conv.kernel * 0.5)  # weights loaded into the trunk
  callback.on_epoch_end(1, logs)
  assert callback.computed == 2
  own = net.evaluate(val, verbose=0, return_dict=True)
  assert logs['val_loss'] == own['loss']


def test_no_cache_without_a_frozen_trunk():
  val = tf.data.Dataset.from_tensor_slices(_data(8, 1)).batch(8)
  net = _net(frozen_blocks=0)
  assert trunk_cache.validation_plan(net, val, {}) == (val, [])


def test_no_cache_when_the_features_do_not_fit(monkeypatch):
  val = tf.data.Dataset.from_tensor_slices(_data(8, 1)).batch(8)
  net = _net()
  # VGG16's block-4 features at 32 px: 2 x 2 x 512 float32 = 8 KB an image.
  monkeypatch.setattr(trunk_cache, 'MAX_FEATURE_BYTES', 8 * 2048 * 4 - 1)
  assert trunk_cache.validation_plan(net, val, {}, num_examples=8) == (
      val, [])
  monkeypatch.setattr(trunk_cache, 'MAX_FEATURE_BYTES', 8 * 2048 * 4)
  assert trunk_cache.validation_plan(net, val, {}, num_examples=8)[0] is None
