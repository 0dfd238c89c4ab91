"""Prints P(pneumonia) for chest X-ray images with a trained model.

  tools/predict --model_dir=runs/demo IMAGE [IMAGE ...]

One line per image: `<path>\t<probability>`. Uses the serving SavedModel that
tools/train exports (encoded JPEG/PNG bytes in, probability out).
"""

import os
import sys

from xray_tfdata import runtime  # pylint: disable=g-import-not-at-top  (imports no TF)
runtime.configure_tensorflow_env()  # before TensorFlow is imported

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

_MODEL_DIR = flags.DEFINE_string('model_dir', None, 'A finished tools/train run (its serving/ folder is used).')


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError('pass one or more image paths')
  from xray_tfdata import training  # pylint: disable=g-import-not-at-top

  with runtime.tool_errors(training.TrainingError):
    probs = training.predict_files(os.path.join(_MODEL_DIR.value, training.SERVING_DIR), paths)
  for path, prob in zip(paths, probs):
    print(f'{path}\t{prob:.4f}')


def run():
  """The console script (xray-predict) and tools/predict."""
  runtime.run_tool(main, __name__, required=['model_dir'])


if __name__ == '__main__':
  run()
