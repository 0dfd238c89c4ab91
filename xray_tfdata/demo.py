"""Synthetic demo and benchmark datasets, made once and reused.

  demo.ensure_demo_data('data/demo_64', num_images=600, image_size=64)

draws a pool of synthetic Kermany-like JPEGs (`synthetic`) and converts it
to TFRecords (`writer`), re-split by patient with the seed's val and test
proportions. `tools/train --demo_images` and `tools/benchmark` both use it;
each step is skipped when its output already exists.
"""

import os

from xray_tfdata import schema

# The seed's val and test splits: 150 NORMAL and 400 PNEUMONIA each, of the
# 5,856 images of Kermany's dataset.
_SEED_SPLIT = {'NORMAL': 150, 'PNEUMONIA': 400}
_SEED_TOTAL = 5856


def seed_split_counts(num_images):
  """The seed's val and test counts (150/400 each of 5,856), scaled.

  Args:
    num_images: images in the whole pool.

  Returns:
    (val_counts, test_counts), dicts class name -> count, each at least 2.
  """
  scale = num_images / _SEED_TOTAL
  counts = {name: max(2, round(count * scale))
            for name, count in _SEED_SPLIT.items()}
  return counts, dict(counts)


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
    synthetic.SyntheticError: num_images too small, or src_dir is a file.
  """
  if os.path.exists(src_dir) and os.listdir(src_dir):
    return src_dir
  # Imported here: drawing needs PIL and numpy only when there is no pool.
  from xray_tfdata import synthetic  # pylint: disable=g-import-not-at-top
  if not quiet:
    print(f'demo: drawing {num_images} synthetic chest X-rays into {src_dir}')
  synthetic.make_synthetic_kermany(src_dir, num_images=num_images, seed=seed,
                                   layout='pool', size_scale=size_scale,
                                   progress=not quiet)
  return src_dir


def convert_pool(src_dir, data_dir, num_images, image_size, seed=0,
                 quiet=False):
  """Converts a pool to TFRecords in data_dir, once, with the seed's splits.

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
  if schema.is_converted(data_dir):
    return data_dir
  from xray_tfdata import writer  # pylint: disable=g-import-not-at-top
  if not quiet:
    print(f'demo: converting {src_dir} to TFRecords in {data_dir}')
  val_counts, test_counts = seed_split_counts(num_images)
  writer.convert(src_dir, data_dir, image_size=image_size, resplit=True,
                 val_counts=val_counts, test_counts=test_counts, seed=seed)
  return data_dir


def ensure_demo_data(data_dir, num_images, image_size, seed=0):
  """Creates the synthetic demo dataset in data_dir unless it exists.

  The JPEGs go to `<data_dir>-jpeg` as one pool of class folders, at a
  quarter of Kermany's sizes (the demo trains at small image sizes, and
  drawing and decoding full-size images would take most of its time).

  Args:
    data_dir: where the TFRecords go.
    num_images: images in the pool.
    image_size: stored height and width.
    seed: the drawing's and the re-split's seed.
  """
  if schema.is_converted(data_dir):
    return  # the pool may be gone; it is not needed again
  src_dir = draw_pool(data_dir.rstrip('/') + '-jpeg', num_images, seed=seed,
                      size_scale=0.25)
  convert_pool(src_dir, data_dir, num_images, image_size, seed=seed)
