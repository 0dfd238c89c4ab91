"""serving: the exported SavedModel's 'serve' signature, its calibration,
tools/predict and the heatmaps, for one label (a class-folder run) and
several (a multi-label run) alike."""

import csv
import io
import json
import os
import subprocess
import sys

import keras
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from xray_tfdata import evaluation
from xray_tfdata import run_dir
from xray_tfdata import serving

from conftest import REPO_ROOT
from records import png_bytes

SIZE = 16
LABELS = ('Effusion', 'Pleural_Thickening', 'Cardiomegaly')


@keras.saving.register_keras_serializable(package='xray_tfdata_test')
class FailsOnAnEmptyBatch(keras.layers.Layer):
  """Passes its input through, and fails on a batch of 0 images, as
  oneDNN's bfloat16 convolution does on AVX512_BF16 CPUs ("input depth must
  be evenly divisible by filter depth: 3 vs 64")."""

  def call(self, images):
    tf.debugging.assert_greater(tf.shape(images)[0], 0,
                                message='an empty batch reached the net')
    return images


def _net(num_labels=1):
  """uint8 images -> P [N, L], through a convolution (the kernel that fails
  on an empty batch under bfloat16) and the layer that fails as it does."""
  inputs = keras.Input((SIZE, SIZE, 1), dtype='uint8')
  x = FailsOnAnEmptyBatch()(inputs)
  x = keras.ops.cast(x, 'float32') / 255.0
  x = keras.layers.Conv2D(4, 3, activation='relu')(x)
  x = keras.layers.Flatten()(x)
  outputs = keras.layers.Dense(num_labels, activation='sigmoid',
                               dtype='float32',
                               kernel_initializer='random_normal')(x)
  return keras.Model(inputs, outputs)


def quarter_model(num_labels):
  """uint8 [S, S, 1] -> per label j the sigmoid of quarter j's mean
  brightness, over-confident (x 30); a 1x1 conv so that Grad-CAM has a
  Conv2D."""
  # Whatever policy an earlier test left: these numbers are compared.
  keras.mixed_precision.set_global_policy('float32')
  inputs = keras.Input((SIZE, SIZE, 1), dtype='uint8')
  x = keras.layers.Rescaling(1 / 255)(inputs)
  x = keras.layers.Conv2D(1, 1, kernel_initializer='ones',
                          bias_initializer='zeros')(x)
  x = keras.layers.AveragePooling2D(SIZE // 2)(x)
  x = keras.layers.Flatten()(x)
  kernel = np.zeros((4, num_labels), np.float32)
  kernel[np.arange(num_labels), np.arange(num_labels)] = 30.0
  outputs = keras.layers.Dense(
      num_labels, activation='sigmoid', dtype='float32',
      kernel_initializer=keras.initializers.Constant(kernel),
      bias_initializer=keras.initializers.Constant(-15.0))(x)
  return keras.Model(inputs, outputs)


def images(n, seed):
  """n images of one brightness each around mid-grey, with grain: P well
  inside (0, 1) and spread from image to image."""
  rng = np.random.default_rng(seed)
  brightness = 128 + rng.uniform(-12, 12, (n, 1, 1, 1))
  return np.clip(brightness + rng.normal(0, 3, (n, SIZE, SIZE, 1)), 0,
                 255).astype(np.uint8)


def label_entry(temperature=None, threshold=None, calibrated=None):
  """One label's results entry as the evaluation writes it (format 2):
  the Youden operating point chosen on val, the temperature, no splits."""
  thresholds = {}
  if threshold is not None:
    thresholds['youden'] = {'threshold': threshold, 'rule': 'youden',
                            'chosen_on': 'val',
                            'calibrated_threshold': calibrated}
  return {'thresholds': thresholds,
          'calibration': ({'temperature': temperature}
                          if temperature is not None else None),
          'splits': {}}


def format2(entries):
  """A results.json of format 2 (README, "results.json") around per-label
  entries, every key present."""
  return {run_dir.RESULTS_FORMAT_KEY: run_dir.RESULTS_FORMAT,
          'label_names': list(entries), 'label_policy': None, 'views': None,
          'config': {}, 'data': {'data_dir': None, 'model_data': None,
                                 'label_mapping': None},
          'bootstrap': {'unit': 'patient', 'num_resamples': 10,
                        'level': 0.95, 'seed': 0},
          'labels': dict(entries), 'macro': {}, 'localization': None}


# Three labels: one calibrated below 1, one above, and one whose val split
# had one class (no operating point, no temperature).
MULTILABEL_RESULTS = format2({
    'Effusion': label_entry(2.0, 0.6, 0.55),
    'Pleural_Thickening': label_entry(0.5, 0.3, 0.2),
    'Cardiomegaly': label_entry()})
SINGLE_LABEL_RESULTS = format2({'PNEUMONIA': label_entry(2.5, 0.3, 0.4)})
RESULTS = {1: SINGLE_LABEL_RESULTS, 3: MULTILABEL_RESULTS}


def write_run(model_dir, net, results=None, calibrated=True, **config):
  """A tiny finished run: model.keras and serving/ (with the calibration of
  results where given), config.json (image_size, label_names and config)
  and results.json."""
  os.makedirs(model_dir, exist_ok=True)
  serving.export_model(net, str(model_dir), SIZE, calibration=(
      serving.calibration_of(results) if results and calibrated else None))
  record = {'image_size': SIZE, **config}
  if results:
    record.setdefault('label_names', results['label_names'])
  with open(os.path.join(model_dir, run_dir.CONFIG_JSON), 'w') as f:
    json.dump(record, f)
  if results is not None:
    with open(os.path.join(model_dir, run_dir.RESULTS_JSON), 'w') as f:
      json.dump(results, f)


# mixed_bfloat16: the policy 'auto' picks on AVX512_BF16 hosts, where the
# empty batch failed (here its kernels are emulated, but the graph is the
# one exported there).
@pytest.fixture(scope='module', params=[('float32', 1), ('mixed_bfloat16', 1),
                                        ('float32', 3)],
                ids=['float32-L1', 'bfloat16-L1', 'float32-L3'])
def exported(tmp_path_factory, request):
  policy, num_labels = request.param
  model_dir = str(tmp_path_factory.mktemp('model'))
  keras.utils.set_random_seed(3)
  keras.mixed_precision.set_global_policy(policy)
  try:
    net = _net(num_labels)
  finally:
    keras.mixed_precision.set_global_policy('float32')
  serving.export_model(net, model_dir, SIZE)
  return net, tf.saved_model.load(os.path.join(model_dir,
                                               serving.SERVING_DIR))


def test_the_test_layer_fails_on_an_empty_batch(exported):
  """The check below means something only if the net itself cannot take
  an empty batch."""
  net, _ = exported
  with pytest.raises(tf.errors.InvalidArgumentError, match='empty batch'):
    net(tf.zeros([0, SIZE, SIZE, 1], tf.uint8), training=False)


def test_serve_takes_an_empty_batch_without_running_the_net(exported):
  net, served = exported
  probability = served.serve(tf.constant([], tf.string))['probability']
  assert probability.shape == (0, net.output_shape[-1])
  assert probability.dtype == tf.float32


def test_serve_scores_images_as_the_net_does(exported):
  """[N, L] for every model, columns in the model's output order."""
  net, served = exported
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (3, SIZE, SIZE), np.uint8)
  for count in (1, 3):
    probability = served.serve(tf.constant(
        [png_bytes(image) for image in pixels[:count]]))['probability'].numpy()
    expected = net.predict(pixels[:count, ..., None], verbose=0)
    assert probability.shape == (count, net.output_shape[-1])
    # bfloat16 keeps 8 bits of mantissa: the two graphs may round apart.
    atol = 1e-6 if net.dtype_policy.name == 'float32' else 1e-2
    np.testing.assert_allclose(probability, expected, atol=atol)


@pytest.mark.parametrize('kind, max_levels, mean_levels', [
    ('gray.png', 1, 0.5), ('sixteen.png', 1, 0.5), ('rgb.png', 1, 0.5),
    # PIL decodes a JPEG at a reduced DCT scale first (imaging's draft).
    ('gray.jpeg', 8, 2.0)])
def test_serve_sees_the_pixels_the_converter_stores(tmp_path, kind,
                                                    max_levels, mean_levels):
  """Raw file bytes through the signature against imaging.load_image.

  The net here outputs its input pixels, so 'probability' holds them. TF's
  anti-aliased resize and PIL's bilinear differ by rounding (a grey level);
  a nearest or non-anti-aliased resize differs by tens of levels here.
  """
  inputs = keras.Input((SIZE, SIZE, 1), dtype='uint8')
  net = keras.Model(inputs, keras.layers.Flatten()(
      keras.ops.cast(inputs, 'float32')))
  serving.export_model(net, str(tmp_path), SIZE)
  served = tf.saved_model.load(str(tmp_path / serving.SERVING_DIR))
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:90, 0:70]  # film-like: smooth shapes plus grain
  gray = np.clip(128 + 60 * np.sin(x / 5) + 40 * np.cos(y / 7) +
                 rng.normal(0, 20, x.shape), 0, 255).astype(np.uint8)
  image = {'gray.png': Image.fromarray(gray),
           'sixteen.png': Image.fromarray(gray.astype(np.uint16) * 257),
           'rgb.png': Image.fromarray(np.stack(
               [gray, np.roll(gray, 3, 0), gray[::-1]], -1)),
           'gray.jpeg': Image.fromarray(gray)}[kind]
  path = str(tmp_path / kind)
  image.save(path, **({'quality': 95} if kind.endswith('jpeg') else {}))
  with open(path, 'rb') as f:
    pixels = served.serve(tf.constant([f.read()]))['probability'].numpy()
  from xray_tfdata import imaging  # pylint: disable=g-import-not-at-top
  difference = np.abs(pixels.reshape(SIZE, SIZE) -
                      imaging.load_image(path, SIZE)[..., 0])
  assert difference.max() <= max_levels and (
      difference.mean() <= mean_levels), (difference.max(), difference.mean())


@pytest.mark.slow  # exports and loads two SavedModels
@pytest.mark.parametrize('num_labels', [1, 3])
def test_saved_model_returns_calibrated_probabilities_and_decisions(
    tmp_path, num_labels):
  """The signature of a run exported with its results' calibration: each
  label's P equals evaluation.apply_temperature of the model's P at that
  label's temperature (1 where it has none), with the label's threshold and
  the decision, [N, L] each; without calibration, the model's own P."""
  net = quarter_model(num_labels)
  batch = images(8, 0)
  results = RESULTS[num_labels]
  write_run(str(tmp_path), net, results)
  served = tf.saved_model.load(os.path.join(tmp_path, serving.SERVING_DIR))
  out = {k: v.numpy() for k, v in served.serve(
      tf.constant([png_bytes(i) for i in batch])).items()}
  raw = net.predict(batch, verbose=0)
  assert raw.shape == (8, num_labels) and raw.min() > 0.05 and (
      raw.max() < 0.95) and raw.std(axis=0).min() > 0.05
  temperatures = {1: [2.5], 3: [2.0, 0.5, 1.0]}[num_labels]
  thresholds = {1: [0.4], 3: [0.55, 0.2, serving.DEFAULT_THRESHOLD]}[
      num_labels]
  want = np.stack([evaluation.apply_temperature(raw[:, j], t)
                   for j, t in enumerate(temperatures)], 1)
  np.testing.assert_allclose(out['probability'], want, atol=1e-5)
  # Softer than the model itself (closer to 1/2) where T > 1.
  softer = np.array(temperatures) > 1
  assert (np.abs(out['probability'] - 0.5) <
          np.abs(raw - 0.5))[:, softer].all()
  np.testing.assert_array_equal(
      out['threshold'], np.tile(np.float32(thresholds), (8, 1)))
  np.testing.assert_array_equal(out['decision'],
                                out['probability'] > out['threshold'])
  empty = served.serve(tf.constant([], tf.string))
  assert {k: tuple(v.shape) for k, v in empty.items()} == {
      'probability': (0, num_labels), 'threshold': (0, num_labels),
      'decision': (0, num_labels)}
  # Uncalibrated: the model's own probabilities, [N, L].
  plain = str(tmp_path / 'plain')
  write_run(plain, net, results, calibrated=False)
  served = tf.saved_model.load(os.path.join(plain, serving.SERVING_DIR))
  got = served.serve(tf.constant([png_bytes(i) for i in batch]))
  assert set(got) == {'probability'}
  np.testing.assert_allclose(got['probability'].numpy(), raw, atol=1e-5)


def test_a_calibration_of_another_label_count_is_refused(tmp_path):
  with pytest.raises(serving.TrainingError, match='3 label_names for a '
                     'model of 1 outputs'):
    serving.export_model(quarter_model(1), str(tmp_path), SIZE,
                         calibration=serving.calibration_of(
                             MULTILABEL_RESULTS))
  assert os.listdir(tmp_path) == []  # refused before anything is written


def test_calibration_of_a_run_is_the_val_temperature_and_youden_threshold():
  """From evaluate_label's real results: T fitted on val, and the Youden
  threshold of the raw val P carried onto the calibrated scale; the same
  from format 2 and from a run written before it."""
  rng = np.random.default_rng(4)
  labels = np.arange(40) % 2
  # Over-confident: far from 1/2, often wrong, so T is well above 1.
  probs = np.clip(np.where(rng.random(40) < 0.7, labels, 1 - labels) * 0.9 +
                  rng.uniform(0.02, 0.08, 40), 0, 1)
  evaluated = evaluation.evaluate_label(
      {'val': (labels, probs), 'test': (labels, probs[::-1])},
      num_resamples=10)
  temperature = evaluation.fit_temperature(labels, probs)
  assert temperature > 1.5
  threshold = evaluation.youden_threshold(labels, probs)
  want = {'label_names': ['PNEUMONIA'],
          'temperature': [pytest.approx(temperature)],
          'threshold': [pytest.approx(float(evaluation.apply_temperature(
              threshold, temperature)))],
          'uncalibrated': [], 'default_threshold': []}
  assert serving.calibration_of(format2({'PNEUMONIA': evaluated})) == want
  assert serving.calibration_of(
      {'youden': {'threshold': 0.3},
       'evaluation': {'labels': {'PNEUMONIA': evaluated}}}) == want
  # The raw threshold, for model.keras' P, from the same entry.
  assert serving.thresholds_of(format2({'PNEUMONIA': evaluated}))[0] == [
      pytest.approx(threshold)]
  assert serving.calibration_of({'youden': {'threshold': 0.3}}) is None


def test_calibration_of_a_multilabel_run_is_per_label():
  assert serving.calibration_of(MULTILABEL_RESULTS) == {
      'label_names': list(LABELS), 'temperature': [2.0, 0.5, 1.0],
      'threshold': [0.55, 0.2, serving.DEFAULT_THRESHOLD],
      'uncalibrated': ['Cardiomegaly'], 'default_threshold': ['Cardiomegaly']}
  # A label with a temperature but no threshold on its scale is served
  # uncalibrated at its raw threshold, not at a threshold of another scale.
  results = format2({'A': label_entry(2.0, 0.7, None)})
  assert serving.calibration_of(results) == {
      'label_names': ['A'], 'temperature': [1.0], 'threshold': [0.7],
      'uncalibrated': ['A'], 'default_threshold': []}


@pytest.mark.parametrize('num_labels', [1, 3])
def test_thresholds_of_a_run_on_either_scale(tmp_path, num_labels):
  model_dir = str(tmp_path / 'run')
  write_run(model_dir, quarter_model(num_labels), RESULTS[num_labels])
  run = run_dir.read(model_dir)
  raw, source = serving.thresholds_of(run)
  calibrated, calibrated_source = serving.thresholds_of(run, calibrated=True)
  assert (raw, calibrated) == {1: ([0.3], [0.4]),
                               3: ([0.6, 0.3, 0.5], [0.55, 0.2, 0.5])}[
                                   num_labels]
  assert 'on validation from' in source and model_dir in source
  assert 'on the calibrated scale' in calibrated_source
  assert ('0.5 for Cardiomegaly: none there' in source) == (num_labels == 3)
  # No evaluation at all: the default, said so.
  os.remove(os.path.join(model_dir, run_dir.RESULTS_JSON))
  thresholds, source = serving.thresholds_of(run_dir.read(model_dir,
                                                          finished=False))
  assert thresholds == [0.5] * num_labels and 'the default' in source


def test_a_run_exported_before_the_one_label_path_still_serves(tmp_path):
  """An old class-folder run: config.json names no labels, results.json
  has its labels under 'evaluation', and serving/ returns P [N] with
  'threshold' and 'positive' [N]. It is read as one label named by the
  dataset's positive class, P [1] per image, 'positive' as its decision."""
  model_dir = tmp_path / 'run'
  serving_dir = model_dir / serving.SERVING_DIR
  data_dir = tmp_path / 'data'
  data_dir.mkdir()
  (data_dir / 'xray_info.json').write_text(json.dumps(
      {'format_version': 2, 'class_names': ['healthy', 'sick'],
       'image': {'height': SIZE, 'width': SIZE}, 'splits': {}}))

  class OldSignature(tf.Module):
    """The pre-issue-33 calibrated signature of P = mean brightness."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(self, encoded):
      pixels = tf.map_fn(
          lambda data: tf.cast(tf.io.decode_png(data, channels=1), tf.float32),
          encoded, fn_output_signature=tf.TensorSpec([SIZE, SIZE, 1]))
      probability = tf.reduce_mean(pixels, axis=[1, 2, 3]) / 255
      threshold = tf.fill(tf.shape(probability), 0.5)
      return {'probability': probability, 'threshold': threshold,
              'positive': probability > threshold}

  tf.saved_model.save(OldSignature(), str(serving_dir))
  (model_dir / run_dir.CONFIG_JSON).write_text(json.dumps(
      {'image_size': SIZE, 'data_dir': str(data_dir)}))
  (model_dir / run_dir.MODEL_FILE).write_bytes(b'')
  (model_dir / run_dir.RESULTS_JSON).write_text(json.dumps(
      {'youden': {'threshold': 0.45},
       'evaluation': {'labels': {'sick': label_entry(1.5, 0.45, 0.5)}}}))
  paths = []
  for value in (40, 200):
    paths.append(str(tmp_path / f'{value}.png'))
    Image.fromarray(np.full((SIZE, SIZE), value, np.uint8)).save(paths[-1])
  run = run_dir.read(str(model_dir))
  assert run.label_names == ('sick',)
  assert serving.thresholds_of(run, calibrated=True)[0] == [0.5]
  scores = serving.score_paths(str(serving_dir), paths)
  assert [out for out, _ in scores] == [
      {'probability': [pytest.approx(40 / 255)], 'threshold': [0.5],
       'decision': [False]},
      {'probability': [pytest.approx(200 / 255)], 'threshold': [0.5],
       'decision': [True]}]
  # Without results.json the positive class names the label: the
  # dataset's second class, else PNEUMONIA.
  os.remove(model_dir / run_dir.RESULTS_JSON)
  assert run_dir.read(str(model_dir), finished=False).label_names == (
      'sick',)


def test_predict_refuses_a_signature_that_is_not_the_runs(tmp_path):
  """A serving/ of one output under a run whose config.json names three
  labels, or one deciding at other thresholds than results.json's (a
  folder pieced together from two runs): one line naming both, before
  tools/predict prints anything."""
  model_dir = str(tmp_path / 'run')
  os.makedirs(model_dir)
  with open(os.path.join(model_dir, run_dir.CONFIG_JSON), 'w') as f:
    json.dump({'image_size': SIZE, 'label_names': list(LABELS)}, f)
  run = run_dir.read(model_dir, finished=False)
  with pytest.raises(serving.TrainingError,
                     match='serves 1 outputs but config.json names 3 labels'):
    serving.served_thresholds(run, [({'probability': [0.2]}, None)])
  assert serving.served_thresholds(
      run, [(None, 'does not exist'), ({'probability': [0.2, 0.4, 0.6]},
                                       None)])[0] == [0.5] * 3
  with open(os.path.join(model_dir, run_dir.RESULTS_JSON), 'w') as f:
    json.dump(MULTILABEL_RESULTS, f)
  run = run_dir.read(model_dir, finished=False)
  served = {'probability': [0.2, 0.4, 0.6], 'threshold': [0.55, 0.2, 0.5]}
  assert serving.served_thresholds(run, [(served, None)])[0] == [
      0.55, 0.2, 0.5]
  served['threshold'] = [0.55, 0.21, 0.5]
  with pytest.raises(serving.TrainingError,
                     match='serving/ was exported from another evaluation'):
    serving.served_thresholds(run, [(served, None)])


def _run_predict(*args):
  return subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'tools', 'predict'), *args],
      capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
      env={**os.environ, 'PYTHONPATH': REPO_ROOT})


def _reference(path):
  """The stored pixels by PIL alone: gray, squashed with bilinear."""
  with Image.open(path) as image:
    return np.asarray(image.convert('L').resize((SIZE, SIZE),
                                                Image.BILINEAR))


@pytest.mark.slow  # starts the tool
def test_predict_tool_takes_folders_and_globs_and_applies_the_threshold(
    tmp_path):
  keras.utils.set_random_seed(5)
  net = _net()
  model_dir = tmp_path / 'model'
  data_dir = tmp_path / 'data'
  data_dir.mkdir()
  (data_dir / 'xray_info.json').write_text(json.dumps(
      {'format_version': 2, 'class_names': ['healthy', 'sick'],
       'image': {'height': SIZE, 'width': SIZE}, 'splits': {}}))
  rng = np.random.default_rng(1)
  images_dir = tmp_path / 'images'
  names = ['a.png', 'b.png', 'deeper/c.png', 'deeper/d.png', 'e.png']
  for name in names:
    path = images_dir / name
    path.parent.mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40, 30), np.uint8)).save(path)
  (images_dir / '.hidden.png').write_bytes(b'litter')  # skipped
  (images_dir / 'notes.txt').write_text('not an image')  # skipped
  (tmp_path / 'empty').mkdir()
  files = sorted(str(images_dir / n) for n in names)
  expected = net.predict(np.stack([_reference(f) for f in files])[..., None],
                         verbose=0).reshape(-1)
  threshold = float(np.median(expected))  # decisions of both kinds
  # Exported without calibration: the raw P, at the raw Youden threshold.
  write_run(str(model_dir), net, format2({'sick': label_entry(
      None, threshold)}), calibrated=False, data_dir=str(data_dir))

  # A folder, as CSV, two images per model call (three calls).
  result = _run_predict(f'--model_dir={model_dir}', '--output=csv',
                        '--batch_size=2', str(images_dir))
  assert result.returncode == 0, result.stderr
  rows = list(csv.reader(io.StringIO(result.stdout)))
  assert rows[0] == ['path', 'sick', 'sick_decision']
  assert [r[0] for r in rows[1:]] == files
  np.testing.assert_allclose([float(r[1]) for r in rows[1:]], expected,
                             atol=6e-5)
  assert [r[2] for r in rows[1:]] == [
      '1' if p > threshold else '0' for p in expected]
  assert {'0', '1'} == {r[2] for r in rows[1:]}
  assert (f'threshold sick {threshold:.4f}: the Youden threshold on '
          f'validation from {model_dir}') in result.stderr
  assert 'scored 5/5 images' in result.stderr
  assert 'scored 2/5 images' in result.stderr  # a line per batch here

  # A calibrated signature (as tools/train exports it): its P and decision
  # at the calibrated threshold, not the raw one (which would call every
  # image positive here).
  calibrated = evaluation.apply_temperature(expected, 3.0)
  low = np.sort(calibrated)
  cut = float(low[1:3].mean())  # 2 negative, 3 positive
  results = format2({'sick': label_entry(3.0, 0.0, cut)})
  write_run(str(model_dir), net, results, data_dir=str(data_dir))
  result = _run_predict(f'--model_dir={model_dir}', str(images_dir))
  assert result.returncode == 0, result.stderr
  lines = [l.split('\t') for l in result.stdout.strip().splitlines()]
  assert lines[0] == ['path', 'sick', 'sick_decision']
  assert [l[0] for l in lines[1:]] == files
  np.testing.assert_allclose([float(l[1]) for l in lines[1:]], calibrated,
                             atol=6e-5)
  assert [l[2] for l in lines[1:]] == ['1' if p > cut else '0'
                                       for p in calibrated]
  assert [l[2] for l in lines[1:]].count('1') == 3
  assert (f'threshold sick {cut:.4f}: the Youden threshold on validation, '
          'on the calibrated scale, from') in result.stderr

  # Globs, an empty folder and a glob without matches; no results.json.
  write_run(str(model_dir), net, None, label_names=['sick'])
  (model_dir / run_dir.RESULTS_JSON).unlink()
  result = _run_predict(f'--model_dir={model_dir}',
                        str(images_dir / '**' / 'c.png'),
                        str(images_dir / '?.png'),
                        str(tmp_path / 'empty'), str(tmp_path / '*.gif'))
  assert result.returncode == 1
  lines = [l.split('\t') for l in result.stdout.strip().splitlines()][1:]
  assert [l[0] for l in lines] == [files[2]] + files[:2] + [files[4]]
  by_path = dict(zip(files, expected))
  assert [l[2] for l in lines] == ['1' if by_path[l[0]] > 0.5 else '0'
                                   for l in lines]
  assert 'threshold sick 0.5000: the default (no threshold in' in (
      result.stderr)
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert errors == [
      f'error: {tmp_path / "empty"}: is a folder without image files '
      '(.jpeg, .jpg, .png, ...)',
      f'error: {tmp_path / "*.gif"}: matches no file']


@pytest.mark.slow  # starts the tool
def test_predict_tool_writes_a_column_pair_and_a_heatmap_per_label(tmp_path):
  net = quarter_model(3)
  model_dir = str(tmp_path / 'run')
  write_run(model_dir, net, MULTILABEL_RESULTS)
  batch = images(3, 1)
  paths = []
  for i, image in enumerate(batch):
    paths.append(str(tmp_path / f'scan{i}.png'))
    Image.fromarray(image[..., 0]).save(paths[-1])
  heatmaps = str(tmp_path / 'maps')
  result = _run_predict(f'--model_dir={model_dir}', '--output=csv',
                        f'--heatmap_dir={heatmaps}', *paths)
  assert result.returncode == 0, result.stderr
  rows = [line.split(',') for line in result.stdout.strip().splitlines()]
  assert rows[0] == ['path', 'Effusion', 'Effusion_decision',
                     'Pleural_Thickening', 'Pleural_Thickening_decision',
                     'Cardiomegaly', 'Cardiomegaly_decision']
  calibration = serving.calibration_of(MULTILABEL_RESULTS)
  raw = net.predict(batch, verbose=0)
  for row, probs, path in zip(rows[1:], raw, paths):
    assert row[0] == path
    for j, t in enumerate(calibration['temperature']):
      p = float(evaluation.apply_temperature(probs[j], t))
      assert float(row[1 + 2 * j]) == pytest.approx(p, abs=1e-4)
      assert row[2 + 2 * j] == ('1' if p > calibration['threshold'][j]
                                else '0')
  assert ('thresholds Effusion 0.5500, Pleural_Thickening 0.2000, '
          'Cardiomegaly 0.5000: the Youden thresholds on validation, on the '
          'calibrated scale, from') in result.stderr
  assert '(0.5 for Cardiomegaly: none there)' in result.stderr
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


@pytest.mark.parametrize('num_labels', [1, 3])
def test_heatmaps_from_python_name_the_models_own_p_and_thresholds(
    tmp_path, num_labels):
  """serving.write_heatmaps without the tool's scores: each overlay names
  model.keras's own (uncalibrated) P and the raw Youden threshold of
  results.json (0.5 where it has none), on the same scale."""
  net = quarter_model(num_labels)
  model_dir = str(tmp_path / 'run')
  write_run(model_dir, net, RESULTS[num_labels])
  labels = RESULTS[num_labels]['label_names']
  raw_thresholds = {1: (0.3,), 3: (0.6, 0.3, 0.5)}[num_labels]
  batch = images(2, 4)
  paths = []
  for i, image in enumerate(batch):
    paths.append(str(tmp_path / f'scan{i}.png'))
    Image.fromarray(image[..., 0]).save(paths[-1])
  written = serving.write_heatmaps(model_dir, paths, str(tmp_path / 'maps'))
  raw = net.predict(batch, verbose=0)
  # Image by image, each image's labels in order.
  assert len(written) == 2 * num_labels
  for index, path in enumerate(written):
    i, j = divmod(index, num_labels)
    assert os.path.basename(path) == (
        f'scan{i}.{serving.file_label(labels[j])}.gradcam.png')
    with Image.open(path) as overlay:
      text = dict(overlay.text)
    assert text['label'] == labels[j]
    assert float(text['probability']) == pytest.approx(raw[i, j], abs=1e-5)
    assert float(text['threshold']) == raw_thresholds[j]
    assert text['decision'] == ('positive' if raw[i, j] > raw_thresholds[j]
                                else 'negative')


def test_find_images_expands_folders_and_globs_in_order(tmp_path):
  for name in ('b.png', 'a.jpeg', 'deep/c.dcm', 'deep/.hidden.png',
               '__MACOSX/._a.jpeg', 'notes.txt', 'scan[1].png', 'scan1.png'):
    (tmp_path / name).parent.mkdir(exist_ok=True)
    (tmp_path / name).write_bytes(b'x')
  (tmp_path / 'empty').mkdir()
  found = serving.find_images([
      str(tmp_path / 'deep'), str(tmp_path / '*.png'),
      str(tmp_path / 'scan[1].png'), str(tmp_path / 'missing.png'),
      str(tmp_path / 'empty'), str(tmp_path / '*.gif')])
  assert found == [
      (str(tmp_path / 'deep' / 'c.dcm'), None),
      (str(tmp_path / 'b.png'), None), (str(tmp_path / 'scan1.png'), None),
      (str(tmp_path / 'scan[1].png'), None),
      (str(tmp_path / 'scan[1].png'), None),  # a real file, not a pattern
      (str(tmp_path / 'missing.png'), None),  # predict_paths says why
      (str(tmp_path / 'empty'), 'is a folder without image files '
       '(.jpeg, .jpg, .png, ...)'),
      (str(tmp_path / '*.gif'), 'matches no file')]
  whole = [path for path, _ in serving.find_images([str(tmp_path)])]
  assert whole == sorted(str(tmp_path / n) for n in (
      'a.jpeg', 'b.png', 'deep/c.dcm', 'scan1.png', 'scan[1].png'))


def test_a_failed_save_leaves_no_half_written_model(tmp_path, monkeypatch):
  """A full disk while model.keras is written: the error goes up and
  nothing half-written stays in model_dir (the rerun exports again)."""
  net = _net()

  def save_then_fail(path, *args, **kwargs):
    with open(path, 'wb') as f:
      f.write(b'PK\x03\x04 a cut-short zip')
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(net, 'save', save_then_fail)
  with pytest.raises(OSError):
    serving.export_model(net, str(tmp_path), SIZE)
  assert os.listdir(tmp_path) == []


@pytest.mark.slow  # starts the tool; exports DenseNet-121 (about 25 CPU-s)
def test_predict_tool_writes_a_gradcam_overlay_per_image(tmp_path):
  """--heatmap_dir on a DenseNet-121 run (issue 31: the field's backbone,
  whose concatenations a chain of layers could not run): one
  '<stem>.pneumonia.gradcam.png' per scored image, the stored image at its
  size with jet(P x the heatmap gradcam computes on the stored pixels of
  the run's model.keras) over it, and a caption and PNG text naming the
  label, the P printed for that image and its decision; a file as
  --heatmap_dir is one error line."""
  from xray_tfdata import gradcam  # pylint: disable=g-import-not-at-top
  from xray_tfdata import imaging  # pylint: disable=g-import-not-at-top
  from xray_tfdata import model as model_lib  # pylint: disable=g-import-not-at-top
  size = 64  # 2 x 2 cells of DenseNet's last map
  keras.utils.set_random_seed(7)
  try:
    net = model_lib.build_model(image_size=size, weights=None,
                                backbone='densenet121', policy='float32',
                                frozen_blocks=0)
  finally:
    keras.mixed_precision.set_global_policy('float32')
  model_dir = tmp_path / 'model'
  model_dir.mkdir()
  serving.export_model(net, str(model_dir), size)
  # A class-folder run of this version: one label, its positive class.
  (model_dir / 'config.json').write_text(json.dumps(
      {'image_size': size, 'label_names': ['PNEUMONIA']}))
  rng = np.random.default_rng(2)
  images_dir = tmp_path / 'images'
  # Two files with one stem: the second overlay is 'c-2'.
  names = ['a.png', 'b.png', 'c.png', 'deeper/c.png']
  for name in names:
    path = images_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (80, 60), np.uint8)).save(path)
  (images_dir / 'broken.png').write_bytes(b'not a png')  # scored as an error
  files = sorted(str(images_dir / n) for n in names)
  pixels = np.stack([imaging.load_image(f, size) for f in files])
  maps = gradcam.heatmaps(net, pixels)

  out = tmp_path / 'heat'
  result = _run_predict(f'--model_dir={model_dir}', f'--heatmap_dir={out}',
                        str(images_dir))
  assert result.returncode == 1, result.stderr  # broken.png
  rows = [l.split('\t') for l in result.stdout.splitlines()]
  assert rows[0] == ['path', 'PNEUMONIA', 'PNEUMONIA_decision']
  rows = rows[1:]
  assert [row[0] for row in rows] == files
  assert 'threshold PNEUMONIA 0.5000: the default' in result.stderr
  assert f'wrote 4 Grad-CAM overlays to {out}' in result.stderr
  stems = ['a', 'b', 'c', 'c-2']  # files' order: a, b, c, deeper/c
  assert sorted(os.listdir(out)) == sorted(f'{s}.pneumonia.gradcam.png'
                                           for s in stems)
  for stem, image, heatmap, row in zip(stems, pixels, maps, rows):
    with Image.open(out / f'{stem}.pneumonia.gradcam.png') as png:
      assert png.mode == 'RGB' and png.size[1] > size
      text = dict(png.text)
      written = np.asarray(png).astype(int)
    assert text['label'] == 'PNEUMONIA'
    assert text['decision'] == ('positive' if row[2] == '1' else 'negative')
    assert float(text['probability']) == pytest.approx(float(row[1]),
                                                       abs=1e-4)
    assert float(text['threshold']) == 0.5
    expected = gradcam.overlay(image, heatmap,
                               float(text['probability'])).astype(int)
    # Another process, the same model and pixels: at most two levels apart
    # (jet's steepest channel moves about 400 levels per unit of the map,
    # at alpha 0.4, and the maps differ in the last float32 bits).
    assert np.abs(written[:size, :size] - expected).max() <= 2

  # A file as --heatmap_dir: one error line, nothing scored.
  result = _run_predict(f'--model_dir={model_dir}',
                        f'--heatmap_dir={files[0]}', str(images_dir))
  assert result.returncode == 1 and result.stdout == ''
  assert [l for l in result.stderr.splitlines() if l.startswith('error')] == [
      f'error: --heatmap_dir {files[0]} is a file, not a folder: pass a '
      'folder (it is made if missing)']
