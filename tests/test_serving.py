"""serving: the exported SavedModel's 'serve' signature and predict."""

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

from xray_tfdata import serving

from conftest import REPO_ROOT

SIZE = 16


@keras.saving.register_keras_serializable(package='xray_tfdata_test')
class FailsOnAnEmptyBatch(keras.layers.Layer):
  """Passes its input through, and fails on a batch of 0 images, as
  oneDNN's bfloat16 convolution does on AVX512_BF16 CPUs ("input depth must
  be evenly divisible by filter depth: 3 vs 64")."""

  def call(self, images):
    tf.debugging.assert_greater(tf.shape(images)[0], 0,
                                message='an empty batch reached the net')
    return images


def _net():
  """uint8 images -> P, through a convolution (the kernel that fails on an
  empty batch under bfloat16) and the layer that fails as it does."""
  inputs = keras.Input((SIZE, SIZE, 1), dtype='uint8')
  x = FailsOnAnEmptyBatch()(inputs)
  x = keras.ops.cast(x, 'float32') / 255.0
  x = keras.layers.Conv2D(4, 3, activation='relu')(x)
  x = keras.layers.Flatten()(x)
  outputs = keras.layers.Dense(1, activation='sigmoid', dtype='float32',
                               kernel_initializer='random_normal')(x)
  return keras.Model(inputs, outputs)


def _png(pixels):
  buffer = io.BytesIO()
  Image.fromarray(pixels, 'L').save(buffer, 'PNG')
  return buffer.getvalue()


# mixed_bfloat16: the policy 'auto' picks on AVX512_BF16 hosts, where the
# empty batch failed (here its kernels are emulated, but the graph is the
# one exported there).
@pytest.fixture(scope='module', params=['float32', 'mixed_bfloat16'])
def exported(tmp_path_factory, request):
  model_dir = str(tmp_path_factory.mktemp('model'))
  keras.utils.set_random_seed(3)
  keras.mixed_precision.set_global_policy(request.param)
  try:
    net = _net()
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
  _, served = exported
  probability = served.serve(tf.constant([], tf.string))['probability']
  assert probability.shape == (0,) and probability.dtype == tf.float32


def test_serve_scores_images_as_the_net_does(exported):
  net, served = exported
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, SIZE, SIZE), np.uint8)
  for count in (1, 3):
    probability = served.serve(tf.constant(
        [_png(image) for image in images[:count]]))['probability'].numpy()
    expected = net.predict(images[:count, ..., None], verbose=0).reshape(-1)
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


def _run_predict(*args):
  return subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'tools', 'predict'), *args],
      capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)


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
  model_dir.mkdir()
  serving.export_model(net, str(model_dir), SIZE)
  data_dir = tmp_path / 'data'
  data_dir.mkdir()
  (data_dir / 'xray_info.json').write_text(json.dumps(
      {'format_version': 2, 'class_names': ['healthy', 'sick'],
       'image': {'height': SIZE, 'width': SIZE}, 'splits': {}}))
  (model_dir / 'config.json').write_text(json.dumps(
      {'image_size': SIZE, 'data_dir': str(data_dir)}))
  rng = np.random.default_rng(1)
  images = tmp_path / 'images'
  names = ['a.png', 'b.png', 'deeper/c.png', 'deeper/d.png', 'e.png']
  for name in names:
    path = images / name
    path.parent.mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40, 30), np.uint8)).save(path)
  (images / '.hidden.png').write_bytes(b'litter')  # skipped
  (images / 'notes.txt').write_text('not an image')  # skipped
  (tmp_path / 'empty').mkdir()
  files = sorted(str(images / n) for n in names)
  expected = net.predict(np.stack([_reference(f) for f in files])[..., None],
                         verbose=0).reshape(-1)
  threshold = float(np.median(expected))  # decisions of both kinds
  (model_dir / 'results.json').write_text(json.dumps(
      {'youden': {'threshold': threshold}}))

  # A folder, as CSV, two images per model call (three calls).
  result = _run_predict(f'--model_dir={model_dir}', '--output=csv',
                        '--batch_size=2', str(images))
  assert result.returncode == 0, result.stderr
  rows = list(csv.reader(io.StringIO(result.stdout)))
  assert rows[0] == ['path', 'P', 'decision']
  assert [r[0] for r in rows[1:]] == files
  np.testing.assert_allclose([float(r[1]) for r in rows[1:]], expected,
                             atol=6e-5)
  assert [r[2] for r in rows[1:]] == [
      'sick' if p > threshold else 'healthy' for p in expected]
  assert {'healthy', 'sick'} == {r[2] for r in rows[1:]}
  assert f'threshold {threshold:.4f}: the Youden threshold' in result.stderr
  assert 'scored 5/5 images' in result.stderr
  assert 'scored 2/5 images' in result.stderr  # a line per batch here

  # A calibrated signature (as tools/train exports): its P and decision,
  # not results.json's threshold (which would call every image sick).
  from xray_tfdata import evaluation  # pylint: disable=g-import-not-at-top
  calibrated = evaluation.apply_temperature(expected, 3.0)
  low = np.sort(calibrated)
  cut = float(low[1:3].mean())  # 2 healthy, 3 sick
  serving.export_model(net, str(model_dir), SIZE,
                       calibration={'temperature': 3.0, 'threshold': cut})
  (model_dir / 'results.json').write_text(json.dumps(
      {'youden': {'threshold': 0.0}}))
  result = _run_predict(f'--model_dir={model_dir}', str(images))
  assert result.returncode == 0, result.stderr
  lines = [l.split('\t') for l in result.stdout.strip().splitlines()]
  assert [l[0] for l in lines] == files
  np.testing.assert_allclose([float(l[1]) for l in lines], calibrated,
                             atol=6e-5)
  assert [l[2] for l in lines] == ['sick' if p > cut else 'healthy'
                                   for p in calibrated]
  assert [l[2] for l in lines].count('sick') == 3
  assert (f'threshold {cut:.4f}: the Youden threshold on validation, on the '
          'calibrated scale, from the serving signature') in result.stderr
  serving.export_model(net, str(model_dir), SIZE)  # uncalibrated again

  # Globs, an empty folder and a glob without matches; no results.json.
  (model_dir / 'results.json').unlink()
  result = _run_predict(f'--model_dir={model_dir}',
                        str(images / '**' / 'c.png'), str(images / '?.png'),
                        str(tmp_path / 'empty'), str(tmp_path / '*.gif'))
  assert result.returncode == 1
  lines = [l.split('\t') for l in result.stdout.strip().splitlines()]
  assert [l[0] for l in lines] == [files[2]] + files[:2] + [files[4]]
  by_path = dict(zip(files, expected))
  assert [l[2] for l in lines] == ['sick' if by_path[l[0]] > 0.5
                                   else 'healthy' for l in lines]
  assert 'threshold 0.5000: the default (no threshold in' in result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert errors == [
      f'error: {tmp_path / "empty"}: is a folder without image files '
      '(.jpeg, .jpg, .png, ...)',
      f'error: {tmp_path / "*.gif"}: matches no file']


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


def test_operating_threshold_is_the_runs_youden_threshold_else_one_half(
    tmp_path):
  threshold, source = serving.operating_threshold(str(tmp_path))
  assert threshold == 0.5 and 'default' in source
  (tmp_path / 'results.json').write_text(json.dumps(
      {'youden': {'threshold': 0.3125}}))
  threshold, source = serving.operating_threshold(str(tmp_path))
  assert threshold == 0.3125 and 'Youden' in source



def test_calibration_of_a_run_is_the_val_temperature_and_youden_threshold():
  """From evaluate_label's real results: T fitted on val, and the Youden
  threshold of the raw val P carried onto the calibrated scale."""
  from xray_tfdata import evaluation  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(4)
  labels = np.arange(40) % 2
  # Over-confident: far from 1/2, often wrong, so T is well above 1.
  probs = np.clip(np.where(rng.random(40) < 0.7, labels, 1 - labels) * 0.9 +
                  rng.uniform(0.02, 0.08, 40), 0, 1)
  evaluated = evaluation.evaluate_label(
      {'val': (labels, probs), 'test': (labels, probs[::-1])},
      num_resamples=10)
  calibration = serving.calibration_of(
      {'evaluation': {'labels': {'PNEUMONIA': evaluated}}})
  temperature = evaluation.fit_temperature(labels, probs)
  assert temperature > 1.5
  assert calibration == {
      'temperature': pytest.approx(temperature),
      'threshold': pytest.approx(float(evaluation.apply_temperature(
          evaluation.youden_threshold(labels, probs), temperature)))}
  assert serving.calibration_of({'youden': {'threshold': 0.3}}) is None


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
  '<stem>.gradcam.png' per scored image, the stored image at its size
  with jet(P x the heatmap gradcam computes on the stored pixels of the
  run's model.keras) over it, and a caption and PNG text naming the class,
  the P printed for that image and its decision; a file as --heatmap_dir
  is one error line."""
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
  (model_dir / 'config.json').write_text(json.dumps({'image_size': size}))
  rng = np.random.default_rng(2)
  images = tmp_path / 'images'
  # Two files with one stem: the second overlay is 'c-2'.
  names = ['a.png', 'b.png', 'c.png', 'deeper/c.png']
  for name in names:
    path = images / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (80, 60), np.uint8)).save(path)
  (images / 'broken.png').write_bytes(b'not a png')  # scored as an error
  files = sorted(str(images / n) for n in names)
  pixels = np.stack([imaging.load_image(f, size) for f in files])
  maps = gradcam.heatmaps(net, pixels)

  out = tmp_path / 'heat'
  result = _run_predict(f'--model_dir={model_dir}', f'--heatmap_dir={out}',
                        str(images))
  assert result.returncode == 1, result.stderr  # broken.png
  rows = [l.split('\t') for l in result.stdout.splitlines()]
  assert [row[0] for row in rows] == files
  assert 'threshold 0.5000: the default' in result.stderr
  assert f'wrote 4 Grad-CAM overlays to {out}' in result.stderr
  stems = ['a', 'b', 'c', 'c-2']  # files' order: a, b, c, deeper/c
  assert sorted(os.listdir(out)) == sorted(f'{s}.gradcam.png' for s in stems)
  for stem, image, heatmap, row in zip(stems, pixels, maps, rows):
    with Image.open(out / f'{stem}.gradcam.png') as png:
      assert png.mode == 'RGB' and png.size[1] > size
      text = dict(png.text)
      written = np.asarray(png).astype(int)
    assert (text['label'], text['decision']) == ('PNEUMONIA', row[2])
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
                        f'--heatmap_dir={files[0]}', str(images))
  assert result.returncode == 1 and result.stdout == ''
  assert [l for l in result.stderr.splitlines() if l.startswith('error')] == [
      f'error: --heatmap_dir {files[0]} is a file, not a folder: pass a '
      'folder (it is made if missing)']
