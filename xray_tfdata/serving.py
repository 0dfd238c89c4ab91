"""A trained model, exported and used: model.keras, serving/, predictions.

  serving.export_model(net, model_dir, image_size)   # end of training
  found = serving.find_images(['scans/', 'more/*.png'])   # folders, globs
  serving.predict_paths(os.path.join(model_dir, serving.SERVING_DIR), paths)
  serving.operating_threshold(model_dir)   # the run's Youden threshold
  serving.write_heatmaps(model_dir, paths, out_dir)   # Grad-CAM overlays

serving/ is a SavedModel whose 'serve' signature takes encoded JPEG or PNG
bytes [N] and returns {'probability': P(pneumonia) [N]}, for TF Serving and
for `tools/predict`; tools/train exports it with the run's calibration
(`calibration_of`), so P is temperature-scaled and the signature also
returns the Youden 'threshold' on that scale and the decision 'positive'.
A multi-label model's signature returns 'probability', 'threshold' and
'decision' [N, L] instead, each label with its own temperature and
threshold, columns in the order of config.json's label_names.
"""

import contextlib
import glob
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from xray_tfdata import atomic
from xray_tfdata import dataset_info
from xray_tfdata import imaging
from xray_tfdata import resume
from xray_tfdata import schema
from xray_tfdata import sources
from xray_tfdata.config import TrainingError
from xray_tfdata.run_dir import MODEL_FILE
from xray_tfdata.run_dir import SERVING_DIR



def export_model(net, model_dir, image_size, calibration=None):
  """Writes model.keras and the serving SavedModel, each atomically.

  Args:
    net: the trained model.
    model_dir: the folder to write MODEL_FILE and SERVING_DIR into.
    image_size: the stored height and width the model takes.
    calibration: None, or {'temperature': T, 'threshold': t}:
      the signature's 'probability' is then temperature-scaled,
      sigmoid(logit(p) / T) (`evaluation.apply_temperature`), and it also
      returns 'threshold' (t, on the calibrated scale, per image) and
      'positive' (probability > t). For a multi-label model (L outputs,
      or a calibration with 'label_names'), `calibration_of`'s per-label
      lists: then 'probability', 'threshold' and 'decision' are [N, L].
  """
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
  num_outputs = int(net.output_shape[-1])
  # One output is a binary model's P(positive) [N], unless the calibration
  # says it is a multi-label model of one label.
  multilabel = num_outputs > 1 or bool(calibration and
                                       'label_names' in calibration)
  shape = [-1, num_outputs] if multilabel else [-1]

  def decode(data):
    """Encoded bytes -> the stored form, uint8 [height, width, 1]."""
    image = tf.io.decode_image(data, channels=1, dtype=tf.uint8,
                               expand_animations=False)
    # Squash to the stored size with an anti-aliased filter, as the
    # converter does (it uses PIL; the two agree to a few grey levels).
    image = tf.image.resize(image, size, antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)

  def probability(encoded):
    """P(pneumonia) [N] of N > 0 encoded images."""
    images = tf.map_fn(decode, encoded,
                       fn_output_signature=tf.TensorSpec(size + (1,),
                                                         tf.uint8))
    return tf.reshape(tf.cast(net(images, training=False), tf.float32), shape)

  def serve(encoded):
    """Encoded JPEG or PNG bytes [N] -> {'probability': P(pneumonia) [N]}."""
    # The net never sees an empty batch: oneDNN's bfloat16 convolution (the
    # kernels a mixed_bfloat16 model runs on AVX512_BF16 CPUs) rejects N = 0
    # ("input depth must be evenly divisible by filter depth").
    scores = tf.cond(tf.size(encoded) > 0, lambda: probability(encoded),
                     lambda: tf.zeros([0] + shape[1:], tf.float32))
    # A named output: the signature's output is 'probability', not
    # 'output_0' (TF Serving and saved_model_cli show this name).
    if calibration is None:
      return {'probability': scores}
    if multilabel:
      return _calibrated_label_outputs(scores, calibration)
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
  """The calibrated signature's outputs (see `export_model`)."""
  # Clipped as evaluation.logit clips: a saturated float32 sigmoid has no
  # logit left.
  epsilon = 1e-7
  p = tf.clip_by_value(tf.cast(probability, tf.float64), epsilon, 1 - epsilon)
  logits = tf.math.log(p) - tf.math.log1p(-p)
  calibrated = tf.cast(tf.sigmoid(logits / float(calibration['temperature'])),
                       tf.float32)
  threshold = tf.fill(tf.shape(calibrated),
                      tf.constant(calibration['threshold'], tf.float32))
  return {'probability': calibrated, 'threshold': threshold,
          'positive': calibrated > threshold}


def _calibrated_label_outputs(probability, calibration):
  """A multi-label signature's calibrated outputs, [N, L] each: every
  label's probability scaled by its own temperature, its threshold, and
  the decision."""
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
    config = atomic.read_json(os.path.join(os.path.dirname(
        os.path.abspath(serving_dir)), resume.CONFIG_JSON))
    size = int(config['image_size'])
  except (OSError, KeyError, TypeError, ValueError):
    return None, 'auto'
  try:
    info = dataset_info.load_info(config.get('data_dir') or '')
  except dataset_info.DatasetError:
    # moved, deleted, or on a machine without it
    return size, dataset_info.DEFAULT_VOI
  return size, info.dicom_voi


DEFAULT_THRESHOLD = 0.5
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


def operating_threshold(model_dir):
  """The threshold a run decides at, and where it comes from.

  Args:
    model_dir: a tools/train run.

  Returns:
    (threshold, source): the Youden threshold chosen on validation, from
    the run's results.json, or DEFAULT_THRESHOLD where that has none;
    source says which, in words.
  """
  path = os.path.join(model_dir, resume.RESULTS_JSON)
  try:
    threshold = float(atomic.read_json(path)['youden']['threshold'])
  except (OSError, KeyError, TypeError, ValueError):
    return DEFAULT_THRESHOLD, f'the default (no threshold in {path})'
  return threshold, f'the Youden threshold on validation, from {path}'


def class_names(model_dir):
  """(negative, positive) class names of the dataset a run trained on;
  NORMAL and PNEUMONIA where its xray_info.json is no longer readable."""
  try:
    config = atomic.read_json(os.path.join(model_dir, resume.CONFIG_JSON))
    names = dataset_info.load_info(config.get('data_dir') or '').class_names
    negative, positive = names
    return str(negative), str(positive)
  except (OSError, KeyError, TypeError, ValueError, AttributeError):
    return schema.DEFAULT_CLASS_NAMES  # DatasetError is a ValueError


BATCH_SIZE = 64  # images per call of the serving model


def predict_paths(serving_dir, paths, batch_size=BATCH_SIZE, progress=None):
  """P(pneumonia) for image files, each decoded as the converter decodes it.

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
    One (probability, None) or (None, reason) per path, in order.

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
    {'probability': float} and, from a signature exported with calibration
    (`export_model`), 'threshold' (float, on the calibrated scale) and
    'positive' (bool).

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
      columns = {name: value.numpy().tolist()
                 for name, value in outputs.items()}
      rows = iter([dict(zip(columns, values))
                   for values in zip(*columns.values())])
    results += [(next(rows), None) if blob is not None
                else (None, reason) for blob, reason in batch]
    if progress:
      progress(len(results), len(paths))
  return results


def calibration_of(results):
  """The calibration to export with a run (`export_model`), from its results.

  Args:
    results: the run's results dict (`training.evaluate_splits`).

  Returns:
    {'temperature': T fitted on validation, 'threshold': the Youden
    threshold chosen on validation, on the calibrated scale}, of the run's
    one label; None where the evaluation has no temperature (or several
    labels).
  """
  if results.get('evaluation', {}).get('multilabel'):
    return label_calibration_of(results)
  labels = results.get('evaluation', {}).get('labels', {})
  if len(labels) != 1:
    return None
  (result,) = labels.values()
  youden = result.get('thresholds', {}).get('youden', {})
  if not result.get('calibration') or 'calibrated_threshold' not in youden:
    return None
  return {'temperature': float(result['calibration']['temperature']),
          'threshold': float(youden['calibrated_threshold'])}


def label_calibration_of(results):
  """A multi-label run's calibration to export (`export_model`).

  Returns:
    {'label_names': the model's outputs, 'temperature': [T per label],
     'threshold': [Youden threshold chosen on validation, calibrated, per
     label], 'uncalibrated': labels without a temperature (T = 1),
     'default_threshold': labels without an operating point, decided at
     DEFAULT_THRESHOLD}.
  """
  evaluation_results = results['evaluation']
  out = {'label_names': list(evaluation_results['label_names']),
         'temperature': [], 'threshold': [], 'uncalibrated': [],
         'default_threshold': []}
  for name in out['label_names']:
    result = evaluation_results['labels'].get(name, {})
    youden = result.get('thresholds', {}).get('youden', {})
    if result.get('calibration') and 'calibrated_threshold' in youden:
      out['temperature'].append(float(result['calibration']['temperature']))
      out['threshold'].append(float(youden['calibrated_threshold']))
      continue
    out['temperature'].append(1.0)
    out['uncalibrated'].append(name)
    if 'threshold' in youden:
      out['threshold'].append(float(youden['threshold']))
    else:
      out['threshold'].append(DEFAULT_THRESHOLD)
      out['default_threshold'].append(name)
  return out


def label_names(model_dir):
  """A multi-label run's outputs (config.json's label_names, else its
  results.json's), or None for a single-label run."""
  for name, get in ((resume.CONFIG_JSON, lambda d: d.get('label_names')),
                    (resume.RESULTS_JSON,
                     lambda d: d.get('evaluation', {}).get('label_names'))):
    try:
      names = get(atomic.read_json(os.path.join(model_dir, name)))
    except (OSError, ValueError, AttributeError):
      continue
    if names:
      return list(names)
  return None


def label_thresholds(model_dir, names):
  """(thresholds per label, source) a multi-label run decides at when its
  signature has none: the Youden thresholds in results.json, else
  DEFAULT_THRESHOLD."""
  path = os.path.join(model_dir, resume.RESULTS_JSON)
  try:
    labels = atomic.read_json(path)['evaluation']['labels']
  except (OSError, KeyError, TypeError, ValueError):
    labels = {}
  thresholds, defaults = [], []
  for name in names:
    youden = labels.get(name, {}).get('thresholds', {}).get('youden')
    if youden:
      thresholds.append(float(youden['threshold']))
    else:
      thresholds.append(DEFAULT_THRESHOLD)
      defaults.append(name)
  source = f'the Youden thresholds on validation, from {path}'
  if defaults:
    source += f' ({DEFAULT_THRESHOLD} for {", ".join(defaults)}: none there)'
  return thresholds, source


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
                   labels=None, probabilities=None, thresholds=None):
  """Writes a Grad-CAM overlay PNG per image file (tools/predict
  --heatmap_dir): `<stem>.gradcam.png`, the stored image (as
  `predict_paths` decodes it) with the positive class's heatmap over it;
  for a multi-label model (labels given) one per image per label,
  `<stem>.<label>.gradcam.png`, each label's heatmap over it. Each names
  its label, P and the decision at the threshold, and colours P x the map
  (`gradcam.annotated`).

  Grad-CAM needs the gradient, so it runs the Keras model (model.keras),
  not the SavedModel.

  Args:
    model_dir: a finished tools/train run.
    paths: image files that `predict_paths` scored (readable ones).
    out_dir: the folder (made if missing).
    batch_size: images per heatmap computation.
    labels: a multi-label model's outputs, in order, or None.
    probabilities: P per path as reported beside the overlays (a float, or
      a list per label), e.g. the serving signature's; None: model.keras's
      own (uncalibrated) P.
    thresholds: the threshold on that P's scale (a float, or a list per
      label); None: `operating_threshold` (`label_thresholds`).

  Returns:
    The paths written, in the order of paths (each image's labels in
    order).

  Raises:
    TrainingError: no model.keras in model_dir, or out_dir is unusable.
    gradcam.GradCamError: the model has no spatial feature map.
    imaging.ImageError: a file cannot be read.
  """
  from xray_tfdata import gradcam  # pylint: disable=g-import-not-at-top
  check_heatmap_dir(out_dir)
  model_file = os.path.join(model_dir, MODEL_FILE)
  if not os.path.exists(model_file):
    raise TrainingError(f'{model_dir} has no {MODEL_FILE} for Grad-CAM: '
                        'pass --model_dir of a finished run, or drop '
                        '--heatmap_dir')
  # This module is part of xray_tfdata, so its layers are registered.
  net = keras.models.load_model(model_file, compile=False)
  size, voi = _preprocessing(os.path.join(model_dir, SERVING_DIR))
  size = size or int(net.input_shape[1])
  names = _overlay_names(paths)
  if thresholds is None:
    thresholds = (operating_threshold(model_dir)[0] if labels is None else
                  label_thresholds(model_dir, labels)[0])
  if labels is None:
    negative, positive = class_names(model_dir)
    explained = [(None, positive, thresholds, '')]
  else:
    explained = [(index, label, thresholds[index], '.' + file_label(label))
                 for index, label in enumerate(labels)]
  written = []
  for start in range(0, len(paths), batch_size):
    images = np.stack([imaging.load_image(path, size, voi)
                       for path in paths[start:start + batch_size]])
    if probabilities is None:
      probs = np.asarray(net.predict(images, verbose=0), np.float64)
    else:
      probs = np.asarray(probabilities[start:start + batch_size], np.float64)
    probs = probs.reshape(len(images), -1)
    by_label = []
    for index, label, threshold, suffix in explained:
      column = probs[:, index or 0]
      decisions = None if labels else [
          positive if p > threshold else negative for p in column]
      by_label.append(gradcam.write_overlays(
          out_dir, names[start:start + batch_size], images,
          gradcam.heatmaps(net, images, output_index=index), label, column,
          threshold, decisions, suffix=suffix))
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
  """P(pneumonia) for image files; see `predict_paths`.

  Args:
    serving_dir: a finished run's serving/ folder.
    paths: image files.

  Returns:
    A list of floats, one per path.

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
