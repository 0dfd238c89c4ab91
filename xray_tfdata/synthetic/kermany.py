"""Kermany-like synthetic chest X-ray folders, for the demo, tests and benchmarks.

The real dataset cannot be downloaded here, so this writes a stand-in with the
quirks that matter to a converter and a training pipeline:

  * the Kaggle layout `train|val|test/NORMAL|PNEUMONIA/*.jpeg` and its split
    proportions (1,341/3,875, 8/8, 234/390 at 5,856 images; about 27% NORMAL),
    or the Mendeley (`train|test`) or a pooled (`NORMAL|PNEUMONIA`) layout,
    or RSNA's (`stage_2_train_images/<patientId>.dcm` with its two CSV
    files: one label row per box, blank boxes for Target 0; 1024 px DICOMs,
    uncompressed 8-bit, a fifth of them MONOCHROME1 with inverted stored
    values, so a reader that ignores the photometric interpretation sees
    negatives; Kermany's class balance, not RSNA's; needs pydicom);
  * grayscale JPEGs whose sizes vary like the real ones (NORMAL about
    1690x1380 and 550 KB, PNEUMONIA about 1200x820 and 85 KB, clipped to the
    real extremes), and some RGB-mode files in train/PNEUMONIA;
  * Kermany file names that carry patient ids, several images per patient,
    patients cut into splits in blocks (so a boundary patient spans two splits,
    like the leakage in the real split);
  * byte-identical duplicates, one across train and test (rsna: the same
    pixels re-encoded as RLE Lossless, as a re-exported film is).

The class is learnable from the pixels: every image is a drawn chest (torso,
two darker lung fields, spine, ribs, noise) and PNEUMONIA adds diffuse bright
opacities inside the lungs. Opacity strength overlaps between classes (some
NORMAL images carry faint ones, some PNEUMONIA ones are faint) so the task is
learnable but not trivial: a small CNN on 64 px images with the aspect ratio
drawn independently of the class reached a validation AUC of about 0.98 in a
minute of CPU training. The anatomy is drawn in fractions of the image size,
so squashing to a square removes the class-dependent aspect ratio from it;
the noise is isotropic in the original, as film grain is, so squashing
stretches it differently per class, as it does for the real images. Image
size and aspect differ by class as in the real set; a model must not be
given them.

Only numpy and PIL: no TensorFlow. Images are drawn at 256 px and resized up
with PIL, plus a fine grain so JPEG sizes and decode cost are realistic
(`draw`). The rsna layout's file formats are in `rsna`.
"""

import math
import os
import shutil
import time

import numpy as np
from PIL import Image

from xray_tfdata.synthetic import draw
from xray_tfdata.synthetic import rsna
from xray_tfdata.synthetic import tree

CLASS_NAMES = ('NORMAL', 'PNEUMONIA')
LAYOUTS = ('kaggle', 'mendeley', 'pool', 'rsna')

# Image counts of the Kaggle copy, (split, class) -> count; 5,856 in total.
KAGGLE_COUNTS = {
    ('train', 'NORMAL'): 1341, ('train', 'PNEUMONIA'): 3875,
    ('val', 'NORMAL'): 8, ('val', 'PNEUMONIA'): 8,
    ('test', 'NORMAL'): 234, ('test', 'PNEUMONIA'): 390,
}
# Every split and class gets one, train gets enough for the duplicates'
# originals, and a re-split has a patient or two to draw.
MIN_IMAGES = 12
FULL_SIZE = sum(KAGGLE_COUNTS.values())

# (mean width, mean height) per class and the real extremes, in pixels.
_MEAN_SIZE = {'NORMAL': (1690, 1380), 'PNEUMONIA': (1200, 820)}
_MIN_SIZE = (384, 127)
_MAX_SIZE = (2916, 2713)
_RGB_FRACTION = 0.05  # of train/PNEUMONIA (the real set: 283 of 3,875)
# JPEG quality range [low, high) per class, chosen so that the mean file
# sizes come near the real ones (NORMAL about 551 KB, PNEUMONIA about 85 KB:
# the real PNEUMONIA files are far more compressed), since file size drives
# read time and part of the decode time.
_JPEG_QUALITY = {'NORMAL': (86, 92), 'PNEUMONIA': (58, 68)}
_DRAW_WIDTH = 256  # pixels; drawn at most this wide, then resized up


def make_synthetic_kermany(out_dir, num_images=FULL_SIZE, seed=0,
                           layout='kaggle', size_scale=1.0, num_duplicates=2,
                           num_workers=None, progress=False):
  """Writes a Kermany-like image tree into `out_dir`.

  Args:
    out_dir: folder to create; must not exist or be empty.
    num_images: total files written (duplicates included), at least 12 so
      every split and class gets one; 5,856 reproduces the real counts.
    seed: everything (names, sizes, pixels) is a function of the seed.
    layout: 'kaggle' (train/val/test), 'mendeley' (train/test; val merged
      into train), 'pool' (class folders only) or 'rsna' (DICOMs and the
      RSNA label files; see the module docstring).
    size_scale: multiplies the image sizes (after clipping to the real
      extremes); e.g. 0.05 for fast tests. Sizes stay at least 8 px.
    num_duplicates: extra byte-identical copies of other files (in the rsna
      layout: the same pixels, RLE-compressed, see `rsna.reencode_dicom`); the
      first is a train/PNEUMONIA image copied into test/PNEUMONIA.
    num_workers: processes drawing images; default all cores. Small trees
      are drawn in this process.
    progress: print one line when done.

  Returns:
    A summary dict: out_dir, layout, seed, num_images, counts
    {split: {class: n}} in Kaggle terms, num_rgb, duplicates
    [(source, copy)] relative paths, elapsed_seconds.

  Raises:
    tree.SyntheticError: bad arguments, or out_dir exists and is not empty.
  """
  start = time.perf_counter()
  if layout not in LAYOUTS:
    raise tree.SyntheticError(
        f'layout must be one of {LAYOUTS}, got {layout!r}')
  if num_images < MIN_IMAGES:
    raise tree.SyntheticError(
        f'num_images must be at least {MIN_IMAGES} (some for every split '
        f'and class), got {num_images}')
  if num_duplicates < 0:
    raise tree.SyntheticError(
        f'num_duplicates must be >= 0, got {num_duplicates}')
  if not size_scale > 0:
    raise tree.SyntheticError(
        f'size_scale must be positive, got {size_scale}')
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise tree.SyntheticError(
        f'out_dir {out_dir} exists and is not empty; choose a new folder or '
        'remove it')
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise tree.SyntheticError(
        f'out_dir {out_dir} is a file; choose a folder')

  if layout == 'rsna':
    tree.pydicom()  # fail here, in one line, not in every worker
  counts = split_counts(num_images)
  specs = _plan_images(counts, seed, layout, size_scale)
  copies = _plan_duplicates(specs, num_duplicates)

  for folder in sorted({os.path.dirname(s['path']) for s in specs}):
    os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
  copy_targets = {target for _, target in copies}
  jobs = [(os.path.join(out_dir, s['path']), s['label'], s['width'],
           s['height'], s['rgb'], s['quality'], s['pixel_seed'])
          for s in specs if s['path'] not in copy_targets]
  tree.run_jobs(render_image, jobs, num_workers, min_jobs=64, chunksize=8)
  for source, target in copies:
    if layout == 'rsna':
      rsna.reencode_dicom(os.path.join(out_dir, source),
                          os.path.join(out_dir, target))
    else:
      shutil.copyfile(os.path.join(out_dir, source),
                      os.path.join(out_dir, target))
  if layout == 'rsna':
    rsna.write_labels(out_dir, specs, seed)

  summary = {
      'out_dir': out_dir,
      'layout': layout,
      'seed': seed,
      'num_images': len(specs),
      'counts': {split: {name: counts[split, name] for name in CLASS_NAMES}
                 for split in ('train', 'val', 'test')},
      'num_rgb': sum(s['rgb'] for s in specs if s['path'] not in copy_targets),
      'duplicates': copies,
      'elapsed_seconds': round(time.perf_counter() - start, 2),
  }
  if progress:
    print(f'wrote {len(specs)} images ({layout} layout, {len(copies)} '
          f'duplicates, {summary["num_rgb"]} RGB) to {out_dir} in '
          f'{summary["elapsed_seconds"]:.1f} s')
  return summary


def split_counts(num_images):
  """Kaggle split proportions scaled to `num_images`, every cell at least 1.

  Returns:
    {(split, class): count}, summing to num_images; the real counts at 5,856.
  """
  if num_images < MIN_IMAGES:
    raise tree.SyntheticError(f'num_images must be at least {MIN_IMAGES}')
  quota = {k: v * num_images / FULL_SIZE for k, v in KAGGLE_COUNTS.items()}
  counts = {k: max(1, math.floor(q)) for k, q in quota.items()}
  # Largest remainder first; ties broken by the fixed key order.
  order = sorted(quota, key=lambda k: quota[k] - math.floor(quota[k]),
                 reverse=True)
  i = 0
  while sum(counts.values()) < num_images:
    counts[order[i % len(order)]] += 1
    i += 1
  while sum(counts.values()) > num_images:  # the minimum of 1 overshot
    largest = max(counts, key=counts.get)
    counts[largest] -= 1
  return counts


def _plan_images(counts, seed, layout, size_scale):
  """Names, sizes, modes and pixel seeds of every file, in a fixed order."""
  rng = np.random.default_rng([seed, 0])
  specs = []
  for label, class_name in enumerate(CLASS_NAMES):
    total = sum(counts[split, class_name] for split in ('train', 'val', 'test'))
    names = _file_names(rng, class_name, total)
    # Patients come in blocks: train first, then val, then test, so only the
    # patient at a block boundary spans two splits.
    splits = [split for split in ('train', 'val', 'test')
              for _ in range(counts[split, class_name])]
    for index, (name, split) in enumerate(zip(names, splits)):
      width, height = _image_size(rng, class_name, size_scale)
      if layout == 'rsna':
        path = rsna.image_path(rng)
        width = height = max(8, round(rsna.IMAGE_SIZE * size_scale))
      else:
        folder = {'kaggle': split,
                  'mendeley': 'test' if split == 'test' else 'train',
                  'pool': None}[layout]
        path = '/'.join(p for p in (folder, class_name, name) if p)
      specs.append({
          'path': path,
          'split': split,
          'class_name': class_name,
          'label': label,
          'width': width,
          'height': height,
          'rgb': bool(split == 'train' and class_name == 'PNEUMONIA' and
                      rng.random() < _RGB_FRACTION and layout != 'rsna'),
          'quality': int(rng.integers(*_JPEG_QUALITY[class_name])),
          'pixel_seed': (seed, label, index),
      })
  return specs


def _file_names(rng, class_name, count):
  """Kermany file names, grouped by patient, for one class."""
  names = []
  patient = 0
  counters = {'bacteria': 0, 'virus': 0}
  while len(names) < count:
    patient += 1
    if class_name == 'PNEUMONIA':
      images = 1 + rng.poisson(1.5)
      kind = 'bacteria' if rng.random() < 0.65 else 'virus'
      for _ in range(images):
        counters[kind] += 1
        names.append(f'person{patient}_{kind}_{counters[kind]}.jpeg')
    else:
      images = 1 + rng.poisson(0.8)
      # About a third of the real NORMAL files are `NORMAL2-IM-...`.
      prefix = 'NORMAL2-IM' if rng.random() < 0.35 else 'IM'
      for k in range(images):
        names.append(f'{prefix}-{patient:04d}-{k + 1:04d}.jpeg')
  return names[:count]


def _image_size(rng, class_name, size_scale):
  mean_width, mean_height = _MEAN_SIZE[class_name]
  width = rng.normal(mean_width, 0.17 * mean_width)
  aspect = rng.normal(mean_height / mean_width, 0.09)
  height = width * aspect
  width = np.clip(width, _MIN_SIZE[0], _MAX_SIZE[0]) * size_scale
  height = np.clip(height, _MIN_SIZE[1], _MAX_SIZE[1]) * size_scale
  return max(8, int(round(width))), max(8, int(round(height)))


def _plan_duplicates(specs, num_duplicates):
  """Picks (source, copy) pairs: the copy's slot gets the source's bytes.

  The first pair goes from train/PNEUMONIA into test/PNEUMONIA (the real set
  has one pair across train and test); the others stay within train,
  alternating classes. Copies replace the last files of a cell, sources are
  the first ones, so a source is never itself a copy.
  """
  cells = {}
  for s in specs:
    cells.setdefault((s['split'], s['class_name']), []).append(s['path'])
  plan = [(('train', 'PNEUMONIA'), ('test', 'PNEUMONIA'))]
  for i in range(1, num_duplicates):
    cell = ('train', CLASS_NAMES[(i - 1) % 2])
    plan.append((cell, cell))
  front, back = {}, {}
  copies = []
  for source_cell, target_cell in plan[:num_duplicates]:
    k, j = front.get(source_cell, 0), back.get(target_cell, 0)
    copies.append((cells[source_cell][k], cells[target_cell][-1 - j]))
    front[source_cell], back[target_cell] = k + 1, j + 1
    # Sources (from the front) and copies (from the back) must not meet.
    for cell in (source_cell, target_cell):
      if front.get(cell, 0) + back.get(cell, 0) > len(cells[cell]):
        raise tree.SyntheticError(
            f'num_duplicates={num_duplicates} is too many for {len(specs)} '
            'images; use fewer duplicates or more images')
  return copies


def render_image(job):
  """Draws one image and saves it as JPEG (runs in worker processes)."""
  path, label, width, height, rgb, quality, pixel_seed = job
  rng = np.random.default_rng(list(pixel_seed))
  # Drawn at most 256 px wide (smooth shapes lose nothing) and never larger
  # than the image, which keeps tiny test images fast.
  draw_width = min(_DRAW_WIDTH, width)
  draw_height = max(8, round(draw_width * height / width))
  small = draw.draw_chest(rng, label, draw_height, draw_width)
  pixels = draw.to_film(small, width, height, rng)
  if path.endswith('.dcm'):
    rsna.save_dicom(path, pixels, pixel_seed)
    return
  image = Image.fromarray(pixels)
  if rgb:
    image = image.convert('RGB')
  image.save(path, 'JPEG', quality=quality)
