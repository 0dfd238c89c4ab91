"""build_model(num_labels=L): one float32 sigmoid per label on every
backbone, compiled with the masked loss and metric."""

import keras
import numpy as np
import pytest

from xray_tfdata import checks
from xray_tfdata import losses
from xray_tfdata import model as model_lib


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


def test_mini_vgg_has_one_float32_output_per_label_under_mixed_precision():
  net = model_lib.build_model(32, backbone='mini_vgg', frozen_blocks=0,
                              dense_units=(8,), policy='mixed_bfloat16',
                              num_labels=3)
  _check_head(net, 3)


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


def test_pos_weight_must_have_one_weight_per_output():
  net = model_lib.build_model(32, backbone='mini_vgg', frozen_blocks=0,
                              dense_units=(8,), num_labels=3)
  with pytest.raises(ValueError, match='3 outputs'):
    model_lib.compile_model(net, pos_weight=[1.0, 1.0])


@pytest.mark.slow  # builds a keras.applications backbone
@pytest.mark.parametrize('backbone', [b for b in checks.BACKBONES
                                      if b != 'mini_vgg'])
def test_every_backbone_has_one_output_per_label(backbone):
  net = model_lib.build_model(32, backbone=backbone, frozen_blocks=0,
                              dense_units=(8,), policy='float32',
                              num_labels=2, augmentation='none')
  _check_head(net, 2)
