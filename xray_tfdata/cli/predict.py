"""Prints P(pneumonia) and a decision for chest X-ray images.

  tools/predict --model_dir=runs/demo/model IMAGE.jpeg
  tools/predict --model_dir=runs/demo/model FOLDER 'scans/**/*.dcm'
  tools/predict --model_dir=runs/demo/model --output=csv FOLDER > scores.csv

Arguments are image files, folders (every image file under them) and glob
patterns (quoted, so that the tool expands them; `**` is any depth). One
line per image: `<path><TAB><P><TAB><decision>`, or with --output=csv a header
`path,P,decision` and a row per image. P is the serving signature's
probability: temperature-calibrated (T fitted on validation) for runs that
tools/train exports with calibration. The decision is the positive class
where P exceeds the run's threshold, on P's scale: the signature's (the
Youden threshold chosen on validation, calibrated), else the Youden
threshold in the run's results.json, or 0.5 for a run without one; a line
on stderr says which. Each file is decoded as the converter decodes it (any
image PIL reads, and DICOM), then scored by the serving SavedModel that
tools/train exports, --batch_size images at a time. A file that cannot be
used gets one `error: <path>: <reason>` line on stderr instead, the others
their results, and the exit status is 1. With --heatmap_dir=DIR, each scored
image also gets DIR/<stem>.gradcam.png: the stored image with the Grad-CAM
heatmap of the positive class over it (from the run's model.keras, at the
last spatial feature map of any backbone), coloured P x the map / its
maximum, and a caption naming the class, P and the decision at the
threshold.

A multi-label model (config.json lists label_names) gets a header line
`path, P(<label>), <label>, ...` in both formats and per image, for each
label, its probability and its decision (1 above the label's threshold,
else 0); --heatmap_dir then writes DIR/<stem>.<label>.gradcam.png, one
per image per label.
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
    'used, and the threshold in its results.json).')
_OUTPUT = flags.DEFINE_enum(
    'output', 'tsv', ['tsv', 'csv'],
    'tsv: `path<TAB>P<TAB>decision` lines; csv: a header `path,P,decision` '
    'and one row per image.')
# No default here: serving.BATCH_SIZE is the one, and importing serving
# (TensorFlow) would slow --help down.
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', None, 'Images decoded and scored per call of the model '
    '(default: serving.BATCH_SIZE, 64).', lower_bound=1)
_HEATMAP_DIR = flags.DEFINE_string(
    'heatmap_dir', None, 'Also write a Grad-CAM overlay PNG per scored image '
    'here (<stem>.gradcam.png; the folder is made if missing).')


def main(argv):
  inputs = argv[1:]
  if not inputs:
    raise app.UsageError('pass one or more image files, folders or globs')
  from xray_tfdata import serving  # pylint: disable=g-import-not-at-top

  model_dir = _MODEL_DIR.value
  with runtime.tool_errors():
    found = serving.find_images(inputs)
    paths = [path for path, reason in found if reason is None]
    serving_dir = os.path.join(model_dir, serving.SERVING_DIR)
    serving.check_serving_dir(serving_dir)
    if _HEATMAP_DIR.value:  # before the scoring, which may take long
      serving.check_heatmap_dir(_HEATMAP_DIR.value)
    negative, positive = serving.class_names(model_dir)
    labels = serving.label_names(model_dir)
    batch_size = _BATCH_SIZE.value or serving.BATCH_SIZE
    scores = serving.score_paths(
        serving_dir, paths, batch_size=batch_size,
        progress=_progress_printer() if len(paths) > batch_size else None)
    # A calibrated signature decides itself, at its threshold on its own
    # (calibrated) scale; a run exported without one gets results.json's.
    served = {_hashable(out['threshold']) for out, _ in scores
              if out and 'threshold' in out}
    if labels:
      threshold, source = _label_thresholds(serving, model_dir, labels,
                                            served)
    elif served:
      threshold, source = served.pop(), (
          'the Youden threshold on validation, on the calibrated scale, '
          'from the serving signature')
    else:
      threshold, source = serving.operating_threshold(model_dir)
    if labels:
      print(f'thresholds {", ".join(f"{l} {t:.4f}" for l, t in zip(labels, threshold))}: {source}',
            file=sys.stderr, flush=True)
    else:
      print(f'threshold {threshold:.4f}: {source}', file=sys.stderr,
            flush=True)
    if _HEATMAP_DIR.value:
      readable = [(path, out['probability'])
                  for path, (out, reason) in zip(paths, scores)
                  if reason is None]
      # The overlays name the P and threshold printed here.
      written = serving.write_heatmaps(
          model_dir, [path for path, _ in readable], _HEATMAP_DIR.value,
          batch_size, labels=labels,
          probabilities=[prob for _, prob in readable], thresholds=threshold)
      print(f'wrote {len(written)} Grad-CAM overlays to {_HEATMAP_DIR.value}',
            file=sys.stderr, flush=True)
    scored = iter(scores)
  writer = csv.writer(sys.stdout, lineterminator='\n') if (
      _OUTPUT.value == 'csv') else None
  if labels:
    # Many columns: a header in both formats.
    header = ['path'] + [c for label in labels
                         for c in (f'P({label})', label)]
    if writer:
      writer.writerow(header)
    else:
      print('\t'.join(header))
  elif writer:
    writer.writerow(['path', 'P', 'decision'])
  failed = 0
  for path, reason in found:
    if reason is None:
      outputs, reason = next(scored)
    if reason:
      failed += 1
      print(f'error: {path}: {reason}', file=sys.stderr)
      continue
    prob = outputs['probability']
    if labels:
      decided = outputs.get('decision') or [
          p > t for p, t in zip(prob, threshold)]
      row = [path] + [c for p, d in zip(prob, decided)
                      for c in (f'{p:.4f}', '1' if d else '0')]
    else:
      decided = outputs.get('positive', prob > threshold)
      row = [path, f'{prob:.4f}', positive if decided else negative]
    if writer:
      writer.writerow(row)
    else:
      print('\t'.join(row))
  if failed:
    sys.exit(1)  # every good file's result is printed above


def _hashable(threshold):
  return tuple(threshold) if isinstance(threshold, list) else threshold


def _label_thresholds(serving, model_dir, labels, served):
  """A multi-label model's thresholds per label and where they come from."""
  if served:
    return list(served.pop()), (
        'the Youden thresholds on validation, on the calibrated scale, from '
        'the serving signature')
  return serving.label_thresholds(model_dir, labels)


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
