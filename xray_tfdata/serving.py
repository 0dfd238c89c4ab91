"""A trained model, exported and used: model.keras, serving/, predictions.

  serving.export_model(net, model_dir, image_size)   # end of training
  serving.predict_paths(os.path.join(model_dir, serving.SERVING_DIR), paths)

serving/ is a SavedModel whose 'serve' signature takes encoded JPEG or PNG
bytes [N] and returns {'probability': P(pneumonia) [N]}, for TF Serving and
for `tools/predict`.
"""

import os
import shutil

import keras
import tensorflow as tf

from xray_tfdata import atomic
from xray_tfdata import imaging
from xray_tfdata import resume
from xray_tfdata import schema
from xray_tfdata.config import TrainingError

MODEL_FILE = 'model.keras'
SERVING_DIR = 'serving'


def export_model(net, model_dir, image_size, calibration=None):
  """Writes model.keras and the serving SavedModel, each atomically.

  Args:
    net: the trained model.
    model_dir: the folder to write MODEL_FILE and SERVING_DIR into.
    image_size: the stored height and width the model takes.
    calibration: None, or {'temperature': T, 'threshold': t} (issue 21):
      the signature's 'probability' is then temperature-scaled,
      sigmoid(logit(p) / T) (`evaluation.apply_temperature`), and it also
      returns 'threshold' (t, on the calibrated scale, per image) and
      'positive' (probability > t).
  """
  tmp = os.path.join(model_dir, '.tmp-' + MODEL_FILE)
  net.save(tmp)
  os.replace(tmp, os.path.join(model_dir, MODEL_FILE))

  size = (image_size, image_size)

  def serve(encoded):
    """Encoded JPEG or PNG bytes [N] -> {'probability': P(pneumonia) [N]}."""
    def decode(data):
      image = tf.io.decode_image(data, channels=1, dtype=tf.uint8,
                                 expand_animations=False)
      # Squash to the stored size with an anti-aliased filter, as the
      # converter does (it uses PIL; the two agree to a few grey levels).
      image = tf.image.resize(image, size, antialias=True)
      return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    images = tf.map_fn(decode, encoded,
                       fn_output_signature=tf.TensorSpec(size + (1,),
                                                         tf.uint8))
    # A named output: the signature's output is 'probability', not
    # 'output_0' (TF Serving and saved_model_cli show this name).
    probability = tf.reshape(
        tf.cast(net(images, training=False), tf.float32), [-1])
    if calibration is None:
      return {'probability': probability}
    return _calibrated_outputs(probability, calibration)

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
    info = schema.read_info(config.get('data_dir') or '')
  except schema.DatasetInfoError:
    return size, 'auto'  # moved, deleted, or on a machine without it
  return size, info.get('dicom', {}).get('voi', 'auto')


def predict_paths(serving_dir, paths):
  """P(pneumonia) for image files, each decoded as the converter decodes it.

  Every file goes through `imaging.decode_and_resize` at the run's stored
  size (so CMYK, palette, alpha, 16-bit and DICOM files are read exactly as
  in training; DICOM with the VOI policy of the dataset, where its
  xray_info.json is still at the run's data_dir), then through the exported serving model. One bad file does
  not cost the others their results.

  Args:
    serving_dir: a finished run's serving/ folder.
    paths: image files.

  Returns:
    One (probability, None) or (None, reason) per path, in order.

  Raises:
    TrainingError: no serving model in serving_dir.
  """
  if not os.path.exists(os.path.join(serving_dir, 'saved_model.pb')):
    raise TrainingError(f'{serving_dir} has no exported model: pass '
                        f'--model_dir of a finished run (its {SERVING_DIR}/)')
  size, voi = _preprocessing(serving_dir)
  results, blobs, good = [], [], []
  for index, path in enumerate(paths):
    if os.path.isdir(path):
      results.append((None, 'is a folder, not an image file'))
      continue
    if not os.path.lexists(path):
      results.append((None, 'does not exist'))
      continue
    if size is None:  # an older run without config.json: the raw bytes
      try:
        with open(path, 'rb') as f:
          decoded = (f.read(),)
      except OSError as e:
        decoded = f'cannot read: {e.strerror}'
    else:
      decoded = imaging.decode_and_resize((path, (size, size), voi))
    if isinstance(decoded, str):
      results.append((None, decoded))
      continue
    results.append(None)
    blobs.append(decoded[0])
    good.append(index)
  if blobs:
    served = tf.saved_model.load(serving_dir)
    try:
      probs = served.serve(tf.constant(blobs))['probability'].numpy()
    except tf.errors.InvalidArgumentError as e:
      raise TrainingError(f'cannot decode an image as JPEG or PNG '
                          f'({e.message.splitlines()[0][:100]})') from e
    for index, prob in zip(good, probs):
      results[index] = (float(prob), None)
  return results


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
