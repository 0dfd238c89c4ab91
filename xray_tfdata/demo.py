"""Synthetic demo and benchmark datasets, made once and reused.

  demo.ensure_demo_data('data/demo_64', num_images=600, image_size=64)

draws a pool of synthetic Kermany-like JPEGs (`synthetic`) and converts it
to TFRecords (`writer`), re-split by patient with the reference experiment's
val and test proportions (`reference.scaled_split_counts`). `tools/train
--demo_images` and `tools/benchmark` both use it; each step is skipped when
its output already exists. `ensure_demo_data`
writes only into new or empty folders, or those it created (a marker file).
"""

import os
import shutil

from xray_tfdata import atomic
from xray_tfdata import dataset_info
from xray_tfdata import errors
from xray_tfdata import reference


def draw_pool(src_dir, num_images, seed=0, size_scale=1.0, quiet=False):
  """Draws a pool of synthetic JPEGs into src_dir/NORMAL|PNEUMONIA, once.

  Args:
    src_dir: the pool's folder; left alone when it exists and is not empty.
    num_images: images to draw.
    seed: everything drawn is a function of the seed.
    size_scale: image sizes relative to Kermany's (1.0: realistic sizes, for
      benchmarks of decoding; the demo draws them smaller to save time).
    quiet: print nothing.

  Returns:
    src_dir.

  Raises:
    tree.SyntheticError: num_images too small, or src_dir is a file.
  """
  if os.path.exists(src_dir) and os.listdir(src_dir):
    return src_dir
  # Imported here: drawing needs PIL and numpy only when there is no pool.
  from xray_tfdata.synthetic import kermany  # pylint: disable=g-import-not-at-top
  if not quiet:
    print(f'demo: drawing {num_images} synthetic chest X-rays into {src_dir}')
  kermany.make_synthetic_kermany(src_dir, num_images=num_images, seed=seed,
                                 layout='pool', size_scale=size_scale,
                                 progress=not quiet)
  return src_dir


def convert_pool(src_dir, data_dir, num_images, image_size, seed=0,
                 quiet=False):
  """Converts a pool to TFRecords in data_dir, once, with the reference's
  val and test proportions.

  Args:
    src_dir: a pool made by `draw_pool`.
    data_dir: the converted dataset; left alone when already converted.
    num_images: images in the pool (sets the val and test counts).
    image_size: stored height and width.
    seed: the re-split's seed.
    quiet: print nothing.

  Returns:
    data_dir.
  """
  if dataset_info.is_converted(data_dir):
    return data_dir
  from xray_tfdata import writer  # pylint: disable=g-import-not-at-top
  from xray_tfdata import sources  # pylint: disable=g-import-not-at-top
  if not quiet:
    print(f'demo: converting {src_dir} to TFRecords in {data_dir}')
  val_counts, test_counts = reference.scaled_split_counts(num_images)
  writer.convert(
      src_dir, data_dir,
      sources.class_folders.Options(
          resplit=True, val_counts=val_counts, test_counts=test_counts),
      writer.WriteOptions(image_size=image_size, seed=seed))
  return data_dir


class DemoError(errors.XrayError):
  """--demo_images would write into a folder it did not create."""


# In each folder the demo creates: its claim on the folder. The pool's
# marker also says whether the drawing finished ('drawn') or not.
MARKER = '.xray_tfdata_demo'
_POOL = 'pool'  # the class folders, under <data_dir>-jpeg


def demo_folders(data_dir):
  """(data_dir, the folder the demo draws its JPEGs into, under
  <data_dir>-jpeg)."""
  pool_root = data_dir.rstrip('/') + '-jpeg'
  return data_dir, os.path.join(pool_root, _POOL)


def ensure_demo_data(data_dir, num_images, image_size, seed=0):
  """Creates the synthetic demo dataset in data_dir unless it exists.

  The demo writes only into folders that do not exist, are empty, or that
  it created itself (they hold MARKER): data_dir, for the TFRecords, and
  `<data_dir>-jpeg`, for the JPEGs (one pool of class folders, at a quarter
  of Kermany's sizes: the demo trains at small image sizes, and drawing and
  decoding full-size images would take most of its time). Everything is
  checked before anything is written. A dataset the demo converted is
  reused; an interrupted drawing is drawn again, an interrupted conversion
  resumed.

  Args:
    data_dir: where the TFRecords go.
    num_images: images in the pool.
    image_size: stored height and width.
    seed: the drawing's and the re-split's seed.

  Raises:
    DemoError: data_dir or <data_dir>-jpeg holds files the demo did not
      write (a dataset of the user's, or anything else), or is a file.
  """
  data_dir, src_dir = demo_folders(data_dir)
  pool_root = os.path.dirname(src_dir)
  if dataset_info.is_converted(data_dir):
    if not _made_by_demo(data_dir, src_dir):
      raise DemoError(
          f'--demo_images: data_dir {data_dir} holds a dataset the demo did '
          'not create; drop --demo_images to train on it, or pass a new or '
          'empty --data_dir for the demo')
    return  # the pool may be gone; it is not needed again
  for folder in (data_dir, pool_root):
    if not _free_or_ours(folder):
      raise DemoError(
          f'--demo_images: {folder} exists and holds files the demo did not '
          'create; pass a --data_dir whose folder and <data_dir>-jpeg are new '
          'or empty (the demo writes only into those, or its own)')
  print(f'demo: creating a synthetic dataset of {num_images} images in '
        f'{data_dir} (JPEGs in {pool_root}); a rerun reuses it', flush=True)
  _draw(src_dir, num_images, seed)
  convert_pool(src_dir, data_dir, num_images, image_size, seed=seed,
               quiet=True)
  _write_marker(data_dir, 'converted')


def _free_or_ours(folder):
  """Whether the demo may write into folder: absent, empty, or marked."""
  if not os.path.lexists(folder):
    return True
  if not os.path.isdir(folder):
    return False
  entries = os.listdir(folder)
  return not entries or MARKER in entries


def _made_by_demo(data_dir, src_dir):
  """Whether the dataset in data_dir is the demo's: marked, or converted
  from the demo's pool (a conversion that ended before its marker, or a
  demo dataset made before markers existed, from <data_dir>-jpeg)."""
  if os.path.exists(os.path.join(data_dir, MARKER)):
    return True
  try:
    converted_from = dataset_info.load_info(data_dir).src_dir
  except dataset_info.DatasetError:
    return False
  return converted_from in (os.path.abspath(src_dir),
                            os.path.abspath(os.path.dirname(src_dir)))


def _draw(src_dir, num_images, seed):
  """Draws the pool into src_dir (under the marked <data_dir>-jpeg) unless
  a finished drawing is there; an unfinished one is ours to replace."""
  pool_root = os.path.dirname(src_dir)
  marker = os.path.join(pool_root, MARKER)
  if os.path.exists(marker):
    with open(marker, encoding='utf-8') as f:
      if f.read().strip() == 'drawn':
        return
  _write_marker(pool_root, 'drawing')
  shutil.rmtree(src_dir, ignore_errors=True)
  from xray_tfdata.synthetic import kermany  # pylint: disable=g-import-not-at-top
  kermany.make_synthetic_kermany(src_dir, num_images=num_images, seed=seed,
                                 layout='pool', size_scale=0.25,
                                 progress=False)
  _write_marker(pool_root, 'drawn')


def _write_marker(folder, state):
  os.makedirs(folder, exist_ok=True)
  atomic.write_text(os.path.join(folder, MARKER), state + '\n')
