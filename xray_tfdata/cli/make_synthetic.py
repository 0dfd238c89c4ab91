"""Writes a Kermany-like synthetic chest X-ray image tree (demo and test data).

  tools/make_synthetic --out_dir=data/synthetic_xray                # 5,856 images
  tools/make_synthetic --out_dir=/tmp/tiny --num_images=60 --size_scale=0.1

All logic is in xray_tfdata.synthetic.make_synthetic_kermany.
"""

from xray_tfdata import runtime  # pylint: disable=g-import-not-at-top  (imports no TF)
from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from xray_tfdata import synthetic  # pylint: disable=g-import-not-at-top

_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Folder to create.')
_NUM_IMAGES = flags.DEFINE_integer(
    'num_images', synthetic.FULL_SIZE, 'Images in total (at least 12; 5,856 '
    'gives the real Kaggle counts).', lower_bound=synthetic.MIN_IMAGES)
_SEED = flags.DEFINE_integer('seed', 0, 'Everything is a function of it.')
_SIZE_SCALE = flags.DEFINE_float(
    'size_scale', 1.0, 'Multiplies the realistic image sizes (e.g. 0.1 for '
    'fast tests).', lower_bound=1e-3)
_LAYOUT = flags.DEFINE_enum('layout', 'kaggle', synthetic.LAYOUTS,
                            'Folder layout.')
_NUM_WORKERS = flags.DEFINE_integer(
    'num_workers', None, 'Drawing processes (default: all cores).',
    lower_bound=1)

flags.mark_flags_as_required(['out_dir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  with runtime.tool_errors():
    synthetic.make_synthetic_kermany(
        _OUT_DIR.value, num_images=_NUM_IMAGES.value, seed=_SEED.value,
        layout=_LAYOUT.value, size_scale=_SIZE_SCALE.value,
        num_workers=_NUM_WORKERS.value, progress=True)


def run():
  """The console script (xray-make-synthetic) and tools/make_synthetic."""
  runtime.run_tool(main, __name__)


if __name__ == '__main__':
  run()
