"""Writes a synthetic chest X-ray source tree (demo and test data).

  tools/make_synthetic --out_dir=data/synthetic_xray                # 5,856 images
  tools/make_synthetic --out_dir=/tmp/tiny --num_images=60 --size_scale=0.1
  tools/make_synthetic --out_dir=/tmp/nih --layout=nih            # 200 images
  tools/make_synthetic --out_dir=/tmp/vindr --layout=vindr --release=physionet

Every layout: xray_tfdata.synthetic.layouts.make_synthetic (one module per
layout in xray_tfdata/synthetic/).
"""

from xray_tfdata import runtime  # pylint: disable=g-import-not-at-top  (imports no TF)
from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from xray_tfdata.synthetic import layouts  # pylint: disable=g-import-not-at-top

_KERMANY = ('kaggle', 'mendeley', 'pool', 'rsna')
_LABELLED = tuple(name for name in layouts.LAYOUTS if name not in _KERMANY)

_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Folder to create.')
_NUM_IMAGES = flags.DEFINE_integer(
    'num_images', None, 'Images in total. Kermany layouts: at least '
    f'{layouts.LAYOUTS["kaggle"].min_images}, default '
    f'{layouts.LAYOUTS["kaggle"].default_images:,} (the real Kaggle '
    f'counts); {"|".join(_LABELLED)}: at least '
    f'{layouts.LAYOUTS["nih"].min_images}, default '
    f'{layouts.LAYOUTS["nih"].default_images}.',
    lower_bound=min(layout.min_images for layout in layouts.LAYOUTS.values()))
_SEED = flags.DEFINE_integer('seed', 0, 'Everything is a function of it.')
_SIZE_SCALE = flags.DEFINE_float(
    'size_scale', None, 'Multiplies the realistic image sizes (e.g. 0.1 for '
    'fast tests). Default 1.0 for the Kermany layouts; for '
    + ', '.join(f'{name} {layouts.LAYOUTS[name].default_size_scale}'
                for name in _LABELLED) + ' (128-256 px images).',
    lower_bound=1e-3)
_LAYOUT = flags.DEFINE_enum(
    'layout', 'kaggle', list(layouts.LAYOUTS),
    'Folder layout: Kermany-like (kaggle, mendeley, pool, rsna) or '
    "another source's (" + '; '.join(
        f'{name}: {layouts.LAYOUTS[name].description}'
        for name in _LABELLED) + ').')
_NUM_WORKERS = flags.DEFINE_integer(
    'num_workers', None, 'Drawing processes (default: all cores).',
    lower_bound=1)
# The layouts' own options; each is passed only when given, and a layout
# without it refuses it in one line.
_OPTIONS = (
    flags.DEFINE_boolean(
        'boxes', False, 'nih: also write BBox_List_2017.csv (boxes around '
        'the drawn findings, in the PNG\'s pixels).'),
    flags.DEFINE_enum(
        'release', 'competition', ['competition', 'physionet'],
        "vindr: the Kaggle competition's train.csv, or PhysioNet's "
        'annotations/ files.'),
    flags.DEFINE_boolean(
        'gzip_csv', False, 'padchest: write the label file as .csv.gz.'),
    flags.DEFINE_boolean(
        'set_id_file', False, "nih_google: one label file with a Set Id "
        'column (as torchxrayvision ships it) instead of one per split.'),
    flags.DEFINE_boolean(
        'source_style', False, 'every layout but the Kermany ones: draw '
        "the source's own look (an intensity curve, a border, "
        'a corner marker) on every image, something a model can overfit '
        'to (issue 35).'),
)

flags.mark_flags_as_required(['out_dir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  layout = layouts.LAYOUTS[_LAYOUT.value]
  with runtime.tool_errors():
    layouts.make_synthetic(
        _OUT_DIR.value, _LAYOUT.value,
        num_images=_default(_NUM_IMAGES, layout.default_images),
        seed=_SEED.value,
        size_scale=_default(_SIZE_SCALE, layout.default_size_scale),
        num_workers=_NUM_WORKERS.value, progress=True,
        **{option.name: option.value for option in _OPTIONS
           if flags.FLAGS[option.name].present})


def _default(flag, value):
  return value if flag.value is None else flag.value


def run():
  """The console script (xray-make-synthetic) and tools/make_synthetic."""
  runtime.run_tool(main, __name__)


if __name__ == '__main__':
  run()
