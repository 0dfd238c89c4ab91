"""Every synthetic layout by name: tools/make_synthetic's --layout choices
and `make_synthetic(out_dir, layout, ...)`, which writes any of them."""

import collections

from xray_tfdata.synthetic import chexpert
from xray_tfdata.synthetic import kermany
from xray_tfdata.synthetic import mimic
from xray_tfdata.synthetic import nih
from xray_tfdata.synthetic import nih_google
from xray_tfdata.synthetic import nlm_tb
from xray_tfdata.synthetic import padchest
from xray_tfdata.synthetic import siim
from xray_tfdata.synthetic import tree
from xray_tfdata.synthetic import vindr


# write: fn(out_dir, num_images=, seed=, size_scale=, num_workers=,
# progress=, **options); options: the names of the layout's own options.
Layout = collections.namedtuple(
    'Layout', ['write', 'min_images', 'default_images', 'default_size_scale',
               'description', 'options'], defaults=[()])


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
                  'NIH ChestX-ray14', ('boxes', 'source_style')),
    'chexpert': Layout(chexpert.make_synthetic_chexpert, tree.MIN_IMAGES,
                       tree.DEFAULT_NUM_IMAGES, chexpert.DEFAULT_SIZE_SCALE,
                       'CheXpert-v1.0-small', ('source_style',)),
    'mimic': Layout(mimic.make_synthetic_mimic, tree.MIN_IMAGES,
                    tree.DEFAULT_NUM_IMAGES, mimic.DEFAULT_SIZE_SCALE,
                    'MIMIC-CXR-JPG 2.0.0', ('source_style',)),
    'padchest': Layout(padchest.make_synthetic_padchest, tree.MIN_IMAGES,
                       tree.DEFAULT_NUM_IMAGES, padchest.DEFAULT_SIZE_SCALE,
                       'PadChest, 16-bit PNGs',
                       ('gzip_csv', 'source_style')),
    'vindr': Layout(vindr.make_synthetic_vindr, tree.MIN_IMAGES,
                    tree.DEFAULT_NUM_IMAGES, vindr.DEFAULT_SIZE_SCALE,
                    'VinDr-CXR, DICOMs, three readers per image',
                    ('release', 'source_style')),
    'siim': Layout(siim.make_synthetic_siim, tree.MIN_IMAGES,
                   tree.DEFAULT_NUM_IMAGES, siim.DEFAULT_SIZE_SCALE,
                   'SIIM-ACR Pneumothorax, DICOMs and train-rle.csv',
                   ('source_style',)),
    'nih_google': Layout(nih_google.make_synthetic_nih_google,
                         tree.MIN_IMAGES, tree.DEFAULT_NUM_IMAGES,
                         nih_google.DEFAULT_SIZE_SCALE,
                         "NIH with Google's expert labels",
                         ('set_id_file', 'source_style')),
    'nlm_tb': Layout(nlm_tb.make_synthetic_nlm_tb, tree.MIN_IMAGES,
                     tree.DEFAULT_NUM_IMAGES, nlm_tb.DEFAULT_SIZE_SCALE,
                     'NLM tuberculosis sets: Shenzhen and Montgomery',
                     ('source_style',)),
}


def make_synthetic(out_dir, layout, **options):
  """Writes a synthetic tree of `layout` into `out_dir`.

  Args:
    out_dir: the folder to create (each layout says what it accepts there).
    layout: a key of LAYOUTS.
    **options: the layout's writer's arguments (num_images, seed,
      size_scale, num_workers, progress, and the layout's own options,
      LAYOUTS[layout].options); a missing one takes the layout's default.

  Returns:
    The layout's summary dict: what was written, counted (see the module).

  Raises:
    tree.SyntheticError: an unknown layout, an option it does not have,
      or bad arguments for it.
  """
  if layout not in LAYOUTS:
    raise tree.SyntheticError(
        f'layout must be one of {", ".join(LAYOUTS)}, got {layout!r}')
  common = ('num_images', 'seed', 'size_scale', 'num_workers', 'progress')
  other = sorted(set(options) - set(common) - set(LAYOUTS[layout].options))
  if other:
    raise tree.SyntheticError(
        f'{", ".join(other)}: not an option of the {layout} layout (its '
        f'options: {", ".join(LAYOUTS[layout].options) or "none"}); leave '
        'it out or choose a layout that has it')
  return LAYOUTS[layout].write(out_dir, **options)
