"""Writing a synthetic source tree: the folder, the label files, the images.

Shared by every layout module of `xray_tfdata.synthetic`:

  * `claim` / `write_marker`: a tree holds MARKER, its claim on the folder;
    a rerun may replace a tree it wrote, never a foreign folder, and a tree
    whose marker does not say 'drawn' was cut short.
  * `write_planned`: the labelled layouts' driver. A layout plans its images
    (path, stored size, view, finding strengths) and label files; this draws
    the images (in processes for large trees) and writes the files.
  * `csv_bytes`, `gzip_bytes`, `write_dicom`: the files' formats, byte for
    byte the same for a seed (gzip's mtime is 0, DICOM UIDs come from the
    seed).

Only numpy, PIL and (for DICOM) pydicom: no TensorFlow.
"""

import csv
import gzip
import io
import os
import shutil
import time

import numpy as np
from PIL import Image

from xray_tfdata import atomic
from xray_tfdata import errors
from xray_tfdata import runtime
from xray_tfdata.synthetic import draw

# In each labelled tree: its claim on the folder (a rerun may replace it).
MARKER = '.xray_tfdata_synthetic'
MIN_IMAGES = 20  # a few patients for every official split
DEFAULT_NUM_IMAGES = 200
_DRAW_MAX = 256  # drawn at most this wide, then resized up
_JPEG_QUALITY = 90


class SyntheticError(errors.XrayError):
  """Bad arguments to a synthetic tree's writer (a user error)."""


def check_arguments(num_images, size_scale, min_images=MIN_IMAGES):
  """Raises SyntheticError for too few images or a size_scale <= 0."""
  if not isinstance(num_images, int) or num_images < min_images:
    raise SyntheticError(
        f'num_images must be at least {min_images} (a few patients for '
        f'every split), got {num_images}')
  if not size_scale > 0:
    raise SyntheticError(f'size_scale must be positive, got {size_scale}')


def claim(out_dir):
  """Checks that out_dir is new, empty or ours; empties it if ours.

  Raises:
    SyntheticError: out_dir is a file, or a folder holding files that no
      synthetic writer wrote.
  """
  if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
    raise SyntheticError(f'out_dir {out_dir} is a file; choose a folder')
  if not os.path.isdir(out_dir):
    return
  entries = os.listdir(out_dir)
  if not entries:
    return
  if MARKER not in entries:
    raise SyntheticError(
        f'out_dir {out_dir} exists and is not empty (and not a synthetic '
        'tree); choose a new folder or remove it')
  # A tree this package wrote (finished or not): ours to replace.
  for name in entries:
    path = os.path.join(out_dir, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    else:
      os.unlink(path)


def write_marker(out_dir, state):
  os.makedirs(out_dir, exist_ok=True)
  atomic.write_json(os.path.join(out_dir, MARKER), state, sort_keys=True)


def write_planned(out_dir, layout, stream, plan, num_images, seed, size_scale,
                  default_size_scale, num_workers=None, progress=False,
                  summarize=None, source_style=False):
  """Plans, draws and writes one labelled tree: the body of every labelled
  layout's `make_synthetic_<layout>`, which passes its caller's arguments
  through and documents only what is its own.

  Args (the caller's, as each layout's writer takes them):
    out_dir: folder to create; must not exist, be empty, or hold a tree a
      synthetic writer wrote (it holds MARKER), which is replaced.
    num_images: image files written, at least MIN_IMAGES.
    seed: names, labels and pixels are a function of it.
    size_scale: multiplies the real size; None: default_size_scale. Sizes
      stay >= 16 px.
    num_workers: processes drawing images; default all cores. Small trees
      are drawn in this process.
    progress: print one line when done.
    source_style: draw the source's look (draw.SOURCE_STYLES[layout], issue
      35) on every image.

  Args (the layout's):
    layout: the layout's name (for the summary, the marker and the look).
    stream: the layout's random stream number: trees of different layouts
      at one seed are independent, and a layout's bytes never change when
      another layout is added.
    plan: fn(rng, num_images, size_scale) -> (images, files): images are
      dicts with path, width, height, lateral, effusion, cardiomegaly
      (0..1 strengths), split, patient, study and any more fields; files
      {relative path: bytes}.
    default_size_scale: the layout's size_scale when the caller gives none.
    summarize: fn(images) -> dict of layout-specific counts merged into
      the summary (the independent recount a reader's test compares with).

  Returns:
    A summary dict: out_dir, layout, seed, num_images, num_patients,
    num_studies, num_lateral, splits {split: {'images': n, 'patients': n}},
    elapsed_seconds, plus what `summarize` returns.

  Raises:
    SyntheticError: bad arguments, or out_dir is a file or holds files that
      no synthetic writer wrote.
  """
  if size_scale is None:
    size_scale = default_size_scale
  style = draw.SOURCE_STYLES[layout] if source_style else None
  start = time.perf_counter()
  check_arguments(num_images, size_scale)
  claim(out_dir)

  rng = np.random.default_rng([seed, stream, 0])
  images, label_files = plan(rng, num_images, size_scale)

  write_marker(out_dir, {'state': 'drawing'})
  folders = {os.path.dirname(image['path']) for image in images}
  folders |= {os.path.dirname(name) for name in label_files}
  for folder in sorted(folders - {''}):
    os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
  jobs = [(os.path.join(out_dir, image['path']), (seed, stream, index),
           image if style is None else dict(image, style=style))
          for index, image in enumerate(images)]
  run_jobs(render_image, jobs, num_workers, min_jobs=256, chunksize=16)
  for name, data in label_files.items():
    with open(os.path.join(out_dir, name), 'wb') as f:
      f.write(data)

  splits = {}
  for image in images:
    cell = splits.setdefault(image['split'], {'images': 0, 'patients': set()})
    cell['images'] += 1
    cell['patients'].add(image['patient'])
  summary = {
      'out_dir': out_dir,
      'layout': layout,
      'seed': seed,
      'num_images': len(images),
      'num_patients': len({image['patient'] for image in images}),
      'num_studies': len({image['study'] for image in images}),
      'num_lateral': sum(image['lateral'] for image in images),
      'splits': {split: {'images': cell['images'],
                         'patients': len(cell['patients'])}
                 for split, cell in sorted(splits.items())},
  }
  summary.update(summarize(images) if summarize else {})
  summary['elapsed_seconds'] = round(time.perf_counter() - start, 2)
  write_marker(out_dir, {'state': 'drawn', 'layout': layout, 'seed': seed,
                         'num_images': len(images)})
  if progress:
    print(f'wrote {len(images)} images ({layout} layout, '
          f'{summary["num_patients"]} patients, {summary["num_lateral"]} '
          f'lateral) to {out_dir} in {summary["elapsed_seconds"]:.1f} s')
  return summary


def run_jobs(function, jobs, num_workers, min_jobs, chunksize):
  """Runs function(job) for every job: in a process pool from min_jobs on
  (num_workers > 1; default all cores), else in this process."""
  num_workers = num_workers or runtime.cpu_count()
  if num_workers > 1 and len(jobs) >= min_jobs:
    import multiprocessing  # pylint: disable=g-import-not-at-top
    # spawn, not fork: the caller may have imported TensorFlow, whose
    # threads do not survive a fork.
    with multiprocessing.get_context('spawn').Pool(num_workers) as pool:
      for _ in pool.imap_unordered(function, jobs, chunksize=chunksize):
        pass
  else:
    for job in jobs:
      function(job)


def render_image(job):
  """Draws one planned image and saves it (runs in worker processes).

  job: (path, pixel_seed, image), image a planned dict: width, height,
  lateral, effusion, cardiomegaly; optional effusion_sides (see
  draw.draw_findings), marks (draw.add_mark's, at the stored size), style
  (a draw.SOURCE_STYLES entry), stored ((bits_stored, low, high): the
  display range's stored values, for 10- to 16-bit files) and dicom
  (write_dicom's arguments; photometric 'MONOCHROME1' stores the values
  inverted). Saved by the path's extension: .png (16-bit with stored),
  .jpg/.jpeg, .dcm/.dicom.
  """
  path, pixel_seed, image = job
  rng = np.random.default_rng(list(pixel_seed))
  width, height = image['width'], image['height']
  draw_width = min(_DRAW_MAX, width)
  draw_height = max(16, round(draw_width * height / width))
  small = draw.draw_findings(rng, draw_height, draw_width,
                             effusion=image['effusion'],
                             cardiomegaly=image['cardiomegaly'],
                             lateral=image['lateral'],
                             effusion_sides=image.get('effusion_sides'))
  pixels = draw.to_film(small, width, height, rng)
  for mark in image.get('marks', ()):
    pixels = draw.add_mark(pixels, mark)
  if image.get('style') is not None:
    pixels = draw.apply_style(pixels, image['style'])
  bits_stored = 8
  if image.get('stored'):
    bits_stored, low, high = image['stored']
    pixels = draw.to_stored(pixels, low, high)
  if path.endswith(('.dcm', '.dicom')):
    dicom = dict(image.get('dicom', {}))
    if dicom.get('photometric') == 'MONOCHROME1':
      pixels = (1 << bits_stored) - 1 - pixels.astype(np.int64)
    write_dicom(path, pixels, pixel_seed, bits_stored=bits_stored, **dicom)
  elif bits_stored > 8:
    # A 16-bit grayscale PNG (PIL mode I;16), as PadChest's, whatever the
    # bits in use. zlib level 1: at 2,800 px, 0.6 s an image instead of 4 s
    # at the default level, for a file 4% larger.
    Image.fromarray(pixels.astype(np.uint16)).save(path, 'PNG',
                                                   compress_level=1)
  elif path.endswith('.png'):
    Image.fromarray(pixels).save(path, 'PNG')
  else:
    Image.fromarray(pixels).save(path, 'JPEG', quality=_JPEG_QUALITY)


def csv_bytes(rows):
  out = io.StringIO()
  csv.writer(out, lineterminator='\n').writerows(rows)
  return out.getvalue().encode('utf-8')


def gzip_bytes(data):
  return gzip.compress(data, mtime=0)  # mtime 0: the same bytes every run


def scaled(size, size_scale):
  """A real size in pixels times size_scale, at least 16."""
  return max(16, int(round(size * size_scale)))


def patient_budget(num_images):
  """The most images one patient may have: a small tree still has enough
  patients for every split."""
  return max(2, num_images // 6)


def sign_strength(rng, present):
  """How strongly a present finding shows: mostly clear, one in ten faint."""
  if not present:
    return 0.0
  return float(rng.uniform(0.5, 1.0) if rng.random() < 0.9 else
               rng.uniform(0.15, 0.35))


def image_record(rng, path, width, height, lateral, truth, visible, **fields):
  """One planned image: its file, size and view, the strengths of the two
  drawn findings (visible = their names in the layout's spelling:
  (effusion, cardiomegaly)) and the layout's fields."""
  effusion_label, cardiomegaly_label = visible
  return dict(path=path, width=width, height=height, lateral=lateral,
              effusion=sign_strength(rng, truth[effusion_label]),
              cardiomegaly=sign_strength(rng, truth[cardiomegaly_label]),
              **fields)


def pydicom():
  """The pydicom module, or one line naming the extra to install."""
  try:
    import pydicom as module  # pylint: disable=g-import-not-at-top  (optional extra)
  except ImportError as e:
    raise SyntheticError("DICOM layouts need pydicom: pip install "
                         "'xray_tfdata[dicom]'") from e
  return module


def write_dicom(path, pixels, pixel_seed, photometric='MONOCHROME2',
                bits_stored=8, patient_id=None, instance_uid=None,
                **attributes):
  """An uncompressed CR DICOM of stored values `pixels` (uint8, or uint16
  with bits_stored > 8), its UIDs a function of pixel_seed.

  Args:
    path: the file to write.
    pixels: [rows, columns] stored values.
    pixel_seed: the image's seed tuple (the SOP instance UID's entropy).
    photometric: 'MONOCHROME2' or 'MONOCHROME1' (white is low).
    bits_stored: 8 (BitsAllocated 8) or up to 16 (BitsAllocated 16).
    patient_id: PatientID; default the file name without its extension.
    instance_uid: the SOP instance UID; default one drawn from pixel_seed.
    **attributes: more header attributes, set last.
  """
  module = pydicom()
  from pydicom.dataset import Dataset, FileMetaDataset  # pylint: disable=g-import-not-at-top,multiple-imports
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = '1.2.840.10008.5.1.4.1.1.1'  # CR
  meta.MediaStorageSOPInstanceUID = instance_uid or module.uid.generate_uid(
      entropy_srcs=[str(pixel_seed)])
  meta.TransferSyntaxUID = module.uid.ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.PatientID = (patient_id if patient_id is not None else
                  os.path.splitext(os.path.basename(path))[0])
  ds.Modality = 'CR'
  ds.BodyPartExamined = 'CHEST'
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = photometric
  ds.BitsAllocated = 8 if bits_stored <= 8 else 16
  ds.BitsStored = bits_stored
  ds.HighBit = bits_stored - 1
  ds.PixelRepresentation = 0
  for key, value in attributes.items():
    setattr(ds, key, value)
  dtype = np.uint8 if bits_stored <= 8 else np.uint16
  ds.PixelData = pixels.astype(dtype).tobytes()
  ds.save_as(path, enforce_file_format=True)
