"""Validation through the frozen trunk, computed once and reused.

With the backbone's first blocks frozen (the reference's blocks 1-4) and
validation images never augmented, the frozen trunk maps each validation
image to the same features every epoch: those features are computed on the
first epoch and every later validation runs only the trainable rest (VGG16's
block 5 and the head, about a fifth of its forward work).

The cache replaces Keras' own validation: `validation_plan` hands fit no
validation_data and a `CachedValidation` callback, first in the list, which
evaluates the head on the cached features at the end of each epoch and puts
the same `val_*` numbers into the epoch's logs before any other callback
(checkpoint, early stopping, history, TensorBoard) reads them. Exact: the
same batches go through the same layers (the trunk's and the head's are the
model's own, shared), so in float32 the metrics equal Keras' validation to
the last bit (tests/test_trunk_cache.py).

Keyed like the disk cache (`cache.cache_key`): the dataset's key (see
`validation_key`) and a digest of the trunk's weights; a key that changes
(weights loaded into the trunk, another dataset) recomputes the features.
Held in memory, so only a split whose features fit `MAX_FEATURE_BYTES`.
"""

import hashlib

import keras
import numpy as np
import tensorflow as tf

# Largest feature cache held in memory: VGG16's block-4 features at 224 px
# take 401 KB an image in float32, so the reference's 550 validation images
# need 221 MB.
MAX_FEATURE_BYTES = 2 * 1024**3
# Backbones that are a chain of layers (each feeding the next), so that the
# trunk and the head are the layers before and after the cut. DenseNet's and
# ResNet's branches would need their graph cut instead: not cached.
CHAIN_BACKBONES = ('vgg16', 'mini_vgg')


def validation_key(builder, split='val', label_options=None):
  """What the validation split's cache is keyed on, as the disk cache keys
  a split (`cache.cache_key`): the dataset's fingerprint, the split and
  what shapes its targets.

  The one place the dataset's identity is taken: a content fingerprint of
  the records (DatasetInfo) goes here when it exists.
  """
  return {'fingerprint': builder.info.fingerprint(), 'split': split,
          'labels': {k: list(v) if isinstance(v, (tuple, list)) else v
                     for k, v in sorted((label_options or {}).items())}}


def split_model(net):
  """(trunk, head) of a model whose backbone starts with frozen layers.

  The trunk maps the model's input to the output of the backbone's last
  leading frozen layer; the head maps that to the model's output. Both
  share the model's layers (and so its weights).

  Args:
    net: a model as `model.build_model` makes it: a chain of layers with
      one nested backbone model, one of CHAIN_BACKBONES.

  Returns:
    (trunk, head) keras.Models, or None when the model has no such trunk:
    no nested chain backbone, its first layer trainable, or a trainable
    layer before it.
  """
  nested = [i for i, layer in enumerate(net.layers)
            if isinstance(layer, keras.Model)]
  if len(nested) != 1 or net.layers[nested[0]].name not in CHAIN_BACKBONES:
    return None
  index = nested[0]
  base = net.layers[index]
  frozen = 0
  for layer in base.layers[1:]:
    if layer.trainable:
      break
    frozen += 1
  if frozen == 0:
    return None
  prefix = net.layers[1:index]
  if any(layer.trainable_weights for layer in prefix):
    return None
  # Rebuilt by calling the layers again (each call a new node of the same
  # layer, its weights shared): a layer's `.output` is ambiguous once it
  # has been called more than once.
  x = net.input
  for layer in prefix + base.layers[1:frozen + 1]:
    x = layer(x)
  trunk = keras.Model(net.input, x, name='frozen_trunk')
  features = keras.Input(tuple(x.shape[1:]), dtype=x.dtype,
                         name='trunk_features')
  y = features
  for layer in base.layers[frozen + 1:] + net.layers[index + 1:]:
    y = layer(y)
  head = keras.Model(features, y, name='trainable_head')
  return trunk, head


def weights_digest(trunk):
  """SHA-256 of the trunk's weights, in order."""
  digest = hashlib.sha256()
  for weight in trunk.weights:
    digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
                  .tobytes())
  return digest.hexdigest()


class CachedValidation(keras.callbacks.Callback):
  """Keras' validation at each epoch's end, from cached trunk features.

  Put it first in fit's callbacks, with validation_data=None: it adds
  'val_<metric>' for each of the model's metrics to the epoch's logs.
  """

  def __init__(self, trunk, head, val, dataset_key):
    super().__init__()
    self.trunk, self.head, self.val = trunk, head, val
    self.dataset_key = dataset_key
    self.key = None
    self.features = None
    self.computed = 0  # how many times the features were computed

  def _feature_dataset(self):
    images = self.val.map(lambda x, *rest: x)
    features = self.trunk.predict(images, verbose=0)
    targets, sizes = [], []
    for element in self.val.as_numpy_iterator():
      targets.append(element[1:])
      sizes.append(len(element[1]))
    if any(size != sizes[0] for size in sizes[:-1]) or sizes[-1] > sizes[0]:
      raise ValueError(f'validation batches of uneven sizes {sizes}')
    rest = tuple(np.concatenate([t[i] for t in targets])
                 for i in range(len(targets[0])))
    self.computed += 1
    return tf.data.Dataset.from_tensor_slices((features,) + rest).batch(
        sizes[0])

  def on_epoch_end(self, epoch, logs=None):
    key = (repr(self.dataset_key), weights_digest(self.trunk))
    if key != self.key:
      self.features, self.key = self._feature_dataset(), key
    results = self.head.evaluate(self.features, verbose=0, return_dict=True)
    if logs is not None:
      logs.update({f'val_{name}': value for name, value in results.items()})


def validation_plan(net, val, dataset_key, num_examples=None):
  """fit's validation_data and the callbacks to put first.

  Args:
    net: the compiled model.
    val: the validation dataset (not augmented, one deterministic pass).
    dataset_key: `validation_key(...)` of val.
    num_examples: validation images, to check the cache fits in memory;
      None: taken from val's cardinality and batch size when known.

  Returns:
    (validation_data, callbacks): (None, [CachedValidation]) where the
    model has a frozen trunk, one replica, and the features fit
    MAX_FEATURE_BYTES; otherwise (val, []), Keras' own validation.
  """
  strategy = getattr(net, 'distribute_strategy', None)
  if strategy is not None and strategy.num_replicas_in_sync != 1:
    return val, []
  parts = split_model(net)
  if parts is None:
    return val, []
  trunk, head = parts
  if num_examples is not None:
    itemsize = 2 if trunk.output.dtype in ('bfloat16', 'float16') else 4
    size = num_examples * int(np.prod(trunk.output.shape[1:])) * itemsize
    if size > MAX_FEATURE_BYTES:
      return val, []
  head.compile_from_config(net.get_compile_config())
  return None, [CachedValidation(trunk, head, val, dataset_key)]
