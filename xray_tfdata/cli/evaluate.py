"""Evaluates a finished run on a converted dataset: its own, or another one.

  tools/evaluate --model_dir=runs/demo/model --data_dir=runs/demo/data
  tools/evaluate --model_dir=runs/kermany --data_dir=data/rsna_224 --split=test
  tools/evaluate --model_dir=runs/nih --data_dir=data/chexpert_224 --views=PA,AP
  tools/evaluate --model_dir=runs/padchest --data_dir=data/padchest_224 \
      --label_methods=Physician
  tools/evaluate --model_dir=runs/nih,runs/chexpert,runs/all \
      --data_dir=data/nih,data/chexpert --out_dir=runs/transfer

Several --model_dir or --data_dir (comma-separated): every run on every
dataset's --split, each pair written as one would be alone, then the
transfer table, trained on (rows) x tested on (columns), per shared label
and macro AUC with its interval: transfer.md, transfer.json, transfer.png
in --out_dir (xray_tfdata.transfer).

Writes results.json, results.md and the pictures into
model_dir/evaluation/<dataset folder>-<split>/ (or --out_dir), at the
operating points the run chose on its own validation split; labels are
matched through the label vocabulary (xray_tfdata.vocabulary: NIH's
Effusion is CheXpert's Pleural Effusion) and the unmatched ones named, a
multi-label model's per label. Where the dataset stores boxes (RSNA, NIH,
VinDr-CXR) or masks (SIIM), also the pointing game of the Grad-CAM heatmaps
(--localization). All logic is in
xray_tfdata.evaluation.run.evaluate_run.
"""

from xray_tfdata import runtime  # pylint: disable=g-import-not-at-top  (imports no TF)
runtime.configure_tensorflow_env()  # before TensorFlow is imported

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from xray_tfdata import checks  # pylint: disable=g-import-not-at-top  (imports no TF)

_MODEL_DIR = flags.DEFINE_string('model_dir', None, 'A finished tools/train run.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'A dataset converted by tools/make_tfrecords (the run\'s own or another).')
_SPLIT = flags.DEFINE_string('split', 'test', 'The split of --data_dir to evaluate.')
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Where the results go; default model_dir/evaluation/<data_dir folder>-<split>. Of several --model_dir or --data_dir: where the transfer table goes (required); each pair\'s results go to its default place.')
_BOOTSTRAP = flags.DEFINE_integer('bootstrap_resamples', None, 'Patient-level bootstrap resamples; default: the run\'s setting.', lower_bound=1)
_LABEL_POLICY = flags.DEFINE_enum('label_policy', None, checks.LABEL_POLICIES, 'For a dataset of labels (NIH, CheXpert): how its uncertain and unmentioned codes are read (see xray_tfdata.labels); default: the run\'s.')
_VIEWS = flags.DEFINE_list('views', [], 'For a dataset of labels: score only the images of these views, as the source spells them (PA,AP for a frontal-only test; \'unknown\' for images without one), as tools/train\'s --views; default: every image.')
_LABEL_METHODS = flags.DEFINE_list('label_methods', [], 'For a dataset that stores how each image\'s labels were made (PadChest\'s MethodLabel): score only the images of these methods (Physician: the physician-labelled test images; RNN_model); default: every image.')
_LOCALIZATION = flags.DEFINE_bool('localization', None, 'The pointing game of the Grad-CAM heatmaps on the positives with boxes (RSNA; NIH and VinDr-CXR per label, on its own boxes) or masks (SIIM). Default: where the dataset stores them; --localization on a dataset without is an error; --nolocalization never.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  import os  # pylint: disable=g-import-not-at-top
  from xray_tfdata import run_dir  # pylint: disable=g-import-not-at-top
  from xray_tfdata.evaluation import markdown  # pylint: disable=g-import-not-at-top
  from xray_tfdata.evaluation import run as evaluation_run  # pylint: disable=g-import-not-at-top

  from xray_tfdata import config  # pylint: disable=g-import-not-at-top
  model_dirs = config.split_data_dirs(_MODEL_DIR.value)
  data_dirs = config.split_data_dirs(_DATA_DIR.value)
  if len(model_dirs) > 1 or len(data_dirs) > 1:
    with runtime.tool_errors():
      _transfer(model_dirs, data_dirs)
    return
  with runtime.tool_errors():
    out_dir = _OUT_DIR.value or evaluation_run.default_out_dir(
        _MODEL_DIR.value, _DATA_DIR.value, _SPLIT.value, _VIEWS.value,
        _LABEL_METHODS.value)
    results = evaluation_run.evaluate_run(
        _MODEL_DIR.value, _DATA_DIR.value, split=_SPLIT.value,
        out_dir=out_dir, num_resamples=_BOOTSTRAP.value,
        label_policy=_LABEL_POLICY.value, localization=_LOCALIZATION.value,
        views=_VIEWS.value, label_methods=_LABEL_METHODS.value)
  print(markdown.summary(results, os.path.join(out_dir, run_dir.RESULTS_MD)))


def _transfer(model_dirs, data_dirs):
  """The transfer table of every run on every dataset."""
  import os  # pylint: disable=g-import-not-at-top
  from xray_tfdata import transfer  # pylint: disable=g-import-not-at-top
  from xray_tfdata.evaluation import matching  # pylint: disable=g-import-not-at-top
  if not _OUT_DIR.value:
    raise matching.MatchingError(
        'several --model_dir or --data_dir make a transfer table: pass '
        '--out_dir=DIR for transfer.md, transfer.json and transfer.png')
  if _VIEWS.value or _LABEL_METHODS.value or _LOCALIZATION.value:
    raise matching.MatchingError(
        '--views, --label_methods and --localization are for one run on one '
        'dataset: drop them for the transfer table')
  for model_dir in model_dirs:  # a missing run fails before any pair runs
    from xray_tfdata import run_dir  # pylint: disable=g-import-not-at-top
    run_dir.read(model_dir)
  data = transfer.evaluate_pairs(
      model_dirs, data_dirs, _OUT_DIR.value, split=_SPLIT.value,
      num_resamples=_BOOTSTRAP.value, label_policy=_LABEL_POLICY.value,
      localization=False)
  print(transfer.markdown(data))
  print(f'wrote {os.path.join(_OUT_DIR.value, transfer.TRANSFER_MD)}, '
        f'{transfer.TRANSFER_JSON}, {transfer.TRANSFER_PNG}')


def run():
  """The console script (xray-evaluate) and tools/evaluate."""
  runtime.run_tool(main, __name__, required=['model_dir', 'data_dir'])


if __name__ == '__main__':
  run()
