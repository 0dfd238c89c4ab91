"""Trains and evaluates a chest X-ray classifier on a converted dataset,
one sigmoid per label: one label on a class dataset (the reference's VGG16
on NORMAL vs PNEUMONIA, P(PNEUMONIA), the defaults) or several (NIH,
CheXpert or MIMIC, under --label_policy), on vgg16, densenet121, resnet50,
efficientnetv2s or mini_vgg.

  tools/train --flagfile=configs/kermany_vgg16.flags --data_dir=DIR --model_dir=DIR
  tools/train --flagfile=configs/demo.flags          # synthetic demo data
  tools/train --flagfile=configs/chexnet_nih.flags --data_dir=DIR --model_dir=DIR
  tools/train --flagfile=configs/chexpert_densenet121.flags --data_dir=DIR --model_dir=DIR
  tools/train --flagfile=configs/nih_synthetic_scratch.flags   # 2 CPU cores
  TF_CONFIG='{"cluster": ..., "task": ...}' tools/train ...   # on every host

Every flag can live in a flagfile; flagfiles nest and later flags win. The
flags are declared in xray_tfdata.config (TrainConfig); all logic is in
xray_tfdata.training.train_and_evaluate.
"""

from xray_tfdata import runtime  # pylint: disable=g-import-not-at-top  (imports no TF)
runtime.configure_tensorflow_env()  # before TensorFlow is imported

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from xray_tfdata import config as config_lib  # pylint: disable=g-import-not-at-top

_FLAGS = config_lib.define_flags(flags.FLAGS)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:
    # TensorFlow's INFO and WARNING lines drown the progress; --verbosity=0
    # brings them back.
    logging.set_verbosity(logging.ERROR)
  # A full disk, Ctrl-C and SIGTERM end in one line too; the last finished
  # epoch is kept and a rerun of the same command resumes from it.
  with runtime.tool_errors():
    config = config_lib.from_flags(flags.FLAGS)
    # Before TensorFlow is imported and before model_dir is touched: a bad
    # setting costs a second and leaves nothing behind.
    config.validate()
    if not flags.FLAGS['image_size'].present:
      _check_one_stored_size(config.data_dir)
    from xray_tfdata import training  # pylint: disable=g-import-not-at-top
    training.train_and_evaluate(config, _FLAGS['model_dir'].value,
                                overwrite=_FLAGS['overwrite'].value)


def _check_one_stored_size(data_dir):
  """Several datasets stored at different sizes need --image_size to name
  the one they are all resized to (its default would pick one silently).

  Raises:
    TrainingError: they differ and --image_size was not given.
    DatasetError: a folder is not a converted dataset.
  """
  from xray_tfdata import dataset_info  # pylint: disable=g-import-not-at-top
  dirs = config_lib.split_data_dirs(data_dir)
  if len(dirs) < 2:
    return
  sizes = {d: dataset_info.load_info(d).image_size for d in dirs}
  if len(set(sizes.values())) > 1:
    raise config_lib.TrainingError(
        'the datasets are stored at different sizes (' + ', '.join(
            f'{d} {h}x{w}' for d, (h, w) in sizes.items())
        + '): pass --image_size to resize them all to one')


def run():
  """The console script (xray-train) and tools/train."""
  runtime.run_tool(main, __name__, required=config_lib.required_flags(),
                   flag_groups=config_lib.GROUPS)


if __name__ == '__main__':
  run()
