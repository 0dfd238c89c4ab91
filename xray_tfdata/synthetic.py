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
with PIL, plus a fine grain so JPEG sizes and decode cost are realistic.
"""

import math
import os
import shutil
import time

import numpy as np
from PIL import Image

from xray_tfdata import errors
from xray_tfdata import runtime

CLASS_NAMES = ('NORMAL', 'PNEUMONIA')
LAYOUTS = ('kaggle', 'mendeley', 'pool', 'rsna')
_RSNA_SIZE = 1024  # RSNA's images are 1024 x 1024
_RSNA_MONOCHROME1_EVERY = 5

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
_GRAIN_TILE = 509  # side of the fine-grain noise tile (odd: no 8x8 alignment)


class SyntheticError(errors.XrayError):
  """Bad arguments to `make_synthetic_kermany` (a user error)."""


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
      layout: the same pixels, RLE-compressed, see `_reencode_dicom`); the
      first is a train/PNEUMONIA image copied into test/PNEUMONIA.
    num_workers: processes drawing images; default all cores. Small trees
      are drawn in this process.
    progress: print one line when done.

  Returns:
    A summary dict: out_dir, layout, seed, num_images, counts
    {split: {class: n}} in Kaggle terms, num_rgb, duplicates
    [(source, copy)] relative paths, elapsed_seconds.

  Raises:
    SyntheticError: bad arguments, or out_dir exists and is not empty.
  """
  start = time.perf_counter()
  if layout not in LAYOUTS:
    raise SyntheticError(f'layout must be one of {LAYOUTS}, got {layout!r}')
  if num_images < MIN_IMAGES:
    raise SyntheticError(f'num_images must be at least {MIN_IMAGES} (some '
                         f'for every split and class), got {num_images}')
  if num_duplicates < 0:
    raise SyntheticError(f'num_duplicates must be >= 0, got {num_duplicates}')
  if not size_scale > 0:
    raise SyntheticError(f'size_scale must be positive, got {size_scale}')
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise SyntheticError(f'out_dir {out_dir} exists and is not empty; choose '
                         'a new folder or remove it')
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise SyntheticError(f'out_dir {out_dir} is a file; choose a folder')

  if layout == 'rsna':
    _pydicom()  # fail here, in one line, not in every worker
  counts = split_counts(num_images)
  specs = _plan_images(counts, seed, layout, size_scale)
  copies = _plan_duplicates(specs, num_duplicates)

  for folder in sorted({os.path.dirname(s['path']) for s in specs}):
    os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
  copy_targets = {target for _, target in copies}
  jobs = [(os.path.join(out_dir, s['path']), s['label'], s['width'],
           s['height'], s['rgb'], s['quality'], s['pixel_seed'])
          for s in specs if s['path'] not in copy_targets]
  num_workers = num_workers or runtime.cpu_count()
  if num_workers > 1 and len(jobs) >= 64:
    import multiprocessing  # pylint: disable=g-import-not-at-top
    # spawn, not fork: the caller may have imported TensorFlow, whose
    # threads do not survive a fork.
    with multiprocessing.get_context('spawn').Pool(num_workers) as pool:
      for _ in pool.imap_unordered(render_image, jobs, chunksize=8):
        pass
  else:
    for job in jobs:
      render_image(job)
  for source, target in copies:
    if layout == 'rsna':
      _reencode_dicom(os.path.join(out_dir, source),
                      os.path.join(out_dir, target))
    else:
      shutil.copyfile(os.path.join(out_dir, source),
                      os.path.join(out_dir, target))
  if layout == 'rsna':
    _write_rsna_labels(out_dir, specs, seed)

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
    raise SyntheticError(f'num_images must be at least {MIN_IMAGES}')
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
        # RSNA's anonymized patientIds are UUIDs, one image each.
        name = f'{rng.bytes(16).hex()}.dcm'
        name = f'{name[:8]}-{name[8:12]}-{name[12:16]}-{name[16:20]}-{name[20:]}'
        width = height = max(8, round(_RSNA_SIZE * size_scale))
        path = f'stage_2_train_images/{name}'
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
        raise SyntheticError(
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
  small = draw_chest(rng, label, draw_height, draw_width)
  image = Image.fromarray(small).resize((width, height),
                                        Image.Resampling.BICUBIC)
  # A fine grain at full size, as film and detector noise give the real
  # images; without it JPEGs of upscaled drawings are unrealistically small
  # and fast to decode.
  pixels = np.asarray(image, np.int16) + _grain(rng, height, width)
  image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
  if path.endswith('.dcm'):
    _save_dicom(path, np.asarray(image), pixel_seed)
    return
  if rgb:
    image = image.convert('RGB')
  image.save(path, 'JPEG', quality=quality)


def _pydicom():
  try:
    import pydicom  # pylint: disable=g-import-not-at-top  (optional extra)
  except ImportError as e:
    raise SyntheticError("the rsna layout writes DICOM: pip install "
                         "'xray_tfdata[dicom]'") from e
  return pydicom


def _save_dicom(path, pixels, pixel_seed):
  """An uncompressed 8-bit CR DICOM of pixels as displayed; every fifth one
  MONOCHROME1, whose stored values are inverted (white is low there)."""
  pydicom = _pydicom()
  from pydicom.dataset import Dataset, FileMetaDataset  # pylint: disable=g-import-not-at-top,multiple-imports
  monochrome1 = pixel_seed[-1] % _RSNA_MONOCHROME1_EVERY == 0
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = '1.2.840.10008.5.1.4.1.1.1'  # CR
  meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(
      entropy_srcs=[str(pixel_seed)])
  meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.PatientID = os.path.splitext(os.path.basename(path))[0]
  ds.Modality = 'CR'
  ds.BodyPartExamined = 'CHEST'
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = 'MONOCHROME1' if monochrome1 else 'MONOCHROME2'
  ds.BitsAllocated = ds.BitsStored = 8
  ds.HighBit = 7
  ds.PixelRepresentation = 0
  ds.PixelData = (255 - pixels if monochrome1 else pixels).astype(
      np.uint8).tobytes()
  ds.save_as(path, enforce_file_format=True)


def _reencode_dicom(source, target):
  """Copies a DICOM as another file of the same film: RLE Lossless instead
  of uncompressed, under the target's patientId, so that only its decoded
  pixels match (as with a film re-exported from another archive)."""
  pydicom = _pydicom()
  dataset = pydicom.dcmread(source)
  dataset.PatientID = os.path.splitext(os.path.basename(target))[0]
  dataset.compress(pydicom.uid.RLELossless)
  dataset.save_as(target, enforce_file_format=True)


def _write_rsna_labels(out_dir, specs, seed):
  """stage_2_train_labels.csv (one row per box; blank for Target 0) and
  stage_2_detailed_class_info.csv (repeated per box, as RSNA's)."""
  rng = np.random.default_rng([seed, 2])
  labels = ['patientId,x,y,width,height,Target']
  classes = ['patientId,class']
  for spec in specs:
    patient = os.path.splitext(os.path.basename(spec['path']))[0]
    if spec['label'] == 0:
      labels.append(f'{patient},,,,,0')
      classes.append(f'{patient},' + ('Normal' if rng.random() < 0.5 else
                                       'No Lung Opacity / Not Normal'))
      continue
    for _ in range(1 + int(rng.integers(0, 2))):  # one or two boxes
      side = spec['width']
      x, y = rng.uniform(0.15, 0.55, 2) * side
      w, h = rng.uniform(0.1, 0.3, 2) * side
      labels.append(f'{patient},{x:.1f},{y:.1f},{w:.1f},{h:.1f},1')
      classes.append(f'{patient},Lung Opacity')
  for name, lines in (('stage_2_train_labels.csv', labels),
                      ('stage_2_detailed_class_info.csv', classes)):
    with open(os.path.join(out_dir, name), 'w') as f:
      f.write('\n'.join(lines) + '\n')


def draw_chest(rng, label, height, width):
  """Draws a chest-like uint8 image [height, width]; label 1 adds opacities.

  Coordinates are fractions of the width and height. The lungs are darker
  than the soft tissue (air), bones brighter, opacities brighter.
  """
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  y = (y + 0.5) / height
  x = (x + 0.5) / width
  shift_x, shift_y = rng.normal(0, 0.02, 2)

  def ellipse(cx, cy, rx, ry, softness):
    r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return 1 / (1 + np.exp((r - 1) / softness))

  tissue = rng.uniform(95, 135)
  image = rng.uniform(8, 30) + (tissue - 20) * ellipse(
      0.5 + shift_x, 0.62 + shift_y, rng.uniform(0.42, 0.5), 0.62, 0.05)

  lungs = np.zeros_like(x)
  centers = []
  for side in (-1, 1):
    cx = 0.5 + shift_x + side * rng.uniform(0.17, 0.22)
    cy = 0.47 + shift_y + rng.normal(0, 0.015)
    rx, ry = rng.uniform(0.11, 0.15), rng.uniform(0.25, 0.31)
    centers.append((cx, cy, rx, ry))
    lungs = np.maximum(lungs, ellipse(cx, cy, rx, ry, 0.08))
  lung_darkening = rng.uniform(35, 65)
  image -= lung_darkening * lungs

  # Ribs: bright arcs across each lung, stronger inside the lung fields.
  spacing = rng.uniform(0.065, 0.085)
  phase = rng.uniform(0, spacing)
  curvature = rng.uniform(0.8, 1.4)
  rib_y = y - curvature * (x - 0.5 - shift_x) ** 2
  ribs = 0.5 + 0.5 * np.cos(2 * np.pi * (rib_y - phase) / spacing)
  image += rng.uniform(12, 24) * ribs ** 4 * (0.3 + 0.7 * lungs)

  # Spine and mediastinum: a bright vertical band in the middle.
  spine_width = rng.uniform(0.04, 0.06)
  spine = np.exp(-((x - 0.5 - shift_x) / spine_width) ** 2) * (y > 0.12)
  image += rng.uniform(50, 80) * spine

  # Opacities: diffuse bright patches (blurred blobs) inside the lungs.
  # PNEUMONIA always has some, one in ten faint; a quarter of NORMAL images
  # have faint ones, so the classes overlap a little.
  if label == 1:
    num_blobs = rng.integers(2, 6)
    strength = (rng.uniform(0.45, 1.0) if rng.random() < 0.9 else
                rng.uniform(0.1, 0.3))
  else:
    num_blobs = rng.integers(1, 3) if rng.random() < 0.25 else 0
    strength = rng.uniform(0.1, 0.3)
  for _ in range(num_blobs):
    cx, cy, rx, ry = centers[rng.integers(0, 2)]
    bx = cx + rng.uniform(-0.6, 0.6) * rx
    by = cy + rng.uniform(-0.6, 0.6) * ry
    sigma = rng.uniform(0.05, 0.11)
    blob = np.exp(-(((x - bx) / sigma) ** 2 + ((y - by) / (1.3 * sigma)) ** 2))
    image += strength * rng.uniform(45, 75) * blob * lungs

  # Exposure varies from film to film; noise at the drawing scale.
  image = rng.uniform(0.85, 1.15) * image + rng.normal(0, 8, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


_GRAIN = None


def _grain(rng, height, width):
  """Fine noise [height, width] int16: a fixed tile at a random offset."""
  global _GRAIN  # pylint: disable=global-statement
  if _GRAIN is None:
    # Fixed seed: the tile is the same in every process, so output is
    # deterministic whichever worker draws an image.
    tile = np.random.default_rng(20180222).normal(0, 5, (_GRAIN_TILE,) * 2)
    _GRAIN = np.round(tile).astype(np.int16)
  dy, dx = rng.integers(0, _GRAIN_TILE, 2)
  reps = (-(-(height + dy) // _GRAIN_TILE), -(-(width + dx) // _GRAIN_TILE))
  return np.tile(_GRAIN, reps)[dy:dy + height, dx:dx + width]
