"""The model builders: seed parameter counts, policies, weights, one sigmoid
per label (L = 1 or more) on every backbone, compile."""

import os
import socket
import time

import keras
import numpy as np
import pytest

from xray_tfdata import checks
from xray_tfdata import labels
from xray_tfdata import losses
from xray_tfdata import model as model_lib

SIZE = 32  # VGG16's smallest input; 224 only for the parameter counts.


def _images(n=4, size=SIZE, channels=1, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def _count(weights):
  return sum(int(np.prod(w.shape)) for w in weights)


def test_parameter_counts_equal_the_seed():
  net = model_lib.build_model(224)
  assert net.count_params() == 27_593_153
  assert _count(net.trainable_weights) == 19_957_889
  assert _count(net.non_trainable_weights) == 7_635_264
  assert net.input.dtype == 'uint8'
  assert tuple(net.input.shape) == (None, 224, 224, 1)


@pytest.mark.parametrize('frozen_blocks, frozen_layers', [
    (0, 0), (1, 4), (4, 15), (5, 19)])
def test_frozen_blocks_freeze_leading_layers(frozen_blocks, frozen_layers):
  net = model_lib.build_model(SIZE, frozen_blocks=frozen_blocks)
  base = net.get_layer('vgg16')
  trainable = [layer.trainable for layer in base.layers]
  assert trainable == [False] * frozen_layers + [True] * (
      len(trainable) - frozen_layers)
  if frozen_layers:
    assert base.layers[frozen_layers - 1].name.endswith('_pool')


def test_frozen_blocks_out_of_range():
  with pytest.raises(ValueError, match='frozen_blocks'):
    model_lib.build_model(SIZE, frozen_blocks=6)


@pytest.mark.parametrize('channels', [1, 3])
def test_preprocessing_matches_vgg16_preprocess_input(channels):
  net = model_lib.build_model(SIZE, channels_in=channels)
  preprocess = keras.Model(net.input,
                           net.get_layer('vgg16_preprocess').output)
  images = _images(channels=channels)
  rgb = np.repeat(images, 3, axis=-1) if channels == 1 else images
  expected = keras.applications.vgg16.preprocess_input(rgb.astype('float32'))
  # Exactly: the gray path subtracts the means from the one channel.
  np.testing.assert_array_equal(preprocess(images), expected)


def test_preprocessing_in_bfloat16_takes_the_broadcast_path():
  layer = model_lib.VGG16Preprocess(dtype='mixed_bfloat16')
  images = _images(channels=1)
  expected = keras.applications.vgg16.preprocess_input(
      np.repeat(images, 3, axis=-1).astype('float32'))
  out = layer(images)
  assert out.dtype == 'bfloat16' and out.shape == expected.shape
  np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=1.0)


def test_head_and_output():
  net = model_lib.build_model(SIZE, dense_units=(16, 8), dropout=0.25)
  assert net.get_layer('dense_1').units == 16
  assert net.get_layer('dense_2').units == 8
  assert net.get_layer('dropout_1').rate == 0.25
  probs = net.predict(_images(), verbose=0)
  assert probs.shape == (4, 1) and probs.dtype == np.float32
  assert np.all((probs >= 0) & (probs <= 1))


@pytest.mark.parametrize('policy, gpus, flags, expected', [
    ('float32', [(9, 0)], {'amx_bf16'}, 'float32'),
    ('mixed_bfloat16', [], set(), 'mixed_bfloat16'),
    ('mixed_float16', [], set(), 'mixed_float16'),
    ('auto', [(7, 0)], set(), 'mixed_float16'),
    ('auto', [(8, 6), (7, 5)], {'avx512_bf16'}, 'mixed_float16'),
    ('auto', [(6, 1)], {'avx512_bf16'}, 'float32'),  # the GPU trains
    ('auto', [(8, 0), (6, 1)], set(), 'float32'),
    ('auto', [None], set(), 'float32'),  # no compute capability reported
    ('auto', [], {'avx2', 'avx512_bf16'}, 'mixed_bfloat16'),
    ('auto', [], {'amx_bf16'}, 'mixed_bfloat16'),
    ('auto', [], {'avx2', 'fma', 'avx512f'}, 'float32'),
    ('auto', [], set(), 'float32'),
])
def test_select_policy(policy, gpus, flags, expected):
  assert model_lib.select_policy(policy, gpus=gpus, cpu_flags=flags) == expected


def test_select_policy_unknown():
  with pytest.raises(ValueError, match='unknown dtype policy'):
    model_lib.select_policy('float16')


def test_select_policy_on_this_machine_follows_its_flags():
  flags = model_lib.read_cpu_flags()
  gpus = model_lib.gpu_compute_capabilities()
  expected = model_lib.select_policy('auto', gpus=gpus, cpu_flags=flags)
  assert model_lib.select_policy('auto') == expected
  if not gpus and not flags & {'avx512_bf16', 'amx_bf16'}:
    assert expected == 'float32'


def test_read_cpu_flags(tmp_path):
  cpuinfo = tmp_path / 'cpuinfo'
  cpuinfo.write_text('processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n'
                     'processor\t: 1\nflags\t\t: fpu avx2 amx_bf16\n')
  assert model_lib.read_cpu_flags(str(cpuinfo)) == {'fpu', 'avx2', 'amx_bf16'}
  assert model_lib.read_cpu_flags(str(tmp_path / 'absent')) == set()


def test_mixed_bfloat16_keeps_preprocessing_and_output_float32():
  net = model_lib.build_model(SIZE, policy='mixed_bfloat16')
  assert keras.mixed_precision.global_policy().name == 'mixed_bfloat16'
  assert net.get_layer('vgg16').get_layer('block5_conv1').compute_dtype == (
      'bfloat16')
  assert net.get_layer('dense_1').compute_dtype == 'bfloat16'
  for name in ('vgg16_preprocess', 'probability'):
    assert net.get_layer(name).compute_dtype == 'float32'
  assert net.predict(_images(), verbose=0).dtype == np.float32


def test_mixed_float16_gets_one_loss_scale_optimizer():
  net = model_lib.compile_model(
      model_lib.build_model(SIZE, policy='mixed_float16'))
  optimizer = net.optimizer
  assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
  assert isinstance(optimizer.inner_optimizer, keras.optimizers.Adam)
  assert not isinstance(optimizer.inner_optimizer,
                        keras.optimizers.LossScaleOptimizer)


def test_compile_trains_with_the_references_metrics():
  net = model_lib.compile_model(model_lib.build_model(SIZE),
                                learning_rate=3e-4)
  assert isinstance(net.optimizer, keras.optimizers.Adam)
  assert float(net.optimizer.learning_rate) == pytest.approx(3e-4)
  history = net.fit(_images(8), np.array([0, 1] * 4, 'float32'), epochs=1,
                    batch_size=4, verbose=0)
  assert set(history.history) == {
      'loss', 'auc', 'tp', 'fp', 'tn', 'fn', 'accuracy', 'precision',
      'recall'}
  counts = sum(history.history[k][0] for k in ('tp', 'fp', 'tn', 'fn'))
  assert counts == 8
  with pytest.raises(ValueError, match='learning_rate'):
    model_lib.compile_model(net, learning_rate=0)


def test_keras_file_round_trip(tmp_path):
  net = model_lib.build_model(SIZE, dense_units=(8, 4))
  path = str(tmp_path / 'model.keras')
  net.save(path)
  restored = keras.models.load_model(path)
  images = _images()
  np.testing.assert_allclose(restored.predict(images, verbose=0),
                             net.predict(images, verbose=0), atol=1e-6)


def test_augmentation_only_in_training():
  augment = pytest.importorskip('xray_tfdata.augment')
  # Seeded weights: with some draws (they depend on the tests run before)
  # every ReLU of the tiny random head is dead and any input gives 0.5.
  keras.utils.set_random_seed(0)
  layer = augment.make_augmentation('fused', **augment.REFERENCE_AUGMENTATION,
                                    seed=1)
  net = model_lib.build_model(SIZE, augmentation=layer, dropout=0.0,
                              dense_units=(8, 4))
  plain = model_lib.build_model(SIZE, dropout=0.0, dense_units=(8, 4))
  plain.set_weights(net.get_weights())
  images = _images()
  inference = net(images, training=False)
  np.testing.assert_allclose(inference, plain(images, training=False),
                             atol=1e-6)
  assert not np.allclose(net(images, training=True), inference, atol=1e-6)
  by_kind = model_lib.build_model(SIZE, augmentation='fused')
  assert isinstance(by_kind.layers[1], augment.RandomAffine)


@pytest.fixture(name='silent_server')
def fixture_silent_server():
  """A local port that accepts connections and never answers."""
  server = socket.socket()
  server.bind(('127.0.0.1', 0))
  server.listen(4)
  yield f'https://127.0.0.1:{server.getsockname()[1]}/weights.h5'
  server.close()


@pytest.mark.parametrize('probe', ['unresolvable', 'silent'])
def test_imagenet_offline_fails_fast(tmp_path, monkeypatch, silent_server,
                                     probe):
  # An empty Keras home, so a cached file cannot make this pass by accident,
  # and a download URL that cannot answer, so it holds on any network.
  monkeypatch.setenv('KERAS_HOME', str(tmp_path))
  monkeypatch.setattr(model_lib, '_PROBE_URL', {
      'unresolvable': 'https://storage.googleapis.com.invalid/weights.h5',
      'silent': silent_server}[probe])
  cache_path = os.path.join(str(tmp_path), 'models',
                            model_lib.IMAGENET_FILENAME)
  assert model_lib.keras_cache_path() == cache_path
  start = time.monotonic()
  with pytest.raises(model_lib.WeightsError) as error:
    model_lib.build_model(SIZE, weights='imagenet')
  assert time.monotonic() - start < 15
  message = str(error.value)
  assert '\n' not in message
  assert f'at {cache_path}' in message and 'local path' in message
  assert 'is not cached' in message


def test_imagenet_corrupt_cache_file_is_reported(tmp_path, monkeypatch):
  monkeypatch.setenv('KERAS_HOME', str(tmp_path))
  monkeypatch.setattr(model_lib, '_PROBE_URL',
                      'https://storage.googleapis.com.invalid/weights.h5')
  os.makedirs(tmp_path / 'models')
  (tmp_path / 'models' / model_lib.IMAGENET_FILENAME).write_bytes(b'partial')
  with pytest.raises(model_lib.WeightsError, match='is corrupt'):
    model_lib.build_model(SIZE, weights='imagenet')


def _save_legacy_h5(net, path):
  """Weights-only legacy HDF5, the format of Keras' ImageNet file."""
  import h5py  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from keras.src.legacy.saving import legacy_h5_format
  with h5py.File(path, 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, net)


@pytest.mark.parametrize('filename', ['vgg16_notop.h5', 'vgg16.weights.h5'])
def test_local_weights_file(tmp_path, filename):
  keras.utils.set_random_seed(123)
  source = keras.applications.VGG16(include_top=False, weights=None,
                                    input_shape=(SIZE, SIZE, 3))
  path = str(tmp_path / filename)
  if filename.endswith('.weights.h5'):
    source.save_weights(path)
  else:
    _save_legacy_h5(source, path)
  keras.utils.set_random_seed(7)  # different initial weights
  net = model_lib.build_model(SIZE, weights=path)
  for layer in ('block1_conv1', 'block5_conv3'):
    np.testing.assert_array_equal(
        net.get_layer('vgg16').get_layer(layer).kernel,
        source.get_layer(layer).kernel)


# Keras warns about each layer it cannot match before it gives up.
@pytest.mark.filterwarnings('ignore:Skipping nested container')
def test_weights_path_errors(tmp_path):
  missing = str(tmp_path / 'missing.h5')
  with pytest.raises(model_lib.WeightsError, match='missing.h5'):
    model_lib.build_model(SIZE, weights=missing)
  other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
  wrong = str(tmp_path / 'dense.weights.h5')
  other.save_weights(wrong)
  with pytest.raises(model_lib.WeightsError, match='does not fit VGG16'):
    model_lib.build_model(SIZE, weights=wrong)


def test_mini_vgg_backbone_for_the_demo():
  net = model_lib.build_model(image_size=32, backbone='mini_vgg', weights=None,
                          frozen_blocks=0, dense_units=(8,))
  base = net.get_layer('mini_vgg')
  pools = [l for l in base.layers if isinstance(l, keras.layers.MaxPooling2D)]
  assert len(pools) == 4 and base.output.shape[1:] == (2, 2, 128)
  assert net.count_params() < 400_000  # VGG16's conv part alone is 14.7M
  assert net.predict(np.zeros((2, 32, 32, 1), np.uint8), verbose=0).shape == (2, 1)
  with pytest.raises(ValueError, match="mini_vgg has no pretrained"):
    model_lib.build_model(image_size=32, backbone="mini_vgg", weights="imagenet")
  with pytest.raises(ValueError, match='backbone must be one of'):
    model_lib.build_model(image_size=32, backbone="resnet")


def test_compute_capabilities_are_read_from_every_backends_form():
  # JAX reports '9.0', TensorFlow and PyTorch (9, 0); ROCm reports none.
  assert model_lib._parse_capability('9.0') == (9, 0)  # pylint: disable=protected-access
  assert model_lib._parse_capability((8, 6)) == (8, 6)  # pylint: disable=protected-access
  assert model_lib._parse_capability(None) is None  # pylint: disable=protected-access
  assert model_lib._parse_capability('gfx90a') is None  # pylint: disable=protected-access
  assert model_lib.gpu_compute_capabilities('numpy') == []
  # Whatever this host has, each GPU comes back as (major, minor) or None.
  for capability in model_lib.gpu_compute_capabilities():
    assert capability is None or len(capability) == 2


# The reference notebook's head and training settings, written out here:
# VGG16 without its top, blocks 1-4 frozen, Flatten -> Dense(512, relu) ->
# Dropout(0.4) -> Dense(64, relu) -> Dropout(0.4) -> Dense(1, sigmoid), Adam
# at 1e-4, binary cross-entropy.
REFERENCE_HEAD = [('Flatten', {}),
                  ('Dense', {'units': 512, 'activation': 'relu'}),
                  ('Dropout', {'rate': 0.4}),
                  ('Dense', {'units': 64, 'activation': 'relu'}),
                  ('Dropout', {'rate': 0.4}),
                  ('Dense', {'units': 1, 'activation': 'sigmoid'})]
REFERENCE_FROZEN_BLOCKS = (1, 2, 3, 4)
REFERENCE_LEARNING_RATE = 1e-4


def test_defaults_are_the_references_head():
  """build_model() and compile_model() with no arguments but the size give
  the reference's model, layer by layer (issue 24: a default drifting from it
  keeps the parameter counts when only a rate changes)."""
  net = model_lib.compile_model(model_lib.build_model(SIZE))
  names = [layer.name for layer in net.layers]
  head = net.layers[names.index('vgg16') + 1:]
  found = [(type(layer).__name__,
            {key: layer.get_config()[key] for key in expected})
           for layer, (_, expected) in zip(head, REFERENCE_HEAD)]
  assert found == REFERENCE_HEAD
  assert len(head) == len(REFERENCE_HEAD)
  base = net.get_layer('vgg16')
  for layer in base.layers[1:]:  # after the input layer
    block = int(layer.name.split('_')[0][len('block'):])
    assert layer.trainable == (block not in REFERENCE_FROZEN_BLOCKS), layer.name
  assert isinstance(net.optimizer, keras.optimizers.Adam)
  assert float(net.optimizer.learning_rate) == pytest.approx(
      REFERENCE_LEARNING_RATE, rel=1e-6)
  # The one loss, unweighted: Keras' BinaryCrossentropy on one label (the
  # class weights come with the batches; test_training checks both).
  assert isinstance(net.loss, losses.MaskedBinaryCrossentropy)
  assert net.loss.pos_weight is None


# --- The backbones of issue 20 -------------------------------------------

_NEW_BACKBONES = ('densenet121', 'resnet50', 'efficientnetv2s')
# Each backbone's keras.applications module, for its preprocess_input.
_APPLICATION_MODULES = {'densenet121': 'densenet', 'resnet50': 'resnet50',
                        'efficientnetv2s': 'efficientnet_v2'}


def _stage_of(backbone, layer_name, stages):
  """The stage (1..stages) a layer belongs to by its Keras name, 0 for the
  stem before the first, stages + 1 for the top after the last: the rule
  --frozen_blocks is documented to follow, written out independently."""
  import re  # pylint: disable=g-import-not-at-top
  patterns = {
      # conv2_block1_0_bn / pool2_conv (dense block 1 and its transition).
      'densenet121': (r'^(?:conv|pool)(\d)_', -1, ('bn', 'relu')),
      'resnet50': (r'^conv(\d)_', -1, ()),
      'efficientnetv2s': (r'^block(\d)[a-z]_', 0, ('top_',)),
  }
  pattern, offset, top = patterns[backbone]
  match = re.match(pattern, layer_name)
  if match and int(match.group(1)) + offset >= 1:
    return int(match.group(1)) + offset
  if layer_name.startswith(top) if top else False:
    return stages + 1
  return 0


def _batch_norm_statistics(base):
  return {layer.name: [np.array(layer.moving_mean),
                       np.array(layer.moving_variance)]
          for layer in base.layers
          if isinstance(layer, keras.layers.BatchNormalization)}


@pytest.mark.slow
@pytest.mark.parametrize('backbone', _NEW_BACKBONES)
def test_new_backbone_builds_trains_freezes_saves_and_reloads(tmp_path,
                                                              backbone):
  frozen = 2
  net = model_lib.build_model(SIZE, backbone=backbone, frozen_blocks=frozen,
                              policy='float32')
  base = net.layers[2]
  stages = len(model_lib.checks.BACKBONE_STAGES[backbone])

  # Preprocessing: the backbone's own preprocess_input on the gray image
  # replicated to RGB, to the bit.
  images = _images(8)
  rgb = np.repeat(images, 3, axis=-1).astype('float32')
  application = getattr(keras.applications, _APPLICATION_MODULES[backbone])
  preprocessed = keras.Model(
      net.input, net.get_layer(f'{backbone}_preprocess').output)(images)
  np.testing.assert_array_equal(preprocessed,
                                application.preprocess_input(rgb.copy()))
  if backbone == 'efficientnetv2s':  # the model rescales itself
    # By type: Keras numbers layer names per process ('rescaling_1', ...).
    rescaling, = [layer for layer in base.layers
                  if isinstance(layer, keras.layers.Rescaling)]
    np.testing.assert_allclose(rescaling(preprocessed), rgb / 128 - 1,
                               atol=1e-6)

  # Exactly the named stages are frozen, for every --frozen_blocks.
  stage = [_stage_of(backbone, layer.name, stages) for layer in base.layers]
  assert set(stage) == set(range(stages + 2)) - (
      {stages + 1} if backbone == 'resnet50' else set())
  assert [layer.trainable for layer in base.layers] == [
      s > frozen for s in stage]
  for n in range(stages + 1):
    count = model_lib.frozen_layer_count(base, n, backbone)
    assert [i < count for i in range(len(stage))] == [
        (n > 0 and s <= n) or n == stages for s in stage], n

  # Training moves the trained batch norms' statistics, not the frozen ones'.
  before = _batch_norm_statistics(base)
  model_lib.compile_model(net)
  # Eagerly: tracing the train step of these deep graphs takes minutes on
  # 2 cores, running it once a fraction of that; the step is the same.
  net.run_eagerly = True
  history = net.fit(images, np.array([0, 1] * 4, 'float32'), batch_size=8,
                    epochs=1, verbose=0)
  assert np.isfinite(history.history['loss'][0])
  after = _batch_norm_statistics(base)
  moved = set()
  for layer in base.layers:
    if layer.name in before:
      same = all(np.array_equal(a, b) for a, b in zip(before[layer.name],
                                                      after[layer.name]))
      if not layer.trainable:
        assert same, layer.name
      elif not same:
        moved.add(layer.name)
  assert moved

  path = str(tmp_path / 'model.keras')
  net.save(path)
  restored = keras.models.load_model(path)
  # Called eagerly, not predict(), for the same reason as fit above.
  probs = keras.ops.convert_to_numpy(net(images, training=False))
  assert probs.shape == (8, 1) and probs.dtype == np.float32
  np.testing.assert_allclose(restored(images, training=False), probs,
                             atol=1e-6)
  assert isinstance(net.get_layer('avg_pool'),
                    keras.layers.GlobalAveragePooling2D)


@pytest.mark.slow
def test_new_backbone_local_weights_file_under_mixed_precision(tmp_path):
  keras.utils.set_random_seed(123)
  source = keras.applications.ResNet50(include_top=False, weights=None,
                                       input_shape=(SIZE, SIZE, 3))
  path = str(tmp_path / 'resnet50.weights.h5')
  source.save_weights(path)
  keras.utils.set_random_seed(7)  # different initial weights
  net = model_lib.build_model(SIZE, backbone='resnet50', weights=path,
                              policy='mixed_bfloat16', frozen_blocks=0)
  base = net.get_layer('resnet50')
  for layer in ('conv1_conv', 'conv5_block3_3_conv'):
    np.testing.assert_array_equal(base.get_layer(layer).kernel,
                                  source.get_layer(layer).kernel)
  assert base.get_layer('conv5_block3_3_conv').compute_dtype == 'bfloat16'
  for name in ('resnet50_preprocess', 'probability'):
    assert net.get_layer(name).compute_dtype == 'float32'
  assert net.predict(_images(), verbose=0).dtype == np.float32


@pytest.mark.slow
def test_new_backbone_exports_a_serving_model_that_predicts(tmp_path):
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from xray_tfdata import serving  # pylint: disable=g-import-not-at-top
  size = 64  # not the 224 the reference's VGG16 is exported at
  net = model_lib.build_model(size, backbone='resnet50', frozen_blocks=0,
                              policy='float32')
  images = _images(2, size=size)
  serving.export_model(net, str(tmp_path), size)
  blobs = []
  for image in images:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buffer, format='PNG')
    blobs.append(buffer.getvalue())
  served = tf.saved_model.load(str(tmp_path / serving.SERVING_DIR))
  probs = served.serve(tf.constant(blobs))['probability'].numpy()
  np.testing.assert_allclose(probs, net.predict(images, verbose=0),
                             atol=1e-5)


@pytest.mark.parametrize('backbone, size, needle', [
    ('densenet121', 513, 'above 512'),
    ('efficientnetv2s', 1024, 'above 512'),
    ('resnet50', 16, 'below 32'),
    ('densenet121', 31, 'below 32'),
])
def test_image_size_bounds_per_backbone(backbone, size, needle):
  with pytest.raises(model_lib.checks.SettingError, match=needle):
    model_lib.build_model(size, backbone=backbone, frozen_blocks=0)
  for ok in (32, 512):
    model_lib.checks.check_backbone(backbone, 0, None, ok)


@pytest.mark.parametrize('backbone, frozen_blocks', [
    ('densenet121', 5), ('resnet50', 5), ('efficientnetv2s', 7)])
def test_frozen_blocks_beyond_the_backbones_stages(backbone, frozen_blocks):
  with pytest.raises(model_lib.checks.SettingError,
                     match=f'0..{frozen_blocks - 1} for --backbone'):
    model_lib.build_model(SIZE, backbone=backbone,
                          frozen_blocks=frozen_blocks)


def test_frozen_blocks_help_says_what_n_covers_for_each_backbone():
  import dataclasses  # pylint: disable=g-import-not-at-top
  from xray_tfdata import config as config_lib  # pylint: disable=g-import-not-at-top
  help_text = {f.name: f.metadata['help'] for f in dataclasses.fields(
      config_lib.TrainConfig)}['frozen_blocks']
  for covers in ('vgg16 5 (block1..block5)', 'mini_vgg 4 (block1..block4)',
                 'densenet121 4 (conv2..conv5)', 'resnet50 4 (conv2..conv5)',
                 'efficientnetv2s 6 (block1..block6)'):
    assert covers in help_text


def test_frozen_random_weights_warn_in_one_line(monkeypatch, capsys):
  monkeypatch.setattr(model_lib, '_WARNED', set())
  model_lib.build_model(16, backbone='mini_vgg', dense_units=(4,))
  model_lib.build_model(16, backbone='mini_vgg', dense_units=(4,))
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1  # once, not once a build
  assert lines[0].startswith('warning: ')
  assert ('--frozen_blocks=4 freezes 4 of the 4 random stages of mini_vgg'
          in lines[0]) and '--frozen_blocks=0' in lines[0]
  model_lib.build_model(16, backbone='mini_vgg', dense_units=(4,),
                        frozen_blocks=0)
  assert not capsys.readouterr().err
  assert model_lib.checks.random_frozen_warning('vgg16', 4,
                                                'imagenet') is None


@pytest.mark.parametrize('backbone', _NEW_BACKBONES)
def test_new_backbone_imagenet_offline_fails_fast_naming_file_and_place(
    tmp_path, monkeypatch, backbone):
  monkeypatch.setenv('KERAS_HOME', str(tmp_path))
  monkeypatch.setattr(model_lib, '_PROBE_URL',
                      'https://storage.googleapis.com.invalid/weights.h5')
  filename = model_lib.IMAGENET_WEIGHTS[backbone][0]
  cache_path = os.path.join(str(tmp_path), 'models', filename)
  assert model_lib.keras_cache_path(backbone) == cache_path
  start = time.monotonic()
  with pytest.raises(model_lib.WeightsError) as error:
    model_lib.build_model(SIZE, backbone=backbone, weights='imagenet')
  assert time.monotonic() - start < 15
  message = str(error.value)
  assert '\n' not in message and 'is not cached' in message
  assert f'put {filename} (from https://' in message
  assert f'at {cache_path}' in message


def _unfolded_twin(net):
  """The same model with the three-channel first convolution, same weights."""
  twin = model_lib.build_model(SIZE, dense_units=(8, 4))
  twin.set_weights(net.get_weights())
  return twin


def test_folded_first_conv_equals_three_channel_conv():
  keras.mixed_precision.set_global_policy('float32')
  net = model_lib.build_model(SIZE, dense_units=(8, 4), fold_gray_input=True)
  conv = net.get_layer('vgg16').layers[1]
  assert isinstance(conv, model_lib.GrayConv2D)
  assert conv.name == 'block1_conv1' and tuple(conv.kernel.shape) == (
      3, 3, 3, 64)
  # Weights with a spread of signs and a nonzero bias, as ImageNet's.
  rng = np.random.default_rng(1)
  conv.kernel.assign(rng.normal(0, 0.1, (3, 3, 3, 64)).astype('float32'))
  conv.bias.assign(rng.normal(0, 1, 64).astype('float32'))
  images = _images(n=3)
  reference = keras.layers.Conv2D(64, 3, padding='same', activation='relu')
  reference.build((None, SIZE, SIZE, 3))
  reference.set_weights(conv.get_weights())
  # The unfolded path, from Keras' own preprocess_input: border pixels
  # included (zero padding after the means are subtracted).
  expected = np.asarray(reference(keras.applications.vgg16.preprocess_input(
      np.repeat(images, 3, axis=-1).astype('float32'))))
  folded = np.asarray(conv(images.astype('float32')))
  scale = np.abs(expected).max()
  assert scale > 10
  np.testing.assert_allclose(folded, expected, rtol=0, atol=scale * 1e-6)
  # The whole model too, against its unfolded twin.
  np.testing.assert_allclose(net.predict(images, verbose=0),
                             _unfolded_twin(net).predict(images, verbose=0),
                             rtol=0, atol=1e-6)


@pytest.mark.slow  # two models, saved and loaded
def test_folded_model_loads_weights_saved_by_the_unfolded_one(tmp_path):
  """Weights saved by the unfolded model (backup/, best.weights.h5) load
  into the folded one, and its model.keras still loads: the kernel keeps
  its [3, 3, 3, 64] shape and its path in the file."""
  keras.mixed_precision.set_global_policy('float32')
  keras.utils.set_random_seed(3)
  old = model_lib.build_model(SIZE, dense_units=(8, 4))
  old.save_weights(str(tmp_path / 'best.weights.h5'))
  old.save(str(tmp_path / 'model.keras'))
  keras.utils.set_random_seed(4)  # other initial weights
  net = model_lib.build_model(SIZE, dense_units=(8, 4), fold_gray_input=True)
  net.load_weights(str(tmp_path / 'best.weights.h5'))
  images = _images()
  expected = old.predict(images, verbose=0)
  np.testing.assert_allclose(net.predict(images, verbose=0), expected,
                             rtol=0, atol=1e-6)
  restored = keras.models.load_model(str(tmp_path / 'model.keras'))
  np.testing.assert_array_equal(restored.predict(images, verbose=0), expected)
  net.save(str(tmp_path / 'folded.keras'))  # and the folded model's own
  restored = keras.models.load_model(str(tmp_path / 'folded.keras'))
  assert isinstance(restored.get_layer('vgg16').layers[1],
                    model_lib.GrayConv2D)
  np.testing.assert_array_equal(restored.predict(images, verbose=0),
                                net.predict(images, verbose=0))


def test_folded_first_conv_in_bfloat16_is_within_its_rounding():
  net = model_lib.build_model(SIZE, dense_units=(8, 4),
                              policy='mixed_bfloat16', fold_gray_input=True)
  conv = net.get_layer('vgg16').layers[1]
  keras.mixed_precision.set_global_policy('float32')
  reference = keras.layers.Conv2D(64, 3, padding='same', activation='relu')
  reference.build((None, SIZE, SIZE, 3))
  reference.set_weights(conv.get_weights())
  images = _images(n=2)
  expected = np.asarray(reference(keras.applications.vgg16.preprocess_input(
      np.repeat(images, 3, axis=-1).astype('float32'))))
  folded = np.asarray(conv(images.astype('float32')), np.float32)
  # bfloat16 keeps 8 significant bits: about 0.4% of the largest terms.
  np.testing.assert_allclose(folded, expected, rtol=0,
                             atol=np.abs(expected).max() * 2**-6)


# --- One sigmoid per label (L = 1, the reference's P(pneumonia), or L > 1),
# compiled with the masked loss and metrics ---------------------------------

def _check_head(net, num_labels, tmp_path=None):
  """Outputs, head, predictions; with tmp_path also a masked training step
  and a save and reload (the head and the loss are the same on every
  backbone, so the keras.applications ones skip those: minutes here)."""
  assert net.output_shape == (None, num_labels)
  head = net.get_layer('probability')
  assert head.units == num_labels and head.dtype_policy.compute_dtype == (
      'float32')
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 1), np.uint8)
  probs = net.predict(images, verbose=0)
  assert probs.shape == (2, num_labels) and probs.dtype == np.float32
  assert ((0 < probs) & (probs < 1)).all()
  if tmp_path is None:
    return
  model_lib.compile_model(net, pos_weight=[2.0] * num_labels)
  assert isinstance(net.loss, losses.MaskedBinaryCrossentropy)
  targets = np.array([[1, -1, 0][:num_labels]] * 2, np.float32)
  net.train_on_batch(images, targets)
  path = str(tmp_path / 'net.keras')
  net.save(path)
  np.testing.assert_allclose(
      keras.models.load_model(path).predict(images, verbose=0),
      net.predict(images, verbose=0), atol=1e-6)


@pytest.mark.parametrize('num_labels', [1, 3])
def test_mini_vgg_has_one_float32_output_per_label_under_mixed_precision(
    num_labels):
  net = model_lib.build_model(32, backbone='mini_vgg', frozen_blocks=0,
                              dense_units=(8,), policy='mixed_bfloat16',
                              num_labels=num_labels)
  _check_head(net, num_labels)


@pytest.mark.slow  # a training step, a save and a reload
def test_mini_vgg_trains_on_masked_targets_saves_and_reloads(tmp_path):
  net = model_lib.build_model(32, backbone='mini_vgg', frozen_blocks=0,
                              dense_units=(8,), policy='float32',
                              num_labels=3)
  _check_head(net, 3, tmp_path)


def test_one_label_is_the_references_head():
  net = model_lib.build_model(32, backbone='mini_vgg', frozen_blocks=0,
                              dense_units=(8,))
  assert net.output_shape == (None, 1)


@pytest.mark.parametrize('num_labels', [0, 2.0, True])
def test_num_labels_must_be_a_positive_integer(num_labels):
  with pytest.raises(ValueError, match='num_labels'):
    model_lib.build_model(32, backbone='mini_vgg', frozen_blocks=0,
                          num_labels=num_labels)


def test_pos_weight_and_label_names_must_have_one_entry_per_output():
  net = model_lib.build_model(32, backbone='mini_vgg', frozen_blocks=0,
                              dense_units=(8,), num_labels=3)
  with pytest.raises(ValueError, match='pos_weight has 2 entries for 3 '
                     'outputs'):
    model_lib.compile_model(net, pos_weight=[1.0, 1.0])
  with pytest.raises(ValueError, match='label_names has 1 entries for 3 '
                     'outputs'):
    model_lib.compile_model(net, label_names=['PNEUMONIA'])


@pytest.mark.parametrize('head, backbone, num_labels, expected', [
    # The reference experiment and the demo keep the reference's head ...
    ('auto', 'vgg16', 1, 'dense'), ('auto', 'mini_vgg', 1, 'dense'),
    # ... multi-label runs and the field's backbones pool.
    ('auto', 'vgg16', 14, 'pooling'), ('auto', 'mini_vgg', 2, 'pooling'),
    ('auto', 'densenet121', 1, 'pooling'), ('auto', 'resnet50', 5, 'pooling'),
    ('dense', 'mini_vgg', 14, 'dense'), ('pooling', 'vgg16', 1, 'pooling'),
])
def test_resolve_head(head, backbone, num_labels, expected):
  assert model_lib.resolve_head(head, backbone, num_labels) == expected


def test_a_multilabel_mini_vgg_pools_into_its_outputs_by_default():
  """No hidden dense layer between the pooled features and the L outputs
  (the reference's Flatten -> 512 -> 64 collapsed there, issue 31)."""
  pooled = model_lib.build_model(32, backbone='mini_vgg', frozen_blocks=0,
                                 num_labels=3)
  assert [type(layer).__name__ for layer in pooled.layers[-2:]] == [
      'GlobalAveragePooling2D', 'Dense']
  dense = model_lib.build_model(32, backbone='mini_vgg', frozen_blocks=0,
                                num_labels=3, head='dense',
                                dense_units=(8, 4))
  assert [layer.units for layer in dense.layers
          if isinstance(layer, keras.layers.Dense)] == [8, 4, 3]
  with pytest.raises(checks.SettingError, match='head'):
    model_lib.build_model(32, backbone='mini_vgg', frozen_blocks=0,
                          head='flatten')


# Every backbone, from random weights, fits a fixed batch of 8 noise images
# with random targets: its loss falls to a tenth within a dozen steps of
# Adam at 1e-3. A head that dies, a preprocessing that saturates or a
# policy that cannot train fails this. VGG16 (no batch norm) dies in its
# first step at 1e-3 (loss 0.70 -> 6.41, constant after) and gets the
# reference's 1e-4 and 20 steps (a tenth by about step 13). The runs that
# set the numbers: BUILD_NOTES.md, Session 9 (h1). The policies: 'auto'
# (mixed_bfloat16 on AVX512_BF16 hosts) and float32, once where they are
# the same.
OVERFIT_FACTOR = 10
# EfficientNetV2-S's stochastic depth makes its training loss jump from
# step to step (float32, 20 steps: 0.69 ... 0.011, 0.024, 0.027, 0.033,
# 0.141, 0.017, 0.231, 0.003): it gets 14 steps, and every backbone is
# judged on the best of its last OVERFIT_LAST losses. Session 11, 20 steps
# each (an eager step is about 4 s here): float32 0.81 first, below a tenth
# from step 7 on (steps 10-14: 0.267, 0.331, 0.046, 0.012, 0.058);
# mixed_bfloat16 0.92 first, below from step 9 on (0.029, 0.037, 0.026,
# 0.037, 0.023).
OVERFIT_SETTINGS = {'vgg16': (1e-4, 20),  # (learning rate, steps)
                    'efficientnetv2s': (1e-3, 14)}
OVERFIT_DEFAULT = (1e-3, 12)
OVERFIT_LAST = 5
# Both policies on the two VGG-style backbones; the three keras.applications
# ones (a minute or more each on 2 cores) under 'auto' only, which is
# float32 on AVX2 hosts and mixed_bfloat16 on AVX512_BF16 ones.
OVERFIT_CASES = [
    (backbone, policy) for backbone in checks.BACKBONES
    for policy in (sorted({model_lib.select_policy('auto'), 'float32'})
                   if backbone in ('vgg16', 'mini_vgg') else
                   [model_lib.select_policy('auto')])]


def overfit_losses(backbone, policy):
  """The training losses of Adam steps on one fixed batch, all layers
  trained, no augmentation, two labels with one entry masked."""
  learning_rate, steps = OVERFIT_SETTINGS.get(backbone, OVERFIT_DEFAULT)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (8, 32, 32, 1), np.uint8)
  targets = rng.integers(0, 2, (8, 2)).astype(np.float32)
  targets[0, 1] = labels.MASKED
  net = model_lib.build_model(32, backbone=backbone, frozen_blocks=0,
                              policy=policy, num_labels=2,
                              augmentation='none')
  # One float32 probability per label (called eagerly: predict would trace).
  assert net.get_layer('probability').dtype_policy.compute_dtype == 'float32'
  probs = keras.ops.convert_to_numpy(net(images, training=False))
  assert probs.shape == (8, 2) and probs.dtype == np.float32
  assert ((0 < probs) & (probs < 1)).all()
  model_lib.compile_model(net, learning_rate=learning_rate,
                          pos_weight=[1.0, 1.0])
  # Eagerly: tracing the train step of the keras.applications graphs takes
  # minutes on 2 cores, a dozen eager steps a fraction of that.
  net.run_eagerly = True
  return [float(net.train_on_batch(images, targets)[0])
          for _ in range(steps)]


@pytest.mark.slow  # trains each backbone a dozen steps
@pytest.mark.parametrize('backbone, policy', OVERFIT_CASES)
def test_every_backbone_overfits_a_fixed_batch(backbone, policy):
  got = overfit_losses(backbone, policy)
  assert np.isfinite(got).all(), got
  assert min(got[-OVERFIT_LAST:]) <= got[0] / OVERFIT_FACTOR, got
