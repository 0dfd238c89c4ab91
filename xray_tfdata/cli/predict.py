"""Prints each label's probability and decision for chest X-ray images.

  tools/predict --model_dir=runs/demo/model IMAGE.jpeg
  tools/predict --model_dir=runs/demo/model FOLDER 'scans/**/*.dcm'
  tools/predict --model_dir=runs/demo/model --output=csv FOLDER > scores.csv

Arguments are image files, folders (every image file under them) and glob
patterns (quoted, so that the tool expands them; `**` is any depth). Every
model gets the same columns: a header `path, <label>, <label>_decision, ...`
(tab-separated, or with --output=csv comma-separated), one pair per label in
the run's label_names order (a class-folder run: one label, its positive
class, e.g. PNEUMONIA), then a row per image: the label's P and its
decision, 1 where P exceeds the label's threshold, else 0. P is the serving
signature's probability: temperature-calibrated (T fitted on validation)
for runs that tools/train exports with calibration, decided at the Youden
threshold chosen on validation on that scale; a run exported without
calibration serves the raw P, decided at the raw Youden threshold; both
come from the run's results.json (through run_dir), 0.5 for a label
without one; a line on stderr names them and says where they come from.
Each file is decoded as the converter decodes it (any image PIL reads, and
DICOM), then scored by the serving SavedModel that tools/train exports,
--batch_size images at a time. A file that cannot be used gets one
`error: <path>: <reason>` line on stderr instead, the others their results,
and the exit status is 1. With --heatmap_dir=DIR, each scored image also
gets DIR/<stem>.<label>.gradcam.png per label: the stored image with the
label's Grad-CAM heatmap over it (from the run's model.keras, at the last
spatial feature map of any backbone), coloured P x the map / its maximum,
and a caption naming the label, P and the decision at the threshold.
"""

import csv
import os
import sys

from xray_tfdata import runtime  # pylint: disable=g-import-not-at-top  (imports no TF)
runtime.configure_tensorflow_env()  # before TensorFlow is imported

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

_MODEL_DIR = flags.DEFINE_string(
    'model_dir', None, 'A finished tools/train run (its serving/ folder is '
    'used, and the thresholds in its results.json).')
_OUTPUT = flags.DEFINE_enum(
    'output', 'tsv', ['tsv', 'csv'],
    'tsv: a header `path<TAB><label><TAB><label>_decision...` and a line per '
    'image; csv: the same, comma-separated.')
# No default here: serving.BATCH_SIZE is the one, and importing serving
# (TensorFlow) would slow --help down.
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', None, 'Images decoded and scored per call of the model '
    '(default: serving.BATCH_SIZE, 64).', lower_bound=1)
_HEATMAP_DIR = flags.DEFINE_string(
    'heatmap_dir', None, 'Also write a Grad-CAM overlay PNG per scored image '
    'and label here (<stem>.<label>.gradcam.png; the folder is made if '
    'missing).')


def main(argv):
  inputs = argv[1:]
  if not inputs:
    raise app.UsageError('pass one or more image files, folders or globs')
  from xray_tfdata import run_dir  # pylint: disable=g-import-not-at-top
  from xray_tfdata import serving  # pylint: disable=g-import-not-at-top

  model_dir = _MODEL_DIR.value
  with runtime.tool_errors():
    found = serving.find_images(inputs)
    paths = [path for path, reason in found if reason is None]
    serving_dir = os.path.join(model_dir, serving.SERVING_DIR)
    serving.check_serving_dir(serving_dir)
    run = run_dir.read(model_dir, finished=False)
    if _HEATMAP_DIR.value:  # before the scoring, which may take long
      serving.check_heatmap_dir(_HEATMAP_DIR.value)
    labels = run.label_names
    batch_size = _BATCH_SIZE.value or serving.BATCH_SIZE
    scores = serving.score_paths(
        serving_dir, paths, batch_size=batch_size,
        progress=_progress_printer() if len(paths) > batch_size else None)
    thresholds, source = serving.served_thresholds(run, scores)
    print(f'threshold{"s" if len(labels) > 1 else ""} ' + ', '.join(
        f'{label} {t:.4f}' for label, t in zip(labels, thresholds)) +
          f': {source}', file=sys.stderr, flush=True)
    if _HEATMAP_DIR.value:
      readable = [(path, out['probability'])
                  for path, (out, reason) in zip(paths, scores)
                  if reason is None]
      # The overlays name the P and threshold printed here.
      written = serving.write_heatmaps(
          model_dir, [path for path, _ in readable], _HEATMAP_DIR.value,
          batch_size, probabilities=[prob for _, prob in readable],
          thresholds=thresholds)
      print(f'wrote {len(written)} Grad-CAM overlays to {_HEATMAP_DIR.value}',
            file=sys.stderr, flush=True)
    scored = iter(scores)
  writer = csv.writer(sys.stdout, lineterminator='\n',
                      delimiter=',' if _OUTPUT.value == 'csv' else '\t')
  writer.writerow(['path'] + [column for label in labels
                              for column in (label, f'{label}_decision')])
  failed = 0
  for path, reason in found:
    if reason is None:
      outputs, reason = next(scored)
    if reason:
      failed += 1
      print(f'error: {path}: {reason}', file=sys.stderr)
      continue
    probability = outputs['probability']
    # A calibrated signature decides itself, at these thresholds (checked).
    decided = outputs.get('decision') or [
        p > t for p, t in zip(probability, thresholds)]
    writer.writerow([path] + [column for p, d in zip(probability, decided)
                              for column in (f'{p:.4f}', '1' if d else '0')])
  if failed:
    sys.exit(1)  # every good file's result is printed above


def _progress_printer():
  """A progress(done, total) that shows `scored N/M images` on stderr: one
  line rewritten on a terminal, a line per tenth of the list otherwise."""
  printed = [0]  # the last tenth shown

  def progress(done, total):
    if sys.stderr.isatty():
      print(f'\rscored {done}/{total} images', end='\n' if done == total
            else '', file=sys.stderr, flush=True)
    elif done * 10 // total > printed[0]:
      printed[0] = done * 10 // total
      print(f'scored {done}/{total} images', file=sys.stderr, flush=True)
  return progress


def run():
  """The console script (xray-predict) and tools/predict."""
  runtime.run_tool(main, __name__, required=['model_dir'])


if __name__ == '__main__':
  run()
