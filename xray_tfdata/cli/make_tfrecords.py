"""Converts chest X-ray image folders into TFRecord shards + dataset_info.json.

  tools/make_tfrecords --src_dir=chest_xray --out_dir=data/kermany_224
  tools/make_tfrecords --flagfile=configs/kermany_tfrecords.flags \
      --src_dir=chest_xray --out_dir=data/kermany_224   # the seed's re-split
  tools/make_tfrecords --src_dir=rsna-pneumonia-detection-challenge \
      --out_dir=data/rsna_224 --resplit --val_counts=NORMAL:1000,PNEUMONIA:300 \
      --test_counts=NORMAL:1000,PNEUMONIA:300   # RSNA's DICOMs

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
from xray_tfdata import dicom  # pylint: disable=g-import-not-at-top
from xray_tfdata import sources
from xray_tfdata import writer

_SRC_DIR = flags.DEFINE_string(
    'src_dir', None, 'Image folder: train/ val/ test/ (Kaggle), train/ test/ '
    '(Mendeley), class folders (pool) or stage_2_train_images/ with the '
    'label CSVs (RSNA).')
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Output folder for the shards.')
_IMAGE_SIZE = flags.DEFINE_integer(
    'image_size', 224, 'Stored height and width in pixels (squashed).',
    lower_bound=1, upper_bound=writer.MAX_IMAGE_SIZE)
_OVERWRITE = flags.DEFINE_bool(
    'overwrite', False, 'Replace a dataset already in out_dir.')
_RESPLIT = flags.DEFINE_bool(
    'resplit', False, 'Pool all images and draw val and test anew, grouped by '
    'patient (needs --val_counts and --test_counts).')
_VAL_COUNTS = flags.DEFINE_string(
    'val_counts', None, 'Re-split val images per class, e.g. '
    'NORMAL:150,PNEUMONIA:400.')
_TEST_COUNTS = flags.DEFINE_string(
    'test_counts', None, 'Re-split test images per class, e.g. '
    'NORMAL:150,PNEUMONIA:400.')
_NUM_SHARDS = flags.DEFINE_integer(
    'num_shards', None, 'Shards per split (default: automatic, at least 8 and '
    'at most about 128 MiB each).', lower_bound=1)
_NUM_WORKERS = flags.DEFINE_integer(
    'num_workers', None, 'Decoding processes (default: all cores).',
    lower_bound=1)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the example order and the '
                             're-split.')
_NAME = flags.DEFINE_string('name', 'kermany', 'Dataset name (shard prefix).')
_LAYOUT = flags.DEFINE_enum('layout', 'auto', sources.LAYOUTS,
                            'Source layout; auto detects it.')
_RESUME = flags.DEFINE_bool(
    'resume', True, 'Keep the finished shards of an interrupted run with the '
    'same inputs and flags (and keep this run\'s if it is interrupted).')
_VOI = flags.DEFINE_enum(
    'voi', 'auto', dicom.VOI_POLICIES,
    'VOI step for DICOM files: auto (the file\'s VOI LUT, else its window, '
    'else the full stored range), window (the window, else the full range) '
    'or full (the full range the stored bits allow). Recorded in '
    'xray_info.json.')
_PATIENT_ID_SALT = flags.DEFINE_string(
    'patient_id_salt', None, 'Secret for the hashed patient ids of DICOM '
    'files (never written; the same secret gives the same keys in every '
    'conversion). Default: a random salt, discarded after the conversion. '
    'Keep it out of shell history: put it in a flagfile only you can read.')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar and '
                              'print a summary.')

flags.mark_flags_as_required(['src_dir', 'out_dir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  # A full disk, Ctrl-C and SIGTERM end in one line too; the finished shards
  # stay in <out_dir>.partial and a rerun of the same command resumes.
  with runtime.tool_errors():
    val_counts = (sources.parse_class_counts(_VAL_COUNTS.value)
                  if _VAL_COUNTS.value else None)
    test_counts = (sources.parse_class_counts(_TEST_COUNTS.value)
                   if _TEST_COUNTS.value else None)
    writer.convert(
        _SRC_DIR.value, _OUT_DIR.value, image_size=_IMAGE_SIZE.value,
        resplit=_RESPLIT.value, val_counts=val_counts, test_counts=test_counts,
        num_shards=_NUM_SHARDS.value, num_workers=_NUM_WORKERS.value,
        seed=_SEED.value, overwrite=_OVERWRITE.value, name=_NAME.value,
        layout=_LAYOUT.value, resume=_RESUME.value, progress=_PROGRESS.value,
        voi=_VOI.value, patient_id_salt=_PATIENT_ID_SALT.value)


def run():
  """The console script (xray-make-tfrecords) and tools/make_tfrecords."""
  runtime.run_tool(main, __name__)


if __name__ == '__main__':
  run()
