"""Google's expert labels for NIH ChestX-ray14 (Majkowska et al., Radiology
2019), over an NIH image tree.

The published per-split files, four_findings_expert_labels_validation_labels.csv
(val) and four_findings_expert_labels_test_labels.csv (test), or one file
google2019_nih-chest-xray-labels.csv whose `Set Id` column says val or test
(torchxrayvision's copy): one row per adjudicated image, `Image Index`,
`Patient ID`, NIH's other columns, and the four `LABELS` coded YES or NO
(stored as 1 and 0, the labels under their own names). Any other value is
bad input: one line naming the file, line and column, nothing written
(the set is an adjudicated test set; a guessed label would be worse than
none). The images sit under images*/ at any depth, found by file name, as
`nih` finds them; NIH images without an expert row are unlabelled ('no
label row'); NIH's own label file and lists are not read (listed in
`Plan.ignored`).

Splits: official (the default) is the files' own: validation is val, test
is test, and there is no train (this is a set to test an NIH model on,
`tools/evaluate`, labels matched by name); --resplit draws val and test by
patient from all the rows, the rest train.

View, sex, age: `View Position`, `Patient Gender`, `Patient Age` where the
file has them ('' / -1 otherwise). Privacy: the patient id is stored hashed,
also where it prefixes the file name.
"""

import collections
import dataclasses
import os

from xray_tfdata.sources import base
from xray_tfdata.sources import tables

SourceError = base.SourceError
LABELS = ('Fracture', 'Pneumothorax', 'Airspace opacity', 'Nodule or mass')
# file -> the split its rows are in
SPLIT_FILES = {
    'four_findings_expert_labels_validation_labels.csv': 'val',
    'four_findings_expert_labels_test_labels.csv': 'test',
}
SET_ID_FILE = 'google2019_nih-chest-xray-labels.csv'
SET_ID = 'Set Id'
SET_IDS = {'val': 'val', 'validation': 'val', 'test': 'test'}
CODES = {'YES': 1, 'NO': 0}
COLUMNS = ('Image Index', 'Patient ID')


@dataclasses.dataclass
class Options(tables.Options):
  SOURCE = 'nih_google'
  OFFICIAL_VAL = True
  REQUIRED_SPLITS = ('test',)


def label_files(src_dir):
  """The expert label files src_dir holds (per-split files first; .gz
  copies too), in reading order."""
  names = set(os.listdir(src_dir))
  return [n + gz for n in (*SPLIT_FILES, SET_ID_FILE) for gz in ('', '.gz')
          if n + gz in names]


def detect(src_dir):
  """Whether src_dir holds one of Google's expert label files (they
  outrank the NIH label file beside them)."""
  return bool(label_files(src_dir))


def plan(src_dir, options, seed=0, progress=base.NO_PROGRESS):
  """A `base.Plan` of Google's labels over an NIH tree (`tables.plan`)."""
  return tables.plan(src_dir, options, scan, seed, progress, {
      'test': 'the expert test file names no usable image'})


def parse_codes(row, where):
  """The codes of a row's four labels.

  Raises:
    SourceError: a value other than YES or NO.
  """
  codes = []
  for label in LABELS:
    value = (row.get(label) or '').strip()
    if value.upper() not in CODES:
      raise SourceError(
          f'{where}: {label!r} is {value!r}, not YES or NO; fix that row of '
          "the expert label file (or give the file as published)")
    codes.append(CODES[value.upper()])
  return tuple(codes)


def scan(src_dir, options, split_method, progress=base.NO_PROGRESS):
  """Expert label rows and NIH image files (module docstring): (rows,
  found, ignored, tables read, LABELS), as `tables.plan` takes.

  Raises:
    SourceError: no expert label file, a missing column, a Set Id other
      than val or test, or a label other than YES or NO.
  """
  del options
  names = label_files(src_dir)
  if not names:
    raise SourceError(
        f'src_dir {src_dir} has none of {", ".join(SPLIT_FILES)} or '
        f'{SET_ID_FILE}, which the nih_google layout needs; put Google\'s '
        'expert label files beside the NIH images')
  roots = sorted(e for e in os.listdir(src_dir) if e.startswith('images') and
                 os.path.isdir(os.path.join(src_dir, e)))
  found, ignored = base.walk(src_dir, roots, progress)
  by_name = collections.defaultdict(list)
  for path in sorted(found):
    by_name[os.path.basename(path)].append(path)
  rows = []
  for name in names:
    set_id_file = name.startswith(SET_ID_FILE)
    columns = COLUMNS + LABELS + ((SET_ID,) if set_id_file else ())
    table = tables.read_table(os.path.join(src_dir, name), columns,
                              f"Google's NIH expert labels {name}")
    for line, row in tables.reported(table, name, progress):
      where = f'{name} line {line}'
      short = tables.truncated(row)
      image = (row['Image Index'] or '').strip()
      patient = (row['Patient ID'] or '').strip()
      if patient.isdigit():
        patient = str(int(patient))
      split = SPLIT_FILES.get(name.removesuffix('.gz'))
      if set_id_file and not short:
        set_id = (row[SET_ID] or '').strip()
        split = SET_IDS.get(set_id.lower())
        if split is None:
          raise SourceError(
              f'{where}: {SET_ID} is {set_id!r}, not val or test; fix that '
              'row of the expert label file')
      codes = () if short else parse_codes(row, where)
      paths = by_name.get(image, [])
      path = paths[0] if paths else None
      reason = short
      if not image:
        reason = 'blank Image Index'
      elif not patient:
        reason = 'blank Patient ID'
      rows.append(tables.Row(
          where, path, reason, patient_id=patient, labels=codes,
          view=(row.get('View Position') or '').strip(),
          sex=tables.parse_sex(row.get('Patient Gender')),
          age_years=tables.parse_age(row.get('Patient Age')),
          source_split=split if split_method == 'official' else None,
          private_parts=((image.split('_')[0], patient),),
          missing_name=image))
      for other in paths[1:]:
        rows.append(tables.Row(where, other,
                               reason=f'same file name as {path}'))
  ignored.extend(base.display_path(e) for e in sorted(os.listdir(src_dir))
                 if e not in names and not base.is_litter(e) and
                 os.path.isfile(os.path.join(src_dir, e)))
  return rows, found, ignored, names, LABELS
