"""SIIM-ACR Pneumothorax Segmentation (the challenge's training set).

train-rle.csv: `ImageId, EncodedPixels` (the real header has a space before
the second name; `tables.read_table` strips it); `-1` for an image without
pneumothorax; one row per region for an image with several (the real file:
12,954 rows for 12,047 images). The DICOMs at
dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<ImageId>.dcm,
found by file name at any depth (a further file of the same name is a
duplicate of the first).

One example per image, never one per row: its label Pneumothorax (1 where
any row holds a region, 0 where its row is -1) and the union of its regions
as a mask (`SourceFile.mask_rle`; the writer stores it at the stored size,
`rle.stored_mask`). The rows are accounted per image: `Plan.num_scanned`
counts images, and `Plan.ignored` says how many rows they had.

Read from each DICOM's header when planning: its size (an RLE that runs
past the image is refused before anything is written), PatientID (the
patient key; the ImageId where blank), ViewPosition, PatientSex and
PatientAge where present. SIIM publishes no split: --resplit (patient-
grouped val and test). Privacy: the patient id and the UIDs in the path
(study, series, ImageId) are stored hashed.

Bad input, refused in one line before anything is written: a missing
column, a row without its EncodedPixels, a blank ImageId, an EncodedPixels
that is not pairs of whole numbers (or -1), one that runs past its image,
an image with both -1 and a region.
"""

import collections
import dataclasses
import os

from xray_tfdata import dicom
from xray_tfdata.sources import base
from xray_tfdata.sources import rle
from xray_tfdata.sources import tables

SourceError = base.SourceError
LABELS = ('Pneumothorax',)
CSV_NAME = 'train-rle.csv'
IMAGES = 'dicom-images-train'
COLUMNS = ('ImageId', 'EncodedPixels')
_FIX = ('fix the row (EncodedPixels: pairs "start length" as the challenge '
        'encodes them, or -1 for no pneumothorax)')


@dataclasses.dataclass
class Options(tables.Options):
  """`tables.Options`; SIIM publishes no split (--resplit)."""
  SOURCE = 'siim'
  OFFICIAL = False


def detect(src_dir):
  """Whether src_dir holds train-rle.csv and dicom-images-train/."""
  return (os.path.isfile(os.path.join(src_dir, CSV_NAME)) and
          os.path.isdir(os.path.join(src_dir, IMAGES)))


def plan(src_dir, options, seed=0, progress=base.NO_PROGRESS):
  """A `base.Plan` of a SIIM tree (`tables.plan`).

  Raises:
    SourceError: see `read_rows` and `scan`; and `tables.plan`.
  """
  return tables.plan(src_dir, options, scan, seed, progress)


def read_rows(csv_path, progress=base.NO_PROGRESS):
  """train-rle.csv's rows per image, checked.

  Returns:
    {ImageId: [(line, EncodedPixels), ...]} in file order; -1 rows kept.

  Raises:
    SourceError: see the module docstring (one line, naming the row).
  """
  per_image = collections.OrderedDict()
  for line, row in tables.reported(
      tables.read_table(csv_path, COLUMNS, f'SIIM-ACR {CSV_NAME}'),
      CSV_NAME, progress):
    where = f'{csv_path} line {line}'
    if tables.truncated(row):
      raise SourceError(f'{where}: no EncodedPixels (fewer cells than the '
                        f'header; a file cut short?); {_FIX}')
    image_id = (row['ImageId'] or '').strip()
    if not image_id:
      raise SourceError(f'{where}: blank ImageId; fix the row or drop it')
    code = (row['EncodedPixels'] or '').strip()
    try:
      rle.parse(code)
    except rle.RleError as e:
      raise SourceError(f'{where}: {e}; {_FIX}') from None
    rows = per_image.setdefault(image_id, [])
    rows.append((line, code))
    codes = {c == rle.EMPTY for _, c in rows}
    if len(codes) > 1:
      raise SourceError(
          f'{csv_path}: ImageId {image_id} has both -1 (no pneumothorax) '
          f'and a region (lines {rows[0][0]} and {line}); fix the file')
  return per_image


def scan(src_dir, options, split_method, progress=base.NO_PROGRESS):
  """One `tables.Row` per image of train-rle.csv (module docstring), and
  the files of dicom-images-train/: (rows, found, ignored, tables read,
  LABELS), as `tables.plan` takes.

  An image the CSV names that is not under dicom-images-train/ is skipped
  as a missing image; a DICOM no row names is unlabelled; a DICOM whose
  header cannot be read is skipped with the reason.

  Raises:
    SourceError: no train-rle.csv or dicom-images-train/, see `read_rows`,
      or an RLE that runs past its image (its header's Rows x Columns).
  """
  del options, split_method  # always drawn
  csv_path = os.path.join(src_dir, CSV_NAME)
  if not os.path.isdir(os.path.join(src_dir, IMAGES)):
    raise SourceError(f'src_dir {src_dir} has no {IMAGES}/, which the siim '
                      'layout needs; give the folder that holds it and '
                      f'{CSV_NAME}')
  per_image = read_rows(csv_path, progress)
  found, ignored = base.walk(src_dir, (IMAGES,), progress)
  ignored += [base.display_path(e) + ('/' if os.path.isdir(
      os.path.join(src_dir, e)) else '')
              for e in sorted(os.listdir(src_dir))
              if e not in (IMAGES, CSV_NAME) and not base.is_litter(e)]
  by_stem = collections.defaultdict(list)
  for path in sorted(found):
    name = os.path.basename(path)
    if name.lower().endswith(dicom.EXTENSIONS):
      by_stem[os.path.splitext(name)[0]].append(path)
  rows = []
  progress.stage('reading DICOM headers', len(per_image), 'images')
  for image_id, image_rows in per_image.items():
    lines = [line for line, _ in image_rows]
    where = f'{CSV_NAME} line {lines[0]}' + (
        f' (and {len(lines) - 1} more)' if len(lines) > 1 else '')
    codes = tuple(code for _, code in image_rows if code != rle.EMPTY)
    paths = by_stem.get(image_id, [])
    if not paths:
      rows.append(tables.Row(where, None, reason='missing image',
                             missing_name=f'{IMAGES}/.../{image_id}.dcm'))
      progress.advance()
      continue
    path = paths[0]
    entry = tables.Row(where, path, labels=(int(bool(codes)),),
                       patient_id=image_id, mask_rle=codes)
    if found[path][1] is None:
      _read_header(os.path.join(src_dir, path), entry, image_id, image_rows,
                   csv_path)
    folders = path.split('/')[1:-1]
    entry.private_parts = tuple((part, part) for part in folders) + (
        (image_id, image_id),)
    rows.append(entry)
    for other in paths[1:]:
      rows.append(tables.Row(where, other,
                             reason=f'same file name as {path}'))
    progress.advance()
  progress.end()
  num_rows = sum(len(r) for r in per_image.values())
  several = sum(len(r) > 1 for r in per_image.values())
  ignored.append(
      f'{CSV_NAME}: {num_rows} row(s) for {len(per_image)} image(s); '
      f'{several} image(s) with several rows (one region each) are one '
      'example each, the union of their regions as the mask')
  return rows, found, ignored, [CSV_NAME], LABELS


def _read_header(full_path, entry, image_id, image_rows, csv_path):
  """Fills `entry` from the DICOM's header: patient id, view, sex, age; or
  its reason when the header cannot be read.

  Raises:
    SourceError: an RLE that runs past the image.
  """
  try:
    header = dicom.read_header(full_path)
    height, width = int(header.Rows), int(header.Columns)
  except dicom.DicomError:
    raise  # pydicom missing: one line for the whole conversion
  except Exception as e:  # pylint: disable=broad-except  (one file of many)
    entry.reason = (f'cannot read its DICOM header: {type(e).__name__}: '
                    f'{e}')
    return
  for line, code in image_rows:
    try:
      rle.check(rle.parse(code), height, width)
    except rle.RleError as e:
      raise SourceError(f'{csv_path} line {line}: ImageId {image_id}: {e}; '
                        f'{_FIX}') from None
  entry.patient_id = str(header.get('PatientID', '') or '').strip() or image_id
  entry.view = str(header.get('ViewPosition', '') or '').strip()
  entry.sex, entry.age_years = tables.header_sex_and_age(header)
