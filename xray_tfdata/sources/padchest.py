"""PadChest (Bustos et al. 2020).

PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv (or .csv.gz; its first
column an unnamed index): one row per image, the image at
<ImageDir>/<ImageID> (a 16-bit grayscale PNG). `Labels` is a Python list
literal (`['pleural effusion', 'cardiomegaly']`), parsed with
`ast.literal_eval`, never by substring; its terms are stripped and kept in
the source's spelling. The label names are every term found in the file,
sorted, except `normal`: a term listed is positive, a term not listed
negative (PadChest has no uncertain); `['normal']` is every finding
negative. A row whose list is empty (`[]`, `['']`), whose cell is blank,
or holds the string 'nan' (the real file's 103 such rows) is skipped with
that reason, as is a row listing `normal` with a finding (it contradicts
itself). A cell that is not a list literal of strings is bad input: one
line naming the row, nothing written.

No official split: val and test are drawn by patient (--resplit is the
default; --split=official is refused).

View: `Projection` as it is (PA, L, AP_horizontal, AP, COSTAL, ...).
Label method: `MethodLabel` per image (Physician or RNN_model), stored as
`schema.LABEL_METHOD`, so a test split can keep the physician-labelled
images. Sex: PatientSex_DICOM 'M' or 'F', else ''. Age at the study: the
StudyDate_DICOM's year minus PatientBirth (a year; so within a year),
-1 where either is unknown; children are kept. Privacy: the patient and
study ids are stored hashed, also where the study id prefixes the ImageID.

Pixels: each file's BitsStored_DICOM and WindowCenter/WidthDICOM go with
it to the decoder (`imaging.sixteen_bit_range`: the window where given,
else the bits stored, else the image's own depth), never a divide by
65535.
"""

import ast
import dataclasses
import os

from xray_tfdata.sources import base
from xray_tfdata.sources import tables

SourceError = base.SourceError
CSV_NAME = 'PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv'
NORMAL = 'normal'
COLUMNS = ('ImageID', 'ImageDir', 'StudyDate_DICOM', 'StudyID', 'PatientID',
           'PatientBirth', 'PatientSex_DICOM', 'Projection', 'MethodLabel',
           'Labels', 'BitsStored_DICOM', 'WindowCenter_DICOM',
           'WindowWidth_DICOM')


@dataclasses.dataclass
class Options(tables.Options):
  """`tables.Options`; no official split, so the default is a re-split."""
  SOURCE = 'padchest'
  OFFICIAL = False

  @property
  def split_method(self):
    # Drawn unless --split=official is asked for (and refused by check()).
    return 'official' if self.split == 'official' else 'resplit'


def label_file(src_dir):
  """The name of src_dir's PadChest label file (.csv before .csv.gz), or
  None."""
  names = set(os.listdir(src_dir))
  return next((n for n in (CSV_NAME, CSV_NAME + '.gz') if n in names), None)


def detect(src_dir):
  """Whether src_dir holds PadChest's label file."""
  return label_file(src_dir) is not None


def plan(src_dir, options, seed=0, progress=base.NO_PROGRESS):
  """A `base.Plan` of a PadChest tree (`tables.plan`)."""
  return tables.plan(src_dir, options, scan, seed, progress)


def parse_labels(text, where):
  """The terms of a `Labels` cell.

  Returns:
    (terms, None): the stripped terms, in the cell's order, without
    repeats; or (None, reason) for a blank cell, 'nan', or a list with no
    term.

  Raises:
    SourceError: the cell is not a Python list literal of strings.
  """
  cell = (text or '').strip()
  if not cell:
    return None, 'blank Labels cell: no label'
  if cell.lower() == 'nan':
    return None, "Labels cell 'nan': no label"
  try:
    value = ast.literal_eval(cell)
  except (ValueError, SyntaxError, MemoryError, RecursionError):
    value = None
  if not isinstance(value, list) or not all(isinstance(v, str)
                                            for v in value):
    raise SourceError(
        f'{where}: Labels {cell[:80]!r} is not a list of terms like '
        "['pleural effusion', 'cardiomegaly']; fix that row of the label "
        'file (or give the file as published)')
  terms = list(dict.fromkeys(t.strip() for t in value if t.strip()))
  if not terms:
    return None, f'empty label list {cell!r}: no label'
  return terms, None


def _number(text):
  """A CSV cell as a float, None where blank or 'None' (or not a number)."""
  try:
    value = float((text or '').strip())
  except ValueError:
    return None
  return value if value == value else None  # NaN: not given


def _age(study_date, birth):
  """Age at the study in whole years from a YYYYMMDD date and a birth year
  ('1950.0'); -1 where either is unknown."""
  year = _number((study_date or '').strip()[:4])
  born = _number(birth)
  if year is None or born is None or not 0 <= year - born < 200:
    return -1
  return int(year - born)


def scan(src_dir, options, split_method, progress=base.NO_PROGRESS):
  """Label rows and image files of a PadChest tree (module docstring):
  (rows, found, ignored, tables read, label names), as `tables.plan`
  takes.

  Raises:
    SourceError: no label file, a missing column, or a Labels cell that is
      not a list (before anything is written).
  """
  del options, split_method  # drawn either way
  name = label_file(src_dir)
  if name is None:
    raise SourceError(f'src_dir {src_dir} has no {CSV_NAME}(.gz), which the '
                      'padchest layout needs; give the folder that holds it')
  table = tables.read_table(os.path.join(src_dir, name), COLUMNS,
                            f'PadChest {name}')
  roots = sorted(e for e in os.listdir(src_dir) if not base.is_litter(e) and
                 os.path.isdir(os.path.join(src_dir, e)))
  found, ignored = base.walk(src_dir, roots, progress)
  parsed = []
  for line, row in tables.reported(table, name, progress):
    where = f'{name} line {line}'
    short = tables.truncated(row)
    terms, reason = (None, short) if short else parse_labels(row['Labels'],
                                                             where)
    parsed.append((where, row, terms, reason))
  label_names = tuple(sorted({t for _, _, terms, _ in parsed if terms
                              for t in terms} - {NORMAL}))
  rows = []
  for where, row, terms, reason in parsed:
    image = (row['ImageID'] or '').strip()
    folder = (row['ImageDir'] or '').strip()
    if folder.endswith('.0'):
      folder = folder[:-2]  # a number written as a float
    patient = (row['PatientID'] or '').strip()
    study = (row['StudyID'] or '').strip()
    path = tables.safe_relative_path(f'{folder}/{image}', where, src_dir)
    codes = ()
    if reason is None:
      if NORMAL in terms and len(terms) > 1:
        others = ', '.join(repr(t) for t in terms if t != NORMAL)
        reason = f"'{NORMAL}' together with a finding ({others}): the row " \
                 'contradicts itself'
      else:
        codes = tuple(int(n in terms) for n in label_names)
    if not image:
      reason = 'blank ImageID'
    elif not patient:
      reason = 'blank PatientID'
    sex = (row['PatientSex_DICOM'] or '').strip().upper()
    bits = _number(row['BitsStored_DICOM'])
    rows.append(tables.Row(
        where, path if image else None, reason, patient_id=patient,
        labels=codes, view=(row['Projection'] or '').strip(),
        sex=sex if sex in ('M', 'F') else '',
        age_years=_age(row['StudyDate_DICOM'], row['PatientBirth']),
        study_id=study,
        private_parts=((study, study),) if study else (),
        missing_name=path, label_method=(row['MethodLabel'] or '').strip(),
        stored_depth=(int(bits) if bits is not None else None,
                      _number(row['WindowCenter_DICOM']),
                      _number(row['WindowWidth_DICOM']))))
  top_files = sorted(e for e in os.listdir(src_dir)
                     if e != name and not base.is_litter(e) and
                     os.path.isfile(os.path.join(src_dir, e)))
  ignored.extend(base.display_path(e) for e in top_files)
  return rows, found, ignored, [name], label_names
