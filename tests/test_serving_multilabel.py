"""A multi-label model exported and used (issue 19): the SavedModel's
per-label calibrated probabilities and decisions, and tools/predict's
columns and heatmaps per label."""

import io
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from xray_tfdata import evaluation
from xray_tfdata import serving

SIZE = 16
LABELS = ('Effusion', 'Pleural_Thickening', 'Cardiomegaly')
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def three_label_model():
  """uint8 [S, S, 1] -> per label sigmoid of a quarter's mean brightness,
  over-confident (x 30); a 1x1 conv so that Grad-CAM has a Conv2D."""
  import keras  # pylint: disable=g-import-not-at-top
  keras.mixed_precision.set_global_policy('float32')
  inputs = keras.Input((SIZE, SIZE, 1), dtype='uint8')
  x = keras.layers.Rescaling(1 / 255)(inputs)
  x = keras.layers.Conv2D(1, 1, kernel_initializer='ones',
                          bias_initializer='zeros')(x)
  x = keras.layers.AveragePooling2D(8)(x)
  x = keras.layers.Flatten()(x)
  kernel = np.zeros((4, 3), np.float32)
  kernel[0, 0] = kernel[1, 1] = kernel[2, 2] = 30.0
  outputs = keras.layers.Dense(
      3, activation='sigmoid', dtype='float32',
      kernel_initializer=keras.initializers.Constant(kernel),
      bias_initializer=keras.initializers.Constant(-15.0))(x)
  return keras.Model(inputs, outputs)


def images(n, seed):
  rng = np.random.default_rng(seed)
  brightness = 128 + rng.uniform(-12, 12, (n, 1, 1, 1))
  return np.clip(brightness + rng.normal(0, 3, (n, SIZE, SIZE, 1)), 0,
                 255).astype(np.uint8)


def png(image):
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0]).save(buffer, format='PNG')
  return buffer.getvalue()


RESULTS = {'evaluation': {'multilabel': True, 'label_names': list(LABELS),
                          'labels': {
    'Effusion': {'calibration': {'temperature': 2.0},
                 'thresholds': {'youden': {'threshold': 0.6,
                                           'calibrated_threshold': 0.55}}},
    'Pleural_Thickening': {'calibration': {'temperature': 0.5},
                           'thresholds': {'youden': {
                               'threshold': 0.3,
                               'calibrated_threshold': 0.2}}},
    # One class on val: no operating point, no temperature.
    'Cardiomegaly': {'calibration': None, 'thresholds': {}}}}}


def test_calibration_of_a_multilabel_run_is_per_label():
  calibration = serving.calibration_of(RESULTS)
  assert calibration == {
      'label_names': list(LABELS), 'temperature': [2.0, 0.5, 1.0],
      'threshold': [0.55, 0.2, serving.DEFAULT_THRESHOLD],
      'uncalibrated': ['Cardiomegaly'], 'default_threshold': ['Cardiomegaly']}


@pytest.mark.slow  # exports and loads a SavedModel
def test_saved_model_returns_per_label_calibrated_probabilities(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  net = three_label_model()
  batch = images(8, 0)
  calibration = serving.calibration_of(RESULTS)
  serving.export_model(net, str(tmp_path), SIZE, calibration=calibration)
  served = tf.saved_model.load(os.path.join(tmp_path, serving.SERVING_DIR))
  out = {k: v.numpy() for k, v in served.serve(
      tf.constant([png(i) for i in batch])).items()}
  raw = net.predict(batch, verbose=0)
  assert raw.shape == (8, 3) and raw.std(axis=0).min() > 0.05
  want = np.stack([evaluation.apply_temperature(raw[:, j], t)
                   for j, t in enumerate(calibration['temperature'])], 1)
  np.testing.assert_allclose(out['probability'], want, atol=1e-5)
  np.testing.assert_array_equal(
      out['threshold'], np.tile(np.float32(calibration['threshold']), (8, 1)))
  np.testing.assert_array_equal(out['decision'],
                                out['probability'] > out['threshold'])
  empty = served.serve(tf.constant([], tf.string))
  assert empty['probability'].shape == (0, 3)
  # Uncalibrated: the model's own probabilities, [N, L].
  plain = str(tmp_path / 'plain')
  os.makedirs(plain)
  serving.export_model(net, plain, SIZE)
  served = tf.saved_model.load(os.path.join(plain, serving.SERVING_DIR))
  got = served.serve(tf.constant([png(i) for i in batch]))
  assert set(got) == {'probability'}
  np.testing.assert_allclose(got['probability'].numpy(), raw, atol=1e-5)


@pytest.mark.slow  # starts the tool
def test_predict_tool_writes_a_column_pair_and_a_heatmap_per_label(tmp_path):
  net = three_label_model()
  model_dir = str(tmp_path / 'run')
  os.makedirs(model_dir)
  serving.export_model(net, model_dir, SIZE,
                       calibration=serving.calibration_of(RESULTS))
  with open(os.path.join(model_dir, 'config.json'), 'w') as f:
    json.dump({'image_size': SIZE, 'label_names': list(LABELS)}, f)
  with open(os.path.join(model_dir, 'results.json'), 'w') as f:
    json.dump(RESULTS, f)
  batch = images(3, 1)
  paths = []
  for i, image in enumerate(batch):
    paths.append(str(tmp_path / f'scan{i}.png'))
    Image.fromarray(image[..., 0]).save(paths[-1])
  heatmaps = str(tmp_path / 'maps')
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'tools', 'predict'),
       f'--model_dir={model_dir}', '--output=csv',
       f'--heatmap_dir={heatmaps}', *paths],
      capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
      env={**os.environ, 'PYTHONPATH': REPO_ROOT})
  assert result.returncode == 0, result.stderr
  rows = [line.split(',') for line in result.stdout.strip().splitlines()]
  assert rows[0] == ['path', 'P(Effusion)', 'Effusion',
                     'P(Pleural_Thickening)', 'Pleural_Thickening',
                     'P(Cardiomegaly)', 'Cardiomegaly']
  calibration = serving.calibration_of(RESULTS)
  raw = net.predict(batch, verbose=0)
  for row, probs, path in zip(rows[1:], raw, paths):
    assert row[0] == path
    for j, t in enumerate(calibration['temperature']):
      p = float(evaluation.apply_temperature(probs[j], t))
      assert float(row[1 + 2 * j]) == pytest.approx(p, abs=1e-4)
      assert row[2 + 2 * j] == ('1' if p > calibration['threshold'][j]
                                else '0')
  assert 'thresholds Effusion 0.5500, Pleural_Thickening 0.2000, ' \
         'Cardiomegaly 0.5000' in result.stderr
  names = sorted(os.listdir(heatmaps))
  assert names == sorted(f'scan{i}.{label.lower()}.gradcam.png'
                         for i in range(3) for label in LABELS)
  # Each names its label, the P and decision printed for it, and the
  # threshold they were decided at.
  for i, row in enumerate(rows[1:]):
    for j, label in enumerate(LABELS):
      with Image.open(os.path.join(
          heatmaps, f'scan{i}.{label.lower()}.gradcam.png')) as png:
        text = dict(png.text)
      assert text['label'] == label
      assert float(text['probability']) == pytest.approx(
          float(row[1 + 2 * j]), abs=1e-4)
      assert float(text['threshold']) == pytest.approx(
          calibration['threshold'][j], abs=1e-6)
      assert text['decision'] == ('positive' if row[2 + 2 * j] == '1'
                                  else 'negative')


def test_heatmaps_from_python_name_the_models_own_p_and_thresholds(tmp_path):
  """serving.write_heatmaps without the tool's scores: each overlay names
  model.keras's own (uncalibrated) P and the raw Youden threshold of
  results.json (0.5 where it has none), on the same scale."""
  net = three_label_model()
  model_dir = tmp_path / 'run'
  model_dir.mkdir()
  net.save(str(model_dir / serving.MODEL_FILE))
  (model_dir / 'config.json').write_text(json.dumps(
      {'image_size': SIZE, 'label_names': list(LABELS)}))
  (model_dir / 'results.json').write_text(json.dumps(RESULTS))
  batch = images(2, 4)
  paths = []
  for i, image in enumerate(batch):
    paths.append(str(tmp_path / f'scan{i}.png'))
    Image.fromarray(image[..., 0]).save(paths[-1])
  written = serving.write_heatmaps(str(model_dir), paths,
                                   str(tmp_path / 'maps'), labels=LABELS)
  raw = net.predict(batch, verbose=0)
  assert len(written) == 6  # image by image, each image's labels in order
  for index, path in enumerate(written):
    i, j = divmod(index, len(LABELS))
    assert os.path.basename(path) == (
        f'scan{i}.{serving.file_label(LABELS[j])}.gradcam.png')
    with Image.open(path) as overlay:
      text = dict(overlay.text)
    assert text['label'] == LABELS[j]
    assert float(text['probability']) == pytest.approx(raw[i, j], abs=1e-5)
    assert float(text['threshold']) == (0.6, 0.3, 0.5)[j]
    assert text['decision'] == ('positive' if raw[i, j] > (0.6, 0.3, 0.5)[j]
                                else 'negative')
