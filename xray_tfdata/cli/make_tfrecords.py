"""Converts chest X-ray image folders into TFRecord shards + dataset_info.json.

  # Kaggle's train/ val/ test/ as they are:
  tools/make_tfrecords --src_dir=chest_xray --out_dir=data/kermany_224
  # the reference's re-split (by patient, fixed counts per class):
  tools/make_tfrecords --flagfile=configs/kermany_tfrecords.flags --src_dir=chest_xray --out_dir=data/kermany_224
  # Mendeley's train/ test/: val drawn from train by patient, test kept:
  tools/make_tfrecords --src_dir=ChestXRay2017 --out_dir=data/mendeley_224 --keep_test --val_fraction=0.1
  # your own class folders, patients named by the file names (p017_2.png):
  tools/make_tfrecords --src_dir=my_xrays --out_dir=data/mine --resplit --val_fraction=0.15 --test_fraction=0.15 --patient_id_regex='^p(\d+)_'
  # NIH ChestX-ray14 (Data_Entry_2017*.csv, images*/, the split lists): its
  # official split, val drawn from train_val_list.txt by patient:
  tools/make_tfrecords --src_dir=NIH --out_dir=data/nih_224 --val_fraction=0.1
  # CheXpert (the folder holding train.csv): valid.csv is test:
  tools/make_tfrecords --src_dir=CheXpert-v1.0-small --out_dir=data/chexpert_224
  # MIMIC-CXR-JPG, drawn anew by patient:
  tools/make_tfrecords --src_dir=mimic-cxr-jpg --out_dir=data/mimic_224 --resplit --val_fraction=0.1 --test_fraction=0.1
  # your own labelled folder:
  tools/make_tfrecords --src_dir=my_xrays --out_dir=data/mine --labels_csv=my_xrays/labels.csv --label_columns=Effusion,Nodule --resplit
  # RSNA's DICOMs:
  tools/make_tfrecords --src_dir=rsna-pneumonia-detection-challenge --out_dir=data/rsna_224 --resplit --val_counts=NORMAL:1000,PNEUMONIA:300 --test_counts=NORMAL:1000,PNEUMONIA:300

Flags may live in flagfiles (they nest; later flags win). All logic is in
xray_tfdata.writer.convert.
"""

import os
import sys

from xray_tfdata import runtime  # pylint: disable=g-import-not-at-top  (imports no TF)
runtime.configure_tensorflow_env()  # before TensorFlow is imported

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

# No TensorFlow at import time: the decoding workers are spawned and re-import
# this script.
from xray_tfdata import checks  # pylint: disable=g-import-not-at-top
from xray_tfdata import reference
from xray_tfdata import sources
from xray_tfdata import writer

_SRC_DIR = flags.DEFINE_string(
    'src_dir', None, 'Image folder: train/ val/ test/ (Kaggle), train/ test/ '
    '(Mendeley), class folders (pool), stage_2_train_images/ with the '
    'label CSVs (RSNA), or a multi-label set: NIH ChestX-ray14 (with '
    'Data_Entry_2017*.csv), CheXpert (the folder holding train.csv), '
    'MIMIC-CXR-JPG (with the mimic-cxr-2.0.0-*.csv.gz files), or your own '
    'folder with --labels_csv.')
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Output folder for the shards.')
_IMAGE_SIZE = flags.DEFINE_integer(
    'image_size', reference.IMAGE_SIZE, 'Stored height and width in pixels '
    '(squashed); default: the reference\'s.',
    lower_bound=1, upper_bound=writer.MAX_IMAGE_SIZE)
_OVERWRITE = flags.DEFINE_bool(
    'overwrite', False, 'Replace a dataset already in out_dir.')
_RESPLIT = flags.DEFINE_bool(
    'resplit', False, 'Pool all images and draw val and test anew, grouped by '
    'patient (needs --val_counts or --val_fraction, and --test_counts or '
    '--test_fraction).')
_KEEP_TEST = flags.DEFINE_bool(
    'keep_test', False, 'Keep the source\'s test/ folder as it is and draw '
    'val from train/ (and val/) by patient (needs --val_counts or '
    '--val_fraction); train images of a patient in test/ are left out.')
_VAL_COUNTS = flags.DEFINE_string(
    'val_counts', None, 'Drawn val images per class, e.g. '
    'NORMAL:150,PNEUMONIA:400.')
_TEST_COUNTS = flags.DEFINE_string(
    'test_counts', None, 'Drawn test images per class, e.g. '
    'NORMAL:150,PNEUMONIA:400.')
_VAL_FRACTION = flags.DEFINE_float(
    'val_fraction', None, 'Instead of --val_counts: this fraction of each '
    'class (0 to 1, exclusive). Multi-label layouts: the share of val drawn '
    'by patient (default 0.1), of the official training set or, with '
    '--resplit, of all images.')
_TEST_FRACTION = flags.DEFINE_float(
    'test_fraction', None, 'Instead of --test_counts: this fraction of each '
    'class (0 to 1, exclusive). Multi-label layouts with --resplit: the '
    'share of test (default 0.1).')
_PATIENT_ID_REGEX = flags.DEFINE_string(
    'patient_id_regex', None, 'Patient ids from your own file names: a '
    'regular expression with one group (or a group named patient), searched '
    'in each file name, or in its path under --src_dir if it has a /. '
    'Default: Kermany\'s names (person12_..., IM-0115-...); any other file '
    'is its own patient.')
_PATIENT_CSV = flags.DEFINE_string(
    'patient_csv', None, 'Instead of --patient_id_regex: a CSV with the '
    'columns path (under --src_dir, or the file name) and patient_id, a row '
    'per image.')
_NUM_SHARDS = flags.DEFINE_integer(
    'num_shards', None, 'Shards per split (default: automatic, at least 8 and '
    'at most about 128 MiB each).', lower_bound=1)
_NUM_WORKERS = flags.DEFINE_integer(
    'num_workers', None, 'Decoding processes (default: all cores).',
    lower_bound=1)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the example order and the '
                             're-split.')
_NAME = flags.DEFINE_string(
    'name', None, 'Dataset name (shard prefix); default: the --src_dir '
    'folder\'s name in TFDS\' style (lower case, digits, _).')
_LAYOUT = flags.DEFINE_enum('layout', 'auto', sources.LAYOUTS,
                            'Source layout; auto detects it (the multi-label '
                            'nih, chexpert, mimic and vindr by their label '
                            'files, csv by --labels_csv).')
_RESUME = flags.DEFINE_bool(
    'resume', True, 'Keep the finished shards of an interrupted run with the '
    'same inputs and flags (and keep this run\'s if it is interrupted).')
_VOI = flags.DEFINE_enum(
    'voi', 'auto', checks.VOI_POLICIES,
    'VOI step for DICOM files: auto (the file\'s VOI LUT, else its window, '
    'else the full stored range), window (the window, else the full range) '
    'or full (the full range the stored bits allow). Recorded in '
    'xray_info.json.')
_PATIENT_ID_SALT = flags.DEFINE_string(
    'patient_id_salt', None, 'Secret for the hashed patient ids of DICOM '
    'files (never written; the same secret gives the same keys in every '
    'conversion). Default: a random salt, discarded after the conversion. '
    'Keep it out of shell history: put it in a flagfile only you can read.')
_SPLIT = flags.DEFINE_enum(
    'split', None, sources.SPLIT_METHODS,
    'Multi-label layouts only: official (the default: NIH\'s test_list.txt, '
    'CheXpert\'s valid.csv, MIMIC\'s split file and VinDr-CXR\'s test/ (the '
    'PhysioNet layout; the competition\'s is refused) as test; val drawn from '
    'the training part by patient, --val_fraction, except MIMIC\'s own) or '
    'resplit (the same as --resplit: val and test drawn by patient, '
    '--val_fraction and --test_fraction, default 0.1 each, with even '
    'positives per label).')
_LABELS_CSV = flags.DEFINE_string(
    'labels_csv', None, 'The csv layout (your own multi-label folder): a CSV '
    'with a row per image: its path under --src_dir (--path_column), its '
    'patient (--patient_column) and a column per label (--label_columns) '
    'holding 1, 0, -1 (uncertain) or blank (not mentioned).')
_PATH_COLUMN = flags.DEFINE_string(
    'path_column', None, 'The csv layout: the column of image paths, '
    'relative to --src_dir (default: path).')
_PATIENT_COLUMN = flags.DEFINE_string(
    'patient_column', None, 'The csv layout: the column of patient ids '
    '(stored hashed; default: patient_id).')
_LABEL_COLUMNS = flags.DEFINE_string(
    'label_columns', None, 'The csv layout: the label columns, in the order '
    'to store them, e.g. Effusion,Nodule.')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Print progress lines '
                              '(stderr) and a summary.')

flags.mark_flags_as_required(['src_dir', 'out_dir'])
_OPTIONS = (_IMAGE_SIZE, _OVERWRITE, _RESPLIT, _KEEP_TEST, _VAL_COUNTS,
            _TEST_COUNTS, _VAL_FRACTION, _TEST_FRACTION, _PATIENT_ID_REGEX,
            _PATIENT_CSV, _NUM_SHARDS, _NUM_WORKERS, _SEED, _NAME, _LAYOUT,
            _RESUME, _VOI, _PATIENT_ID_SALT, _SPLIT, _LABELS_CSV,
            _PATH_COLUMN, _PATIENT_COLUMN, _LABEL_COLUMNS, _PROGRESS)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  # A full disk, Ctrl-C and SIGTERM end in one line too; the finished shards
  # stay in <out_dir>.partial and a rerun of the same command resumes.
  with runtime.tool_errors():
    # Each flag by its name: writer.convert gives the write options to the
    # writer and the rest to the source, which refuses those it does not
    # take (sources.options).
    options = {flag.name: flag.value for flag in _OPTIONS}
    for name in ('val_counts', 'test_counts'):
      if options[name]:
        options[name] = sources.parse_class_counts(options[name])
    writer.convert(_SRC_DIR.value, _OUT_DIR.value, **options)


def run():
  """The console script (xray-make-tfrecords) and tools/make_tfrecords."""
  runtime.run_tool(main, __name__)


if __name__ == '__main__':
  run()
