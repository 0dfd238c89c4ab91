"""Scanning and planning the multi-label chest X-ray sets.

Four layouts, each turned into a `sources.Plan` whose files carry the raw
code of every label (`schema.LABEL_CODES`: 1 positive, 0 negative, -1
uncertain, -2 not mentioned) in the order of `Plan.label_names`:

  nih       NIH ChestX-ray14: Data_Entry_2017*.csv (one row per image;
            'Finding Labels' '|'-separated in NIH's spelling, `NIH_LABELS`;
            'No Finding' alone: all 14 negative; a finding not listed is
            negative, NIH has no uncertain or blank), the images under
            images*/ at any depth (found by file name), and
            train_val_list.txt / test_list.txt (the official split).
  chexpert  CheXpert v1.0 and v1.0-small: train.csv and valid.csv with
            'Path', 'Sex', 'Age', 'Frontal/Lateral', 'AP/PA' and the 14
            `CHEXPERT_LABELS` (1.0, 0.0, -1.0, blank -> -2). src_dir is
            the folder holding train.csv; a Path's first segment (that
            folder's own name, 'CheXpert-v1.0-small/...') is dropped. The
            patient is the 'patientNNNNN' segment, the study
            'patientNNNNN/studyN'.
  mimic     MIMIC-CXR-JPG: mimic-cxr-2.0.0-chexpert.csv.gz (labels per
            study, the same 14 labels and codes), -metadata.csv.gz (one row
            per image: dicom_id, subject_id, study_id, ViewPosition),
            -split.csv.gz (train, validate, test), the images at
            files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg.
  csv       a user's labelled folder: one CSV (`labels_csv`) with a path
            column (relative to src_dir), a patient column and the label
            columns (1, 1.0, 0, 0.0, -1, -1.0 or blank -> -2).

View: NIH's 'View Position' and MIMIC's ViewPosition as they are. CheXpert:
a frontal image's 'AP/PA' value as the source spells it ('AP', 'PA', and the
few 'LL'/'RL' it has); a lateral image's 'AP/PA' value where it has one, else
'LATERAL' (CheXpert leaves AP/PA blank for laterals). Sex: 'F' or 'M'
(CheXpert's 'Female'/'Male'), else ''. Age: whole years, -1 unknown (NIH's
older files write '058Y'; MIMIC's CSVs have no sex or age).

Accounting: every label row ends up written, skipped with a reason (missing
image, unreadable, unknown label value, outside the official split lists, no
label row for its study), or a duplicate (a second row for the same image,
or an image byte-identical to another: `sources.find_duplicates`); every
file under the image folders that no row names is listed in
`Plan.unlabelled` with the reason 'no label row'. `Plan.num_scanned` counts
the label rows (MIMIC: the metadata rows, one per image; NIH: plus the
further files that share a row's file name, each a duplicate), so that
scanned = written + skipped + duplicates. An unknown label value skips its row and is
never fatal; labels are parsed exactly, never by substring. A row with fewer
cells than its header (a file cut short) is skipped with that reason: its
missing labels are never read as 'not mentioned'. NIH's 'No Finding' with a
finding contradicts itself and is skipped. MIMIC: a study's repeated label
row counts once, two that disagree are both unused (the study's images
skipped); an image's two split rows give it the evaluation split among them;
both are listed in `Plan.ignored`. Label files and lists may start with a
UTF-8 byte-order mark (.gz too).

Privacy: the patient and study ids of all four layouts identify persons: the
files are marked `hash_ids`, and the writer stores the ids as salted hashes
(`writer.hashed_patient_id`), also in image/filename where a path segment
holds them (`SourceFile.private_parts`): the NIH file name's patient
prefix, CheXpert's patient and study folders, MIMIC's subject and study
folders and dicom_id (its p{NN} bucket folder is dropped). The csv layout's
file names are the user's and are stored as they are.

Splits (`plan`):
  official  NIH: test_list.txt is test, val is drawn from train_val_list.txt
            by patient (`val_fraction`); CheXpert: valid.csv (the
            radiologists' labels) is test, val drawn from train.csv by
            patient; MIMIC: its split file (validate -> val). A patient an
            official split puts in two splits is moved, all images, to the
            evaluation split among them (test before val before train), and
            the move is counted in `Plan.split_info['source_overlap']`: the
            evaluation sets stay whole, and no patient crosses splits. The
            csv layout has no official split.
  resplit   patient-grouped val and test (`val_fraction`, `test_fraction`)
            by `draw_splits`.
After planning, `check_patient_overlap` counts the patients in more than one
split; it must be 0 (`Plan.split_info['patient_overlap']`). An official
split whose train or test set is empty (a header-only valid.csv, an empty
train_val_list.txt) is refused. A drawn split's images, requested and
actual, are `Plan.split_info['images']`; on a small set, where patients are
taken whole, one far from its fraction is flagged (`far_off_splits`) and the
converter's summary warns.

Pure Python and numpy; no TensorFlow (this runs before the writer imports it).
"""

import collections
import csv
import dataclasses
import gzip
import io
import math
import os

import numpy as np

from xray_tfdata import sources

SourceError = sources.SourceError

LAYOUTS = sources.MULTILABEL_LAYOUTS
SPLIT_METHODS = ('official', 'resplit')
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.1

NIH_LABELS = ('Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltration',
              'Mass', 'Nodule', 'Pneumonia', 'Pneumothorax', 'Consolidation',
              'Edema', 'Emphysema', 'Fibrosis', 'Pleural_Thickening',
              'Hernia')
NIH_NO_FINDING = 'No Finding'
NIH_CSV_PREFIX = sources.NIH_CSV_PREFIX
NIH_TRAIN_VAL_LIST = 'train_val_list.txt'
NIH_TEST_LIST = 'test_list.txt'
NIH_COLUMNS = ('Image Index', 'Finding Labels', 'Patient ID', 'Patient Age',
               'Patient Gender', 'View Position')

# CheXpert's column order, also used for MIMIC (whose file is alphabetical),
# so that the two sets' records list the labels alike.
CHEXPERT_LABELS = ('No Finding', 'Enlarged Cardiomediastinum', 'Cardiomegaly',
                   'Lung Opacity', 'Lung Lesion', 'Edema', 'Consolidation',
                   'Pneumonia', 'Atelectasis', 'Pneumothorax',
                   'Pleural Effusion', 'Pleural Other', 'Fracture',
                   'Support Devices')
CHEXPERT_TRAIN = sources.CHEXPERT_TRAIN
CHEXPERT_VALID = sources.CHEXPERT_VALID
CHEXPERT_COLUMNS = ('Path', 'Sex', 'Age', 'Frontal/Lateral', 'AP/PA')

MIMIC_LABELS_FILE = 'mimic-cxr-2.0.0-chexpert.csv.gz'
MIMIC_METADATA_FILE = 'mimic-cxr-2.0.0-metadata.csv.gz'
MIMIC_SPLIT_FILE = 'mimic-cxr-2.0.0-split.csv.gz'
MIMIC_IMAGES = 'files'
MIMIC_SPLITS = {'train': 'train', 'validate': 'val', 'test': 'test'}

DEFAULT_PATH_COLUMN = 'path'
DEFAULT_PATIENT_COLUMN = 'patient_id'

# Raw code of each accepted label value (after stripping blanks).
_CODES = {'1': 1, '1.0': 1, '0': 0, '0.0': 0, '-1': -1, '-1.0': -1, '': -2}
_SEX = {'F': 'F', 'M': 'M', 'FEMALE': 'F', 'MALE': 'M'}
# Where two splits of an official split file claim a patient, the first
# of these wins (module docstring).
_EVALUATION_FIRST = ('test', 'val', 'train')
_UNLABELLED = 'no label row'


@dataclasses.dataclass
class _Row:
  """One label row, parsed: the image it names and its fields, or why it
  cannot be used (`reason`)."""
  where: str  # 'file line N'
  path: str | None  # relative to src_dir, or None when unknown
  reason: str | None = None
  patient_id: str = ''
  labels: tuple = ()
  view: str = ''
  sex: str = ''
  age_years: int = -1
  study_id: str = ''
  source_split: str | None = None
  private_parts: tuple = ()
  missing_name: str = ''  # the image a row names, when it is not found


detect_layout = sources.detect_multilabel_layout


def is_ambiguous(src_dir):
  """Whether src_dir looks like two multi-label layouts at once."""
  found = 0
  for layout in ('nih', 'chexpert', 'mimic'):
    try:
      _layout_files(src_dir, layout)
      found += 1
    except SourceError:
      pass
  return found > 1


def _layout_files(src_dir, layout):
  """Raises SourceError unless src_dir holds the layout's label files."""
  names = set(os.listdir(src_dir)) if os.path.isdir(src_dir) else set()
  if layout == 'nih':
    ok = any(n.startswith(NIH_CSV_PREFIX) and n.endswith('.csv')
             for n in names)
  elif layout == 'chexpert':
    ok = {CHEXPERT_TRAIN, CHEXPERT_VALID} <= names
  else:
    ok = {MIMIC_LABELS_FILE, MIMIC_METADATA_FILE} <= names
  if not ok:
    raise SourceError(f'src_dir {src_dir} is not a {layout} tree')


def _open_text(path):
  # utf-8-sig: a byte-order mark (Excel writes one) would otherwise become
  # part of the first column's name, or of a list's first entry.
  if path.endswith('.gz'):
    return io.TextIOWrapper(gzip.open(path, 'rb'), encoding='utf-8-sig',
                            newline='')
  return open(path, newline='', encoding='utf-8-sig')


def read_table(path, columns, what):
  """The rows of a CSV (or .csv.gz) with a header, as (line, row dict).

  Args:
    path: the file.
    columns: the columns it must have.
    what: what the file is, for messages ('NIH Data_Entry_2017.csv').

  Raises:
    SourceError: missing, unreadable, or without one of `columns` (named,
      with the columns it has).
  """
  if not os.path.isfile(path):
    raise SourceError(f'{path} not found; the {what} is needed (give '
                      '--layout, or fix --src_dir)')
  try:
    with _open_text(path) as f:
      reader = csv.DictReader(f)
      header = [h.strip() for h in (reader.fieldnames or [])]
      reader.fieldnames = header
      missing = [c for c in columns if c not in header]
      if missing:
        raise SourceError(
            f'{path} has no column {", ".join(repr(c) for c in missing)} '
            f'(the {what} needs it); its columns are {header}: give the '
            'right file or column name')
      rows = [(line, row) for line, row in enumerate(reader, start=2)]
  except (OSError, UnicodeDecodeError, csv.Error, EOFError,
          gzip.BadGzipFile) as e:
    raise SourceError(f'cannot read {path}: {e}; give a readable CSV') from e
  return rows


def _reported(table, name, progress):
  """The rows of a `read_table`, reported to `progress` as they are
  parsed."""
  progress.stage(f'reading {name}', len(table), 'rows')
  for done, item in enumerate(table, start=1):
    yield item
    progress.update(done)
  progress.end()


def truncated(row):
  """Why a `read_table` row cannot be used because it has fewer cells
  than the header (a file cut short), or None.

  csv.DictReader gives a missing cell None; read as blank, it would make the
  row's remaining labels 'not mentioned', a guess the file never made.
  """
  cells = [v for k, v in row.items() if k is not None]
  missing = sum(v is None for v in cells)
  if not missing:
    return None
  return (f'fewer cells than the header ({len(cells) - missing} of '
          f'{len(cells)}; a file cut short?): not used')


def parse_code(value):
  """The raw code of one label cell, or None for an unknown value."""
  return _CODES.get((value or '').strip())


def parse_nih_findings(text):
  """NIH's 'Finding Labels' as a code per `NIH_LABELS`.

  Returns:
    (codes tuple, None), or (None, reason) for an unknown finding name (a
    name is matched exactly: 'Thickening' is not 'Pleural_Thickening'),
    a blank cell, or 'No Finding' with findings.
  """
  names = [n.strip() for n in (text or '').split('|')]
  if names == [NIH_NO_FINDING]:
    return (0,) * len(NIH_LABELS), None
  if NIH_NO_FINDING in names and len(names) > 1:
    others = ', '.join(repr(n) for n in names if n != NIH_NO_FINDING)
    return None, (f'{NIH_NO_FINDING!r} together with a finding ({others}): '
                  'the row contradicts itself')
  unknown = [n for n in names if n not in NIH_LABELS]
  if unknown:
    return None, ('unknown label value: finding '
                  f'{unknown[0]!r} is not one of NIH\'s 14 (or '
                  f'{NIH_NO_FINDING!r})')
  present = set(names)
  return tuple(int(n in present) for n in NIH_LABELS), None


def parse_age(value):
  """Whole years from '57', '57.0' or NIH's older '058Y'; -1 otherwise."""
  text = (value or '').strip().upper()
  if text.endswith('Y'):
    text = text[:-1]
  try:
    age = float(text)
  except ValueError:
    return -1
  return int(age) if 0 <= age < 200 else -1


def parse_sex(value):
  return _SEX.get((value or '').strip().upper(), '')


def _codes(row, label_columns):
  """(codes, None) of the label columns of a row, or (None, reason)."""
  codes = []
  for column in label_columns:
    code = parse_code(row.get(column))
    if code is None:
      return None, (f'unknown label value {row.get(column)!r} in column '
                    f'{column!r} (allowed: 1, 0, -1 or blank)')
    codes.append(code)
  return tuple(codes), None


def safe_relative_path(path, where, src_dir):
  """A CSV's path as a '/'-separated path under src_dir.

  Raises:
    SourceError: an absolute path or one with '..' (it would read files
      outside src_dir).
  """
  text = (path or '').strip().replace('\\', '/')
  parts = [p for p in text.split('/') if p not in ('', '.')]
  if text.startswith('/') or os.path.isabs(text) or '..' in parts:
    raise SourceError(
        f'{where}: path {text!r} points outside src_dir {src_dir}; give '
        'paths relative to src_dir, without .. or a leading /')
  return '/'.join(parts)


def _walk(src_dir, roots, progress=sources.NO_PROGRESS):
  """{relative path: (size, reason or None)} of every non-litter file under
  the `roots` (relative folders), and the litter and linked folders
  (`ignored`)."""
  found, ignored = {}, []
  progress.stage('scanning ' + (f'{roots[0]}/' if len(roots) == 1 else
                                 f'{len(roots)} image folders'))
  for root in roots:
    if not os.path.isdir(os.path.join(src_dir, root)):
      continue
    unreadable = []
    for path, size in sources._walk_class_folder(  # pylint: disable=protected-access
        src_dir, root, ignored, unreadable, progress):
      found[path] = (size, None)
    for item in unreadable:
      found[item['path']] = (0, item['reason'])
  progress.end()
  return found, ignored


def scan_nih(src_dir, split_method, progress=sources.NO_PROGRESS):
  """Label rows and image files of an NIH tree (module docstring).

  Returns:
    (rows, found, ignored, csv_names): `_Row`s, `_walk`'s files and
    ignored entries, and the label CSVs read.
  """
  csv_names = sorted(n for n in os.listdir(src_dir)
                     if n.startswith(NIH_CSV_PREFIX) and n.endswith('.csv'))
  if not csv_names:
    raise SourceError(f'src_dir {src_dir} has no {NIH_CSV_PREFIX}*.csv, '
                      'which the nih layout needs; give the folder that '
                      'holds it')
  roots = sorted(e for e in os.listdir(src_dir) if e.startswith('images') and
                 os.path.isdir(os.path.join(src_dir, e)))
  found, ignored = _walk(src_dir, roots, progress)
  by_name = collections.defaultdict(list)
  for path in sorted(found):
    by_name[os.path.basename(path)].append(path)
  lists = {}
  if split_method == 'official':
    for name, split in ((NIH_TEST_LIST, 'test'),
                        (NIH_TRAIN_VAL_LIST, 'train')):
      list_path = os.path.join(src_dir, name)
      if not os.path.isfile(list_path):
        raise SourceError(
            f'src_dir {src_dir} has no {name}, which --split=official '
            'needs; add NIH\'s split lists, or pass --resplit')
      with open(list_path, encoding='utf-8-sig') as f:
        for line in f:
          if line.strip():
            lists.setdefault(line.strip(), set()).add(split)
  rows = []
  for csv_name in csv_names:
    for line, row in _reported(
        read_table(os.path.join(src_dir, csv_name), NIH_COLUMNS,
                   f'NIH {csv_name}'), csv_name, progress):
      where = f'{csv_name} line {line}'
      name = (row['Image Index'] or '').strip()
      paths = by_name.get(name, [])
      path = paths[0] if paths else f'images/{name}'
      entry = _Row(where, path if paths else None)
      patient = (row['Patient ID'] or '').strip()
      codes, reason = parse_nih_findings(row['Finding Labels'])
      if not name:
        reason = 'blank Image Index'
      elif not patient:
        reason = 'blank Patient ID'
      reason = truncated(row) or reason
      if patient.isdigit():
        patient = str(int(patient))
      stem = os.path.splitext(name)[0]
      prefix = stem.split('_')[0]
      entry.reason = reason
      entry.patient_id = patient
      entry.labels = codes or ()
      entry.view = (row['View Position'] or '').strip()
      entry.sex = parse_sex(row['Patient Gender'])
      entry.age_years = parse_age(row['Patient Age'])
      entry.private_parts = ((prefix, patient),)
      if split_method == 'official' and not reason:
        splits = lists.get(name, set())
        if not splits:
          entry.reason = (f'in neither {NIH_TRAIN_VAL_LIST} nor '
                          f'{NIH_TEST_LIST}')
        else:
          entry.source_split = next(s for s in _EVALUATION_FIRST
                                    if s in splits)
      entry.missing_name = name
      rows.append(entry)
      # Other files of the same name (an archive unpacked twice) are
      # duplicates of the first.
      for other in paths[1:]:
        rows.append(_Row(where, other, reason=f'same file name as {path}'))
  return rows, found, ignored, csv_names


def _chexpert_path(path, where, src_dir):
  """A CheXpert Path relative to src_dir: its first segment (the name of
  the folder holding train.csv) dropped, unless it is already train/ or
  valid/."""
  relative = safe_relative_path(path, where, src_dir)
  parts = relative.split('/')
  if parts[0] not in ('train', 'valid') and len(parts) > 1:
    parts = parts[1:]
  return '/'.join(parts)


def scan_chexpert(src_dir, split_method, progress=sources.NO_PROGRESS):
  """Label rows and image files of a CheXpert tree (module docstring)."""
  del split_method  # both CSVs are read either way
  found, ignored = _walk(src_dir, ('train', 'valid'), progress)
  rows = []
  for csv_name, split in ((CHEXPERT_TRAIN, 'train'), (CHEXPERT_VALID, 'test')):
    for line, row in _reported(
        read_table(os.path.join(src_dir, csv_name),
                   CHEXPERT_COLUMNS + CHEXPERT_LABELS, f'CheXpert {csv_name}'),
        csv_name, progress):
      where = f'{csv_name} line {line}'
      path = _chexpert_path(row['Path'], where, src_dir)
      entry = _Row(where, path, source_split=split)
      segments = path.split('/')
      patient = next((s for s in segments if s.startswith('patient')), '')
      study = next((s for s in segments if s.startswith('study')), '')
      codes, reason = _codes(row, CHEXPERT_LABELS)
      if not patient:
        reason = f'no patientNNNNN folder in its Path {path!r}'
      entry.reason = truncated(row) or reason
      entry.patient_id = patient
      entry.study_id = f'{patient}/{study}' if study else ''
      entry.labels = codes or ()
      frontal = (row['Frontal/Lateral'] or '').strip().lower() == 'frontal'
      ap_pa = (row['AP/PA'] or '').strip()
      entry.view = ap_pa if frontal or ap_pa else 'LATERAL'
      entry.sex = parse_sex(row['Sex'])
      entry.age_years = parse_age(row['Age'])
      entry.private_parts = ((patient, patient),) + (
          ((study, entry.study_id),) if study else ())
      rows.append(entry)
  return rows, found, ignored, [CHEXPERT_TRAIN, CHEXPERT_VALID]


def scan_mimic(src_dir, split_method, progress=sources.NO_PROGRESS):
  """Image rows (the metadata file's) and files of a MIMIC-CXR-JPG tree.

  A metadata row whose study has no label row is skipped with that reason;
  label rows without an image are listed in `ignored`. A study with two
  label rows: rows with the same codes count once; rows that disagree are
  both unused and the study's images skipped with that reason (never a
  guess which is right). An image with two split rows: rows that name two
  splits give it the evaluation split among them (test before validate
  before train, as NIH's image in both lists). Both are listed in `ignored`.
  A row with fewer cells than its header skips the images it concerns.
  """
  label_rows = collections.defaultdict(list)
  for line, row in _reported(read_table(
      os.path.join(src_dir, MIMIC_LABELS_FILE),
      ('subject_id', 'study_id') + CHEXPERT_LABELS, 'MIMIC-CXR label file'),
                             MIMIC_LABELS_FILE, progress):
    key = ((row['subject_id'] or '').strip(), (row['study_id'] or '').strip())
    short = truncated(row)
    label_rows[key].append(
        (line, (None, short) if short else _codes(row, CHEXPERT_LABELS)))
  labels, conflicts = {}, []
  for key, found_rows in label_rows.items():
    lines = ' and '.join(f'line {line}' for line, _ in found_rows)
    if len({result for _, result in found_rows}) > 1:
      labels[key] = (lines, (None, 'label rows that disagree: neither is '
                             'used'))
    else:
      labels[key] = (f'line {found_rows[0][0]}', found_rows[0][1])
    if len(found_rows) > 1:
      conflicts.append(f'{key[0]}/{key[1]}')
  split_rows = collections.defaultdict(list)
  if split_method == 'official':
    for line, row in _reported(read_table(
        os.path.join(src_dir, MIMIC_SPLIT_FILE),
        ('dicom_id', 'study_id', 'subject_id', 'split'),
        'MIMIC-CXR split file (--split=official; or pass --resplit)'),
                               MIMIC_SPLIT_FILE, progress):
      short = truncated(row)
      split_rows[(row['dicom_id'] or '').strip()].append(
          (line, None if short else (row['split'] or '').strip(), short))
  found, ignored = _walk(src_dir, (MIMIC_IMAGES,), progress)
  rows, used = [], set()
  for line, row in _reported(read_table(
      os.path.join(src_dir, MIMIC_METADATA_FILE),
      ('dicom_id', 'subject_id', 'study_id', 'ViewPosition'),
      'MIMIC-CXR metadata file'), MIMIC_METADATA_FILE, progress):
    where = f'{MIMIC_METADATA_FILE} line {line}'
    dicom_id = (row['dicom_id'] or '').strip()
    subject = (row['subject_id'] or '').strip()
    study = (row['study_id'] or '').strip()
    path = (f'{MIMIC_IMAGES}/p{subject[:2]}/p{subject}/s{study}/'
            f'{dicom_id}.jpg')
    entry = _Row(where, path, patient_id=subject, study_id=study,
                 view=(row['ViewPosition'] or '').strip(),
                 private_parts=((f'p{subject[:2]}', None),
                                (f'p{subject}', subject),
                                (f's{study}', study), (dicom_id, dicom_id)))
    label = labels.get((subject, study))
    short = truncated(row)
    if short:
      entry.reason = f'{where}: {short}'
    elif not dicom_id or not subject or not study:
      entry.reason = 'blank dicom_id, subject_id or study_id'
    elif label is None:
      entry.reason = (f'no label row for its study (subject {subject}, study '
                      f'{study}) in {MIMIC_LABELS_FILE}')
    else:
      used.add((subject, study))
      codes, reason = label[1]
      entry.labels, entry.reason = codes or (), reason
      if reason:
        entry.reason = f'{MIMIC_LABELS_FILE} {label[0]}: {reason}'
    if split_method == 'official' and not entry.reason:
      entry.source_split, entry.reason = _mimic_split(
          split_rows.get(dicom_id, []))
    rows.append(entry)
  sources._report_ids(  # pylint: disable=protected-access
      ignored, sorted(f'{s}/{t}' for s, t in set(labels) - used),
      f'{MIMIC_LABELS_FILE}: {{}} label row(s) whose study has no image in '
      f'{MIMIC_METADATA_FILE}')
  sources._report_ids(  # pylint: disable=protected-access
      ignored, sorted(conflicts),
      f'{MIMIC_LABELS_FILE}: {{}} study(ies) with more than one label row '
      '(rows with the same codes count once; rows that disagree are both '
      'unused, their images skipped)')
  repeated = sorted(d for d, r in split_rows.items() if len(r) > 1)
  two_splits = sum(len({split for _, split, _ in split_rows[d]}) > 1
                   for d in repeated)
  sources._report_ids(  # pylint: disable=protected-access
      ignored, repeated,
      f'{MIMIC_SPLIT_FILE}: {{}} image(s) with more than one row ('
      f'{two_splits} of them in two splits: each gets the evaluation split '
      'among them, test before validate before train)')
  return rows, found, ignored, [MIMIC_METADATA_FILE]


def _mimic_split(split_rows):
  """(split, None) of an image from its rows of MIMIC's split file, or
  (None, reason) (`scan_mimic`)."""
  if not split_rows:
    return None, f'no row in {MIMIC_SPLIT_FILE}'
  for line, split, short in split_rows:
    if short:
      return None, f'{MIMIC_SPLIT_FILE} line {line}: {short}'
    if split not in MIMIC_SPLITS:
      return None, (f'split {split!r} in {MIMIC_SPLIT_FILE} is not one of '
                    f'{", ".join(MIMIC_SPLITS)}')
  named = {MIMIC_SPLITS[split] for _, split, _ in split_rows}
  return next(s for s in _EVALUATION_FIRST if s in named), None


def parse_label_columns(text):
  """'A,B,C' -> ('A', 'B', 'C').

  Raises:
    SourceError: none given, a blank name or one given twice.
  """
  names = tuple(n.strip() for n in (text or '').split(','))
  if not text or not all(names):
    raise SourceError(f'label_columns {text!r} names no label; give '
                      '--label_columns=A,B,C (the CSV\'s label columns)')
  if len(set(names)) != len(names):
    raise SourceError(f'label_columns {text!r} names a column twice; name '
                      'each once')
  return names


def scan_csv(src_dir, labels_csv, path_column, patient_column,
             label_columns, progress=sources.NO_PROGRESS):
  """Label rows (of `labels_csv`) and image files (all of src_dir) of a
  user's labelled folder."""
  if not labels_csv:
    raise SourceError('the csv layout needs --labels_csv (a CSV with a path, '
                      'a patient and label columns)')
  label_columns = parse_label_columns(label_columns)
  table = read_table(labels_csv, (path_column, patient_column) + label_columns,
                     f'labels CSV (--path_column={path_column}, '
                     f'--patient_column={patient_column}, --label_columns)')
  found, ignored = _walk(src_dir, sorted(
      e for e in os.listdir(src_dir) if not sources.is_litter(e) and
      os.path.isdir(os.path.join(src_dir, e))), progress)
  # Files at the top level: images count, the label CSV (and other
  # non-images) are listed as ignored.
  for e in sorted(os.listdir(src_dir)):
    full = os.path.join(src_dir, e)
    if os.path.isdir(full) or sources.is_litter(e):
      continue
    if e.lower().endswith(sources.IMAGE_EXTENSIONS):
      reason, size = sources._check_file(full, e)  # pylint: disable=protected-access
      found[e] = (size, reason)
    else:
      ignored.append(sources.display_path(e))
  name = os.path.basename(labels_csv)
  rows = []
  for line, row in _reported(table, name, progress):
    where = f'{name} line {line}'
    path = safe_relative_path(row[path_column], where, src_dir)
    patient = (row[patient_column] or '').strip()
    codes, reason = _codes(row, label_columns)
    if not path:
      reason = f'blank {path_column}'
    elif not patient:
      reason = f'blank {patient_column}'
    reason = truncated(row) or reason
    rows.append(_Row(where, path or None, reason, patient_id=patient,
                     labels=codes or ()))
  return rows, found, ignored, [name], label_columns


def _files_from_rows(src_dir, rows, found):
  """Turns rows into `SourceFile`s, skipped rows and duplicate rows.

  Returns:
    (files, skipped, duplicates, unlabelled).
  """
  files, skipped, duplicates = [], [], []
  taken = {}  # path -> (where, labels)
  for row in rows:
    if row.path is None:
      skipped.append({'path': row.missing_name or row.where,
                      'row': row.where,
                      'reason': row.reason or 'missing image'})
      continue
    path = sources.display_path(row.path)
    if row.reason and row.reason.startswith('same file name as '):
      duplicates.append({'kept': row.reason[len('same file name as '):],
                         'dropped': path, 'row': row.where,
                         'same': 'file name'})
      continue
    if row.path in taken and not row.reason:
      first_where, first_labels = taken[row.path]
      duplicates.append({'kept': first_where, 'dropped': row.where,
                         'path': path, 'same': 'image path',
                         'labels_differ': first_labels != row.labels})
      continue
    if row.reason:
      skipped.append({'path': path, 'row': row.where, 'reason': row.reason})
      continue
    size, reason = found.get(row.path, (None, None))
    if size is None:
      reason = 'missing image'
    if reason:
      skipped.append({'path': path, 'row': row.where, 'reason': reason})
      continue
    taken[row.path] = (row.where, row.labels)
    files.append(sources.SourceFile(
        row.path, row.source_split, '', -1, row.patient_id, size,
        labels=tuple(row.labels), view=row.view, sex=row.sex,
        age_years=row.age_years, study_id=row.study_id, hash_ids=True,
        private_parts=row.private_parts))
  named = {row.path for row in rows if row.path is not None}
  unlabelled = [{'path': sources.display_path(p),
                 'reason': reason or _UNLABELLED}
                for p, (_, reason) in sorted(found.items()) if p not in named]
  return files, skipped, duplicates, unlabelled


def check_split_arguments(layout, split_method, val_fraction, test_fraction):
  """The fractions to use, checked.

  Returns:
    (val_fraction, test_fraction), either None where it does not apply.
  Raises:
    SourceError: an unknown method, the csv layout without --resplit, a
      test fraction with an official split (a val fraction with MIMIC's),
      a fraction outside (0, 1), or
      fractions leaving nothing for training.
  """
  if split_method not in SPLIT_METHODS:
    raise SourceError(f'split must be one of {", ".join(SPLIT_METHODS)}, got '
                      f'{split_method!r}')
  if split_method == 'official':
    if layout == 'csv':
      raise SourceError('the csv layout has no official split; pass --resplit '
                        '(with --val_fraction and --test_fraction)')
    if test_fraction is not None:
      raise SourceError(f'the official {layout} split keeps its test set: '
                        'drop --test_fraction, or pass --resplit')
    if layout == 'mimic' and val_fraction is not None:
      raise SourceError('the official mimic split has its own val (its split '
                        'file\'s validate): drop --val_fraction, or pass '
                        '--resplit')
  for name, value in (('val_fraction', val_fraction),
                      ('test_fraction', test_fraction)):
    if value is not None and not 0 < value < 1:
      raise SourceError(f'{name} must be between 0 and 1 (exclusive), got '
                        f'{value}')
  if val_fraction is None and not (layout == 'mimic' and
                                   split_method == 'official'):
    val_fraction = DEFAULT_VAL_FRACTION
  if split_method == 'resplit' and test_fraction is None:
    test_fraction = DEFAULT_TEST_FRACTION
  if (val_fraction or 0) + (test_fraction or 0) >= 1:
    raise SourceError(f'val_fraction {val_fraction} + test_fraction '
                      f'{test_fraction} leave nothing for training; ask for '
                      'less')
  return val_fraction, test_fraction


def draw_splits(files, num_labels, fractions, seed=0,
                progress=sources.NO_PROGRESS):
  """Draws patient-grouped splits with per-label positives spread evenly.

  Greedy iterative stratification: every split wants its fraction of the
  images and of each label's positives (code 1). Patients are taken whole,
  in a seeded order (`sources.stable_order`), those with the rarest
  positive label first; each goes to the split that lacks the largest share
  of its target of that label's positives (ties: the split lacking the
  largest share of its images, then train, val, test). Patients without a
  positive go to the split lacking the largest share of its images. A
  patient is never split, so the counts are as even as the patients'
  sizes allow.

  Args:
    files: `SourceFile`s with labels.
    num_labels: the number of labels.
    fractions: {split: fraction} of the drawn splits ('val', 'test'); the
      rest is train.
    seed: the draw depends only on the seed, the patient ids and labels.
    progress: a `sources.Progress` for the patients placed.

  Returns:
    {split: files sorted by path} for train and the drawn splits.
  """
  groups = collections.defaultdict(list)
  for f in files:
    groups[f.patient_id].append(f)
  names = ['train'] + [s for s in ('val', 'test') if s in fractions]
  share = np.array([1 - sum(fractions.values())] +
                   [fractions[s] for s in names[1:]])
  positives = {p: np.sum([np.asarray(f.labels) == 1 for f in fs], axis=0)
               .reshape(num_labels) for p, fs in groups.items()}
  # Started from zeros: with no files the sum of an empty list is a scalar.
  total_pos = sum(positives.values(), np.zeros(num_labels))
  total = len(files)
  rarity = np.where(total_pos > 0, total_pos, np.inf)

  def rarest(p):
    has = positives[p] > 0
    return int(np.argmin(np.where(has, rarity, np.inf))) if has.any() else -1

  order = sources.stable_order(groups, seed, 'multilabel')
  order.sort(key=lambda p: (rarity[rarest(p)] if rarest(p) >= 0 else np.inf))
  taken_pos = np.zeros((len(names), num_labels))
  taken = np.zeros(len(names))
  chosen = {s: [] for s in names}
  progress.stage('drawing splits by patient', len(order), 'patients')
  for done, p in enumerate(order, start=1):
    # Needs relative to the targets, so that a small split gets its share
    # of a rare label too (absolute needs would give it all to train).
    image_need = 1 - taken / (share * total)
    label = rarest(p)
    if label >= 0:
      need = 1 - taken_pos[:, label] / (share * total_pos[label])
      best = max(range(len(names)), key=lambda i: (need[i], image_need[i], -i))
    else:
      best = max(range(len(names)), key=lambda i: (image_need[i], -i))
    chosen[names[best]].append(p)
    taken[best] += len(groups[p])
    taken_pos[best] += positives[p]
    progress.update(done)
  progress.end()
  return {s: sorted((f for p in chosen[s] for f in groups[p]),
                    key=lambda f: f.path) for s in names}


def requested_images(fractions, pool, splits):
  """{'pool', 'requested', 'actual'}: the images each drawn split was asked
  for (its fraction of the `pool` images it was drawn from, rounded) and
  the images of every split. `draw_splits` takes patients whole and spreads
  each label's positives first, so on a small set a split can land far
  from its request (`far_off_splits`)."""
  return {'pool': pool,
          'requested': {s: math.floor(f * pool + 0.5)
                        for s, f in fractions.items()},
          'actual': {s: len(fs) for s, fs in splits.items()}}


def far_off_splits(images):
  """The drawn splits of `requested_images` whose image count is off by
  more than a quarter of the request (and more than one image), or empty
  where images were asked for."""
  far = []
  for split, asked in images['requested'].items():
    got = images['actual'].get(split, 0)
    if (abs(got - asked) > max(1, asked / 4) or
        (got == 0) != (asked == 0)):
      far.append(split)
  return far


def _check_official_splits(layout, by_split):
  """Refuses an official split that leaves train or test without an image
  (a header-only valid.csv would give a dataset with no test set).

  Raises:
    SourceError: naming the file that gave no usable image.
  """
  sources_of = {
      'nih': {'train': f'{NIH_TRAIN_VAL_LIST} names no usable image',
              'test': f'{NIH_TEST_LIST} names no usable image'},
      'chexpert': {'train': f'{CHEXPERT_TRAIN} has no usable row',
                   'test': f'{CHEXPERT_VALID} has no usable row'},
      'mimic': {'train': f'{MIMIC_SPLIT_FILE} names no usable train image',
                'test': f'{MIMIC_SPLIT_FILE} names no usable test image'},
  }[layout]
  for split in ('train', 'test'):
    if not by_split[split]:
      raise SourceError(
          f'the official {split} split is empty: {sources_of[split]}; fix '
          f'that file, or pass --resplit to draw {split} by patient')


def check_patient_overlap(splits):
  """{'checked': True, 'patients_in_more_than_one_split': n}."""
  seen = collections.defaultdict(set)
  for split, files in splits.items():
    for f in files:
      seen[f.patient_id].add(split)
  return {'checked': True, 'patients_in_more_than_one_split':
          sum(len(s) > 1 for s in seen.values())}


def _resolve_source_overlap(files):
  """Moves each patient an official split puts in two splits to the
  evaluation split among them (module docstring).

  Returns:
    (files, {'patients': n, 'images_moved': m}).
  """
  by_patient = collections.defaultdict(set)
  for f in files:
    by_patient[f.patient_id].add(f.source_split)
  target = {p: next(s for s in _EVALUATION_FIRST if s in splits)
            for p, splits in by_patient.items() if len(splits) > 1}
  moved = 0
  result = []
  for f in files:
    if f.patient_id in target and f.source_split != target[f.patient_id]:
      f = dataclasses.replace(f, source_split=target[f.patient_id])
      moved += 1
    result.append(f)
  return result, {'patients': len(target), 'images_moved': moved}


def resolve_layout(src_dir, layout, labels_csv=None):
  """The multi-label layout a conversion of src_dir uses, or None for the
  single-label layouts of `sources`.

  Raises:
    SourceError: labels_csv with a layout other than csv or auto, or an
      auto layout that matches two multi-label layouts.
  """
  if labels_csv and layout not in ('auto', 'csv'):
    raise SourceError(f'--labels_csv is for the csv layout, not {layout}; '
                      'drop it or pass --layout=csv')
  if layout in LAYOUTS:
    return layout
  if layout != 'auto':
    return None
  if labels_csv:
    return 'csv'
  detected = detect_layout(src_dir)
  if detected is None and is_ambiguous(src_dir):
    raise SourceError(f'src_dir {src_dir} holds the label files of more than '
                      'one multi-label set; pass --layout=nih, chexpert or '
                      'mimic')
  return detected


def plan(src_dir, layout, split_method='official', val_fraction=None,
         test_fraction=None, seed=0, labels_csv=None,
         path_column=DEFAULT_PATH_COLUMN,
         patient_column=DEFAULT_PATIENT_COLUMN, label_columns=None,
         progress=sources.NO_PROGRESS):
  """Scans a multi-label tree and assigns every usable image a split.

  Args:
    src_dir: the source folder.
    layout: 'nih', 'chexpert', 'mimic' or 'csv'.
    split_method: 'official' or 'resplit' (module docstring).
    val_fraction: the share of val (default `DEFAULT_VAL_FRACTION`): of
      the official training set (NIH, CheXpert), or of all images
      (resplit); MIMIC's official split has its own val.
    test_fraction: resplit only (default `DEFAULT_TEST_FRACTION`).
    seed: seed of the drawn splits.
    labels_csv, path_column, patient_column, label_columns: the csv layout.
    progress: a `sources.Progress`: lines while scanning, reading the label
      rows, hashing for duplicates and drawing splits (minutes at NIH's or
      CheXpert's size).

  Returns:
    A `sources.Plan` with label_names, unlabelled and split_info ({'method',
    'val_fraction', 'test_fraction', 'source_overlap', 'patient_overlap'}).

  Raises:
    SourceError: a missing file or column, a path outside src_dir, bad
      split arguments, no usable image, or (a bug) a patient in two splits.
  """
  if layout not in LAYOUTS:
    raise SourceError(f'layout must be one of {LAYOUTS}, got {layout!r}')
  val_fraction, test_fraction = check_split_arguments(
      layout, split_method, val_fraction, test_fraction)
  if not os.path.isdir(src_dir):
    raise SourceError(f'src_dir {src_dir} does not exist or is not a folder; '
                      f'pass the folder that holds the {layout} label files')
  if layout == 'nih':
    rows, found, ignored, read = scan_nih(src_dir, split_method, progress)
    label_names = NIH_LABELS
  elif layout == 'chexpert':
    rows, found, ignored, read = scan_chexpert(src_dir, split_method,
                                               progress)
    label_names = CHEXPERT_LABELS
  elif layout == 'mimic':
    rows, found, ignored, read = scan_mimic(src_dir, split_method,
                                            progress)
    label_names = CHEXPERT_LABELS
  else:
    rows, found, ignored, read, label_names = scan_csv(
        src_dir, labels_csv, path_column, patient_column, label_columns,
        progress)
  files, skipped, row_duplicates, unlabelled = _files_from_rows(
      src_dir, rows, found)
  if not files:
    reasons = collections.Counter(s['reason'].split(':')[0] for s in skipped)
    why = ', '.join(f'{n} {r}' for r, n in reasons.most_common(3))
    raise SourceError(
        f'no usable image in {src_dir}: {len(rows)} label row(s) in '
        f'{", ".join(read)}' + (f' ({why})' if why else '') +
        '; check --src_dir and that the images sit where the label files '
        'say')
  files, byte_duplicates = sources.find_duplicates(
      src_dir, files, prefer_evaluation_splits=split_method == 'official',
      progress=progress)
  info = {'method': split_method, 'val_fraction': val_fraction,
          'test_fraction': test_fraction}
  if split_method == 'official':
    files, info['source_overlap'] = _resolve_source_overlap(files)
    by_split = collections.defaultdict(list)
    for f in files:
      by_split[f.source_split].append(f)
    _check_official_splits(layout, by_split)
    splits = {}
    if layout == 'mimic':
      splits = {s: sorted(by_split[s], key=lambda f: f.path)
                for s in sources.SPLIT_FOLDERS if by_split[s]}
    else:
      fractions = {'val': val_fraction}
      drawn = draw_splits(by_split['train'], len(label_names), fractions,
                          seed, progress)
      splits = {'train': drawn['train'], 'val': drawn['val'],
                'test': sorted(by_split['test'], key=lambda f: f.path)}
      info['images'] = requested_images(fractions, len(by_split['train']),
                                        splits)
  else:
    fractions = {'val': val_fraction, 'test': test_fraction}
    splits = draw_splits(files, len(label_names), fractions, seed, progress)
    splits = {s: splits[s] for s in sources.SPLIT_FOLDERS}
    info['images'] = requested_images(fractions, len(files), splits)
  overlap = check_patient_overlap(splits)
  if overlap['patients_in_more_than_one_split']:
    raise SourceError(
        f'{overlap["patients_in_more_than_one_split"]} patient(s) would be in '
        'two splits; this is a bug of the split planning: please report it')
  info['patient_overlap'] = overlap
  duplicates = sorted(row_duplicates + byte_duplicates,
                      key=lambda d: str(d['dropped']))
  skipped.sort(key=lambda s: (s['path'], s.get('row', '')))
  return sources.Plan(
      src_dir, layout, tuple(label_names), splits, duplicates,
      sorted(ignored), len(rows), None, skipped, label_names=tuple(label_names),
      unlabelled=unlabelled, split_info=info)
