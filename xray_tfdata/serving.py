"""A trained model, exported and used: model.keras, serving/, predictions.

  serving.export_model(net, model_dir, image_size,
                       calibration=serving.calibration_of(results))
  found = serving.find_images(['scans/', 'more/*.png'])   # folders, globs
  serving.predict_paths(os.path.join(model_dir, serving.SERVING_DIR), paths)
  serving.thresholds_of(run_dir.read(model_dir))   # the Youden thresholds
  serving.write_heatmaps(model_dir, paths, out_dir)   # Grad-CAM overlays

serving/ is a SavedModel whose 'serve' signature takes encoded JPEG or PNG
bytes [N] and returns {'probability': [N, L]}, one column per label in the
order of the run's label_names (a class-folder run: L = 1, its positive
class), for TF Serving and for `tools/predict`. tools/train exports it with
the run's calibration (`calibration_of`): each label's P is then scaled by
the temperature fitted on validation, and the signature also returns
'threshold' (the Youden threshold chosen on validation, on that scale) and
'decision' (P > threshold), each [N, L].

Everything read from the run directory (label names, thresholds,
temperatures, the stored size, the dataset) is read through `run_dir`.
"""

import contextlib
import glob
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from xray_tfdata import dataset_info
from xray_tfdata import imaging
from xray_tfdata import run_dir
from xray_tfdata import sources
from xray_tfdata.config import TrainingError
from xray_tfdata.run_dir import MODEL_FILE
from xray_tfdata.run_dir import SERVING_DIR

DEFAULT_THRESHOLD = 0.5  # where a run's evaluation chose no threshold


def export_model(net, model_dir, image_size, calibration=None):
  """Writes model.keras and the serving SavedModel, each atomically.

  Args:
    net: the trained model, L outputs.
    model_dir: the folder to write MODEL_FILE and SERVING_DIR into.
    image_size: the stored height and width the model takes.
    calibration: None, or `calibration_of`'s dict: {'temperature': T,
      'threshold': t}, each a float or a list of one per output (and
      optionally 'label_names'). The signature's 'probability' is then
      temperature-scaled, sigmoid(logit(p) / T) per label
      (`evaluation.apply_temperature`), and it also returns 'threshold' (t,
      on the calibrated scale) and 'decision' (probability > t), all [N, L].

  Raises:
    TrainingError: the calibration names another number of labels than
      the model has outputs.
  """
  num_outputs = int(net.output_shape[-1])
  for key in ('label_names', 'temperature', 'threshold'):
    given = (calibration or {}).get(key)
    if isinstance(given, (list, tuple)) and len(given) != num_outputs:
      raise TrainingError(
          f'the calibration has {len(given)} {key} for a model of '
          f'{num_outputs} outputs: pass the calibration of this run')
  tmp = os.path.join(model_dir, '.tmp-' + MODEL_FILE)
  try:
    net.save(tmp)
  except BaseException:
    # A full disk or an interrupt: no half-written model left beside the run.
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
  os.replace(tmp, os.path.join(model_dir, MODEL_FILE))

  size = (image_size, image_size)

  def decode(data):
    """Encoded bytes -> the stored form, uint8 [height, width, 1]."""
    image = tf.io.decode_image(data, channels=1, dtype=tf.uint8,
                               expand_animations=False)
    # Squash to the stored size with an anti-aliased filter, as the
    # converter does (it uses PIL; the two agree to a few grey levels).
    image = tf.image.resize(image, size, antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)

  def probability(encoded):
    """P [N, L] of N > 0 encoded images."""
    images = tf.map_fn(decode, encoded,
                       fn_output_signature=tf.TensorSpec(size + (1,),
                                                         tf.uint8))
    return tf.reshape(tf.cast(net(images, training=False), tf.float32),
                      [-1, num_outputs])

  def serve(encoded):
    """Encoded JPEG or PNG bytes [N] -> {'probability': [N, L], ...}."""
    # The net never sees an empty batch: oneDNN's bfloat16 convolution (the
    # kernels a mixed_bfloat16 model runs on AVX512_BF16 CPUs) rejects N = 0
    # ("input depth must be evenly divisible by filter depth").
    scores = tf.cond(tf.size(encoded) > 0, lambda: probability(encoded),
                     lambda: tf.zeros([0, num_outputs], tf.float32))
    # Named outputs: the signature's output is 'probability', not
    # 'output_0' (TF Serving and saved_model_cli show these names).
    if calibration is None:
      return {'probability': scores}
    return _calibrated_outputs(scores, calibration)

  archive = keras.export.ExportArchive()
  archive.track(net)
  archive.add_endpoint('serve', serve,
                       input_signature=[tf.TensorSpec([None], tf.string)])
  final = os.path.join(model_dir, SERVING_DIR)
  tmp = final + '.tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  archive.write_out(tmp, verbose=False)
  shutil.rmtree(final, ignore_errors=True)
  os.replace(tmp, final)


def _calibrated_outputs(probability, calibration):
  """The calibrated signature's outputs, [N, L] each: every label's P
  scaled by its temperature, its threshold, and the decision."""
  # Clipped as evaluation.logit clips: a saturated float32 sigmoid has no
  # logit left.
  epsilon = 1e-7
  p = tf.clip_by_value(tf.cast(probability, tf.float64), epsilon, 1 - epsilon)
  logits = tf.math.log(p) - tf.math.log1p(-p)
  temperatures = tf.constant(calibration['temperature'], tf.float64)
  calibrated = tf.cast(tf.sigmoid(logits / temperatures), tf.float32)
  threshold = tf.broadcast_to(
      tf.constant(calibration['threshold'], tf.float32), tf.shape(calibrated))
  return {'probability': calibrated, 'threshold': threshold,
          'decision': calibrated > threshold}


def _preprocessing(serving_dir):
  """(stored size or None, DICOM VOI policy) of the run next to serving/.

  The size comes from its config.json; the VOI policy from the xray_info.json
  of the dataset it trained on, where that is still readable ('auto', the
  converter's default, otherwise).
  """
  try:
    run = run_dir.read(os.path.dirname(os.path.abspath(serving_dir)),
                       finished=False)
  except run_dir.RunDirError:
    return None, 'auto'
  if run.image_size is None:
    return None, 'auto'
  try:
    info = dataset_info.load_info(run.data_dir or '')
  except dataset_info.DatasetError:
    # moved, deleted, or on a machine without it
    return run.image_size, dataset_info.DEFAULT_VOI
  return run.image_size, info.dicom_voi


_GLOB_CHARACTERS = frozenset('*?[')


def find_images(inputs):
  """The image files that paths, folders and globs name, in order.

  A folder stands for the image files under it (any depth, by extension,
  sorted; hidden files and macOS' __MACOSX litter skipped), a glob for its
  matches (sorted; `**` matches any depth); any other path, and a file
  whose name only looks like a pattern, for itself.

  Args:
    inputs: paths, folders and glob patterns, as given on a command line.

  Returns:
    A list of (path, None) for each file to score, and (input, reason) for
    a folder without image files or a glob without matches.
  """
  found = []
  for name in inputs:
    # A file whose name holds '[' or '*' is itself, not a pattern.
    if _GLOB_CHARACTERS & set(name) and not os.path.isfile(name):
      matches = sorted(glob.glob(name, recursive=True))
      files = [m for m in matches if not os.path.isdir(m)]
      found += [(m, None) for m in files] or [
          (name, 'matches no file' if not matches else
           'matches only folders')]
    elif os.path.isdir(name):
      files = _images_under(name)
      found += [(f, None) for f in files] or [
          (name, 'is a folder without image files '
           f'({", ".join(sources.IMAGE_EXTENSIONS[:3])}, ...)')]
    else:
      found.append((name, None))
  return found


def _images_under(folder):
  """The image files under folder, sorted, litter skipped."""
  files = []
  for root, dirs, names in os.walk(folder):
    dirs[:] = [d for d in dirs if not d.startswith('.') and d != '__MACOSX']
    files += [os.path.join(root, n) for n in names
              if not n.startswith('.') and
              n.lower().endswith(sources.IMAGE_EXTENSIONS)]
  return sorted(files)


BATCH_SIZE = 64  # images per call of the serving model


def predict_paths(serving_dir, paths, batch_size=BATCH_SIZE, progress=None):
  """P per label for image files, each decoded as the converter decodes it.

  Every file is read by `imaging.load_image` at the run's stored size (so
  CMYK, palette, alpha, 16-bit and DICOM files are read exactly as in
  training; DICOM with the VOI policy of the dataset, where its
  xray_info.json is still at the run's data_dir), then scored by the
  exported serving model, batch_size files per call. One bad file does not
  cost the others their results. P is the signature's 'probability':
  temperature-calibrated for a run exported with calibration.

  Args:
    serving_dir: a finished run's serving/ folder.
    paths: image files.
    batch_size: files decoded and scored per call of the model.
    progress: None, or a function called as progress(done, total) after
      each batch.

  Returns:
    One (P, None) or (None, reason) per path, in order; P is a list of one
    float per label, in the run's label_names order.

  Raises:
    TrainingError: no serving model in serving_dir.
  """
  return [(outputs['probability'] if outputs else None, reason)
          for outputs, reason in score_paths(serving_dir, paths, batch_size,
                                             progress)]


def score_paths(serving_dir, paths, batch_size=BATCH_SIZE, progress=None):
  """The serving signature's outputs for image files (see `predict_paths`).

  Returns:
    One (outputs, None) or (None, reason) per path, in order; outputs is
    {'probability': [float per label]} and, from a signature exported with
    calibration (`export_model`), 'threshold' ([float per label], on the
    calibrated scale) and 'decision' ([bool per label]).

  Raises:
    TrainingError: no serving model in serving_dir.
  """
  check_serving_dir(serving_dir)
  size, voi = _preprocessing(serving_dir)
  served = None
  results = []
  for start in range(0, len(paths), batch_size):
    batch = [_encoded(path, size, voi) for path in
             paths[start:start + batch_size]]
    blobs = [blob for blob, _ in batch if blob is not None]
    rows = iter(())
    if blobs:
      served = served or tf.saved_model.load(serving_dir)
      try:
        outputs = served.serve(tf.constant(blobs))
      except tf.errors.InvalidArgumentError as e:
        raise TrainingError(f'cannot decode an image as JPEG or PNG '
                            f'({e.message.splitlines()[0][:100]})') from e
      columns = {_OUTPUT_NAMES.get(name, name):
                 np.reshape(value.numpy(), (len(blobs), -1)).tolist()
                 for name, value in outputs.items()}
      rows = iter([dict(zip(columns, values))
                   for values in zip(*columns.values())])
    results += [(next(rows), None) if blob is not None
                else (None, reason) for blob, reason in batch]
    if progress:
      progress(len(results), len(paths))
  return results


# A run exported before the one label path served P(positive) [N] and, when
# calibrated, 'positive' [N]: read as [N, 1] and its 'decision'.
_OUTPUT_NAMES = {'positive': 'decision'}


def _as_run(results):
  """A run_dir.Run of a Run, or of a results dict held in memory (training
  calls before results.json is written)."""
  if isinstance(results, run_dir.Run):
    return results
  return run_dir.Run(model_dir='', record={}, results=results)


def thresholds_of(run, calibrated=False):
  """The thresholds a run decides at, one per label, and where they come
  from.

  Args:
    run: a run_dir.Run (`run_dir.read`), or its results dict.
    calibrated: on the temperature-scaled P (what a signature exported with
      calibration serves) instead of the raw P (model.keras').

  Returns:
    ([threshold per label, in run.label_names order], source in words):
    the Youden threshold chosen on validation (with calibrated, carried
    onto the scale of the label's temperature; the raw one for a label
    without a temperature), DEFAULT_THRESHOLD for a label without one.
  """
  run = _as_run(run)
  raw = run.thresholds('youden')
  scaled = run.thresholds('youden', calibrated=True)
  temperatures = _temperatures(run) if calibrated else {}
  thresholds, defaults, scaled_ones = [], [], []
  for name in run.label_names:
    if name in temperatures:
      thresholds.append(scaled[name])
      scaled_ones.append(name)
    elif raw.get(name) is not None:
      thresholds.append(raw[name])
    else:
      thresholds.append(DEFAULT_THRESHOLD)
      defaults.append(name)
  where = run_dir.path(run.model_dir, run_dir.RESULTS_JSON)
  source = ('the Youden threshold' + ('s' if len(thresholds) > 1 else '') +
            ' on validation' +
            (', on the calibrated scale,' if scaled_ones else '') +
            f' from {where}')
  if len(defaults) == len(thresholds):
    source = f'the default (no threshold in {where})'
  elif defaults:
    source += f' ({DEFAULT_THRESHOLD} for {", ".join(defaults)}: none there)'
  return thresholds, source


def served_thresholds(run, scores):
  """The thresholds that decide the P a signature served (`score_paths`),
  on its scale: `thresholds_of` the run, calibrated where the signature is.

  Args:
    run: the run_dir.Run whose serving/ scored.
    scores: `score_paths`' results.

  Returns:
    ([threshold per label], source in words).

  Raises:
    TrainingError: the signature serves another number of outputs than
      config.json names labels, or decides at other thresholds than
      results.json's (a serving/ exported from another evaluation).
  """
  labels = run.label_names
  served = next((outputs for outputs, _ in scores if outputs), {})
  if served and len(served['probability']) != len(labels):
    raise TrainingError(
        f'{SERVING_DIR}/ serves {len(served["probability"])} outputs but '
        f'config.json names {len(labels)} labels ({", ".join(labels)}): '
        'pass --model_dir of one finished run')
  calibrated = 'threshold' in served
  thresholds, source = thresholds_of(run, calibrated=calibrated)
  if calibrated and not np.allclose(served['threshold'], thresholds,
                                    rtol=0, atol=1e-6):
    raise TrainingError(
        f'{SERVING_DIR}/ decides at {served["threshold"]} but results.json '
        f'at {thresholds}: {SERVING_DIR}/ was exported from another '
        'evaluation; rerun tools/train with --overwrite')
  return thresholds, source


def _temperatures(run):
  """{label: T} of the labels served calibrated: those with a temperature
  and their Youden threshold on its scale."""
  scaled = run.thresholds('youden', calibrated=True)
  return {name: t for name, t in run.temperatures().items()
          if t and scaled.get(name) is not None}


def calibration_of(results):
  """The calibration to export with a run (`export_model`).

  Args:
    results: the run's results dict (format 2, or a run's of an earlier
      version), or a run_dir.Run.

  Returns:
    None for a run without an evaluation; else {'label_names': the model's
    outputs, 'temperature': [T fitted on validation per label],
    'threshold': [`thresholds_of(run, calibrated=True)`],
    'uncalibrated': labels without a temperature (served with T = 1),
    'default_threshold': labels without an operating point, decided at
    DEFAULT_THRESHOLD}.
  """
  run = _as_run(results)
  if not run.label_results():
    return None
  temperatures = _temperatures(run)
  thresholds, _ = thresholds_of(run, calibrated=True)
  raw = run.thresholds('youden')
  names = list(run.label_names)
  return {
      'label_names': names,
      'temperature': [temperatures.get(n) or 1.0 for n in names],
      'threshold': thresholds,
      'uncalibrated': [n for n in names if not temperatures.get(n)],
      'default_threshold': [n for n in names if raw.get(n) is None]}


def check_heatmap_dir(out_dir):
  """Makes out_dir (the Grad-CAM overlays' folder) if missing.

  Raises:
    TrainingError: out_dir is a file, or cannot be made.
  """
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise TrainingError(f'--heatmap_dir {out_dir} is a file, not a folder: '
                        'pass a folder (it is made if missing)')
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise TrainingError(f'--heatmap_dir {out_dir}: cannot make the folder '
                        f'({e.strerror}); pass a writable folder') from e


def _overlay_names(paths):
  """A distinct file stem per path: its own, with -2, -3, ... for repeats
  (scans/a/1.png and scans/b/1.png)."""
  names, used = [], set()
  for path in paths:
    stem = os.path.splitext(os.path.basename(path))[0]
    name, count = stem, 1
    while name in used:
      count += 1
      name = f'{stem}-{count}'
    used.add(name)
    names.append(name)
  return names


def write_heatmaps(model_dir, paths, out_dir, batch_size=BATCH_SIZE,
                   probabilities=None, thresholds=None):
  """Writes a Grad-CAM overlay PNG per image file and label (tools/predict
  --heatmap_dir): `<stem>.<label>.gradcam.png`, the stored image (as
  `predict_paths` decodes it) with that label's heatmap over it, naming
  the label, P and the decision at the threshold, and coloured P x the
  map (`gradcam.annotated`).

  Grad-CAM needs the gradient, so it runs the Keras model (model.keras),
  not the SavedModel.

  Args:
    model_dir: a finished tools/train run.
    paths: image files that `predict_paths` scored (readable ones).
    out_dir: the folder (made if missing).
    batch_size: images per heatmap computation.
    probabilities: P per path as reported beside the overlays (a list per
      label), e.g. the serving signature's; None: model.keras's own
      (uncalibrated) P.
    thresholds: the thresholds on that P's scale, one per label; None:
      `thresholds_of` the run (uncalibrated).

  Returns:
    The paths written, in the order of paths, each image's labels in
    order.

  Raises:
    TrainingError: no model.keras in model_dir, or out_dir is unusable.
    run_dir.RunDirError: no readable config.json in model_dir.
    gradcam.GradCamError: the model has no spatial feature map.
    imaging.ImageError: a file cannot be read.
  """
  from xray_tfdata import gradcam  # pylint: disable=g-import-not-at-top
  check_heatmap_dir(out_dir)
  model_file = run_dir.path(model_dir, MODEL_FILE)
  if not os.path.exists(model_file):
    raise TrainingError(f'{model_dir} has no {MODEL_FILE} for Grad-CAM: '
                        'pass --model_dir of a finished run, or drop '
                        '--heatmap_dir')
  run = run_dir.read(model_dir, finished=False)
  labels = run.label_names
  if thresholds is None:
    thresholds, _ = thresholds_of(run)
  # This module is part of xray_tfdata, so its layers are registered.
  net = keras.models.load_model(model_file, compile=False)
  size, voi = _preprocessing(os.path.join(model_dir, SERVING_DIR))
  size = size or int(net.input_shape[1])
  names = _overlay_names(paths)
  written = []
  for start in range(0, len(paths), batch_size):
    images = np.stack([imaging.load_image(path, size, voi)
                       for path in paths[start:start + batch_size]])
    if probabilities is None:
      probs = np.asarray(net.predict(images, verbose=0), np.float64)
    else:
      probs = np.asarray(probabilities[start:start + batch_size], np.float64)
    probs = probs.reshape(len(images), len(labels))
    by_label = [gradcam.write_overlays(
        out_dir, names[start:start + batch_size], images,
        gradcam.heatmaps(net, images, output_index=index), label,
        probs[:, index], thresholds[index], suffix='.' + file_label(label))
                for index, label in enumerate(labels)]
    written += [path for per_image in zip(*by_label) for path in per_image]
  return written


def file_label(label):
  """A label as a file name part: 'Pleural_Thickening' ->
  'pleural_thickening'."""
  return ''.join(c if c.isalnum() else '_' for c in str(label).lower())


def check_serving_dir(serving_dir):
  """Raises TrainingError, naming the fix, unless serving_dir holds an
  exported model."""
  if not os.path.exists(os.path.join(serving_dir, 'saved_model.pb')):
    raise TrainingError(f'{serving_dir} has no exported model: pass '
                        f'--model_dir of a finished run (its {SERVING_DIR}/)')


def _encoded(path, size, voi):
  """(bytes for the serving model, None), or (None, why path is unusable):
  the stored image as PNG; a run without config.json (no known size) gets
  the file's own bytes."""
  if os.path.isdir(path):
    return None, 'is a folder, not an image file'
  if not os.path.lexists(path):
    return None, 'does not exist'
  if size is None:
    try:
      with open(path, 'rb') as f:
        return f.read(), None
    except OSError as e:
      return None, f'cannot read: {e.strerror}'
  try:
    pixels = imaging.load_image(path, size, voi)
  except imaging.ImageError as e:
    return None, e.reason
  return imaging.encode_png(pixels[..., 0]), None


def predict_files(serving_dir, paths):
  """P per label for image files; see `predict_paths`.

  Args:
    serving_dir: a finished run's serving/ folder.
    paths: image files.

  Returns:
    A list of P (a list of one float per label), one per path.

  Raises:
    TrainingError: no serving model in serving_dir, or a file is missing or
      cannot be decoded (the first such file and its reason).
  """
  probabilities = []
  for path, (prob, reason) in zip(paths, predict_paths(serving_dir, paths)):
    if reason:
      raise TrainingError(f'image {path}: {reason}')
    probabilities.append(prob)
  return probabilities
