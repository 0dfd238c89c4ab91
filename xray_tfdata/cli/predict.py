"""Prints P(pneumonia) for chest X-ray images with a trained model.

  tools/predict --model_dir=runs/demo IMAGE [IMAGE ...]

One line per image: `<path>\t<probability>`. Each file is decoded as the
converter decodes it (any image PIL reads, and DICOM), then scored by the
serving SavedModel that tools/train exports. A file that cannot be used gets
one `error: <path>: <reason>` line on stderr instead, the others their
results, and the exit status is 1.
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
  from xray_tfdata import serving  # pylint: disable=g-import-not-at-top

  with runtime.tool_errors():
    results = serving.predict_paths(os.path.join(_MODEL_DIR.value, serving.SERVING_DIR), paths)
  failed = 0
  for path, (prob, reason) in zip(paths, results):
    if reason:
      failed += 1
      print(f'error: {path}: {reason}', file=sys.stderr)
    else:
      print(f'{path}\t{prob:.4f}')
  if failed:
    sys.exit(1)  # every good file's result is printed above


def run():
  """The console script (xray-predict) and tools/predict."""
  runtime.run_tool(main, __name__, required=['model_dir'])


if __name__ == '__main__':
  run()
