"""Writes a synthetic chest X-ray source tree (demo and test data).

  tools/make_synthetic --out_dir=data/synthetic_xray                # 5,856 images
  tools/make_synthetic --out_dir=/tmp/tiny --num_images=60 --size_scale=0.1
  tools/make_synthetic --out_dir=/tmp/nih --layout=nih            # 200 images

Kermany-like layouts (kaggle, mendeley, pool, rsna):
xray_tfdata.synthetic.make_synthetic_kermany; multi-label layouts (nih,
chexpert, mimic): xray_tfdata.synthetic_multilabel.make_synthetic_multilabel.
"""

from xray_tfdata import runtime  # pylint: disable=g-import-not-at-top  (imports no TF)
from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from xray_tfdata import synthetic  # pylint: disable=g-import-not-at-top
from xray_tfdata import synthetic_multilabel  # pylint: disable=g-import-not-at-top

_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Folder to create.')
_NUM_IMAGES = flags.DEFINE_integer(
    'num_images', None, 'Images in total. Kermany layouts: at least '
    f'{synthetic.MIN_IMAGES}, default {synthetic.FULL_SIZE:,} (the real '
    'Kaggle counts); nih|chexpert|mimic: at least '
    f'{synthetic_multilabel.MIN_IMAGES}, default '
    f'{synthetic_multilabel.DEFAULT_NUM_IMAGES}.',
    lower_bound=min(synthetic.MIN_IMAGES, synthetic_multilabel.MIN_IMAGES))
_SEED = flags.DEFINE_integer('seed', 0, 'Everything is a function of it.')
_SIZE_SCALE = flags.DEFINE_float(
    'size_scale', None, 'Multiplies the realistic image sizes (e.g. 0.1 for '
    'fast tests). Default 1.0 for the Kermany layouts; for nih|chexpert|mimic '
    + ', '.join(f'{layout} {scale}' for layout, scale in
                synthetic_multilabel.DEFAULT_SIZE_SCALE.items()) +
    ' (128-256 px images).', lower_bound=1e-3)
_LAYOUT = flags.DEFINE_enum(
    'layout', 'kaggle', synthetic.LAYOUTS + synthetic_multilabel.LAYOUTS,
    'Folder layout: Kermany-like (kaggle, mendeley, pool, rsna) or a '
    'multi-label set (nih: NIH ChestX-ray14, chexpert: CheXpert-v1.0-small, '
    'mimic: MIMIC-CXR-JPG 2.0.0).')
_NUM_WORKERS = flags.DEFINE_integer(
    'num_workers', None, 'Drawing processes (default: all cores).',
    lower_bound=1)

flags.mark_flags_as_required(['out_dir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  with runtime.tool_errors():
    if _LAYOUT.value in synthetic_multilabel.LAYOUTS:
      synthetic_multilabel.make_synthetic_multilabel(
          _OUT_DIR.value, _LAYOUT.value,
          num_images=_default(_NUM_IMAGES,
                              synthetic_multilabel.DEFAULT_NUM_IMAGES),
          seed=_SEED.value, size_scale=_SIZE_SCALE.value,
          num_workers=_NUM_WORKERS.value, progress=True)
    else:
      synthetic.make_synthetic_kermany(
          _OUT_DIR.value, num_images=_default(_NUM_IMAGES, synthetic.FULL_SIZE),
          seed=_SEED.value, layout=_LAYOUT.value,
          size_scale=_default(_SIZE_SCALE, 1.0),
          num_workers=_NUM_WORKERS.value, progress=True)


def _default(flag, value):
  return value if flag.value is None else flag.value


def run():
  """The console script (xray-make-synthetic) and tools/make_synthetic."""
  runtime.run_tool(main, __name__)


if __name__ == '__main__':
  run()
