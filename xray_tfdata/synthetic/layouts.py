"""Every synthetic layout by name: tools/make_synthetic's --layout choices
and `make_synthetic(out_dir, layout, ...)`, which writes any of them."""

import collections

from xray_tfdata.synthetic import chexpert
from xray_tfdata.synthetic import kermany
from xray_tfdata.synthetic import mimic
from xray_tfdata.synthetic import nih
from xray_tfdata.synthetic import tree


Layout = collections.namedtuple(
    'Layout', ['write', 'min_images', 'default_images', 'default_size_scale',
               'description'])


def _kermany(layout):
  return lambda out_dir, **options: kermany.make_synthetic_kermany(
      out_dir, layout=layout, **options)


# layout -> how to write it; tools/make_synthetic's --layout choices.
LAYOUTS = {
    'kaggle': Layout(_kermany('kaggle'), kermany.MIN_IMAGES,
                     kermany.FULL_SIZE, 1.0,
                     "Kermany's Kaggle copy: train|val|test/NORMAL|PNEUMONIA"),
    'mendeley': Layout(_kermany('mendeley'), kermany.MIN_IMAGES,
                       kermany.FULL_SIZE, 1.0,
                       "Kermany's Mendeley copy: train|test/NORMAL|PNEUMONIA"),
    'pool': Layout(_kermany('pool'), kermany.MIN_IMAGES, kermany.FULL_SIZE,
                   1.0, 'class folders only: NORMAL|PNEUMONIA'),
    'rsna': Layout(_kermany('rsna'), kermany.MIN_IMAGES, kermany.FULL_SIZE,
                   1.0, 'RSNA Pneumonia: DICOMs and the stage 2 label files'),
    'nih': Layout(nih.make_synthetic_nih, tree.MIN_IMAGES,
                  tree.DEFAULT_NUM_IMAGES, nih.DEFAULT_SIZE_SCALE,
                  'NIH ChestX-ray14'),
    'chexpert': Layout(chexpert.make_synthetic_chexpert, tree.MIN_IMAGES,
                       tree.DEFAULT_NUM_IMAGES, chexpert.DEFAULT_SIZE_SCALE,
                       'CheXpert-v1.0-small'),
    'mimic': Layout(mimic.make_synthetic_mimic, tree.MIN_IMAGES,
                    tree.DEFAULT_NUM_IMAGES, mimic.DEFAULT_SIZE_SCALE,
                    'MIMIC-CXR-JPG 2.0.0'),
}


def make_synthetic(out_dir, layout, **options):
  """Writes a synthetic tree of `layout` into `out_dir`.

  Args:
    out_dir: the folder to create (each layout says what it accepts there).
    layout: a key of LAYOUTS.
    **options: the layout's writer's arguments (num_images, seed,
      size_scale, num_workers, progress, and the layout's own); a missing
      one takes the layout's default.

  Returns:
    The layout's summary dict: what was written, counted (see the module).

  Raises:
    tree.SyntheticError: an unknown layout, or bad arguments for it.
  """
  if layout not in LAYOUTS:
    raise tree.SyntheticError(
        f'layout must be one of {", ".join(LAYOUTS)}, got {layout!r}')
  return LAYOUTS[layout].write(out_dir, **options)
