"""Scanning image folders and planning the splits of a conversion.

Reads a source tree in one of four layouts:

  kaggle    src/{train,val,test}/<class>/...   (the Kaggle "chest-xray-pneumonia")
  mendeley  src/{train,test}/<class>/...       (Mendeley Data v3)
  pool      src/<class>/...                    (one pool of class folders)
  rsna      src/stage_2_train_images/<patientId>.dcm with the labels in
            src/stage_2_train_labels.csv (RSNA Pneumonia Detection
            Challenge; one pool, re-split only; Target 0 is NORMAL, 1 is
            PNEUMONIA; one row per box, deduplicated here, the boxes kept)
            and, if present, src/stage_2_detailed_class_info.csv (the
            detailed class)

and turns it into a `Plan`: which file goes into which split, with class ids
as `flow_from_directory` assigns them (sorted folder names: NORMAL=0,
PNEUMONIA=1), patient ids parsed from the file names (a DICOM file's from
its PatientID; RSNA's patientId), duplicates removed
(byte-identical files, and DICOM files with the same stored pixels), and
optionally a fresh split grouped by patient.

Only the class folders are scanned (recursively), so the Kaggle zip's nested
`chest_xray/chest_xray/` copy and its `__MACOSX/` folder, which sit at the top
level, are not double counted; they are reported as ignored. OS litter
(`__MACOSX/`, `._*`, `.DS_Store`, `Thumbs.db`, hidden files) is skipped
everywhere. Every other file in a class folder is scanned: whether it is an
image is decided by decoding it (`imaging.decode_and_resize`).

Entries that cannot be read as files are skipped here, each with a reason,
and counted as scanned (`Scan.skipped`): a name that is not valid UTF-8 (it
could not be stored as image/filename), a broken symbolic link or a link
loop, and anything that is not a regular file (a FIFO, whose open would
block, a socket, a device). Symbolic links to files are followed; symbolic
links to folders are not (they may loop, or pull in a whole other tree) and
are listed as ignored.

No TensorFlow here; this runs before the writer imports it.
"""

import collections
import concurrent.futures
import csv
import dataclasses
import errno
import hashlib
import math
import os
import re
import stat
import sys
import time

from xray_tfdata import dicom
from xray_tfdata import errors

SPLIT_FOLDERS = ('train', 'val', 'test')
# The multi-label layouts (nih, chexpert, mimic, csv) are scanned by
# `xray_tfdata.sources_multilabel`; `scan` and `plan` read the others.
MULTILABEL_LAYOUTS = ('nih', 'chexpert', 'mimic', 'csv')
LAYOUTS = ('auto', 'kaggle', 'mendeley', 'pool', 'rsna') + MULTILABEL_LAYOUTS
# The files that tell the multi-label layouts apart
# (`detect_multilabel_layout`).
NIH_CSV_PREFIX = 'Data_Entry_2017'
CHEXPERT_TRAIN = 'train.csv'
CHEXPERT_VALID = 'valid.csv'
MIMIC_PREFIX = 'mimic-cxr-2.0.0-'
RSNA_IMAGES = 'stage_2_train_images'
RSNA_LABELS = 'stage_2_train_labels.csv'
RSNA_CLASS_INFO = 'stage_2_detailed_class_info.csv'
# RSNA's Target 0 and 1, under the class names of this project's datasets.
RSNA_CLASS_NAMES = ('NORMAL', 'PNEUMONIA')
# A class folder must hold at least one file with one of these extensions
# (the ones `flow_from_directory` accepts, plus .gif/.webp/.pgm PIL reads,
# and DICOM, decoded by xray_tfdata.dicom).
IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png', '.bmp', '.ppm', '.pgm', '.tif',
                    '.tiff', '.gif', '.webp', '.dcm', '.dicom')
_LITTER = frozenset({'__MACOSX', '.DS_Store', 'Thumbs.db', 'desktop.ini',
                     '$RECYCLE.BIN', '.Trashes', '.Spotlight-V100'})
_PERSON_RE = re.compile(r'^person(\d+)_')
_IM_RE = re.compile(r'^(?:NORMAL2-)?IM-(\d+)-')
_HASH_THREADS = 8
_HASH_CHUNK = 512  # files hashed between two progress reports
# Evaluation sets stay as published: a duplicate is kept in test, then val.
_KEEP_RANK = {'test': 0, 'val': 1, 'train': 2, None: 3}


# Planning a real NIH or CheXpert tree takes minutes; its stages report
# at most this often, and a stage that ends sooner says nothing.
PROGRESS_SECONDS = 10.0


class SourceError(errors.XrayError):
  """A problem with the source folder or the requested split (a user error)."""


class Progress:
  """Progress lines of the planning stages (scanning, reading label rows,
  hashing for duplicates, drawing splits), on stderr.

  A stage prints '<stage>: <done> of <total> <unit> (<seconds> s)' at most
  every `interval` seconds, and, if it printed one, a last line when it
  ends; a stage shorter than the interval prints nothing, so small
  conversions stay quiet. Cheap: one clock read per item.

    progress.stage('reading train.csv', len(rows), 'rows')
    for i, row in enumerate(rows, 1):
      ...
      progress.update(i)
    progress.end()

  Args:
    enabled: False prints nothing (`NO_PROGRESS`).
    interval: seconds between lines.
    stream: where the lines go (default sys.stderr).
  """

  def __init__(self, enabled=True, interval=PROGRESS_SECONDS, stream=None):
    self.enabled, self.interval, self.stream = enabled, interval, stream
    self._name, self._total, self._unit, self._done = '', None, '', 0
    self._start = self._last = 0.0
    self._printed = False

  def stage(self, name, total=None, unit='files'):
    """Starts a stage of `total` items (None: not known in advance)."""
    self._name, self._total, self._unit, self._done = name, total, unit, 0
    self._start = self._last = time.monotonic()
    self._printed = False
    return self

  def update(self, done):
    """Reports `done` items of the stage so far."""
    self._done = done
    if self.enabled and time.monotonic() - self._last >= self.interval:
      self._print()

  def advance(self, items=1):
    """Reports `items` more items of the stage."""
    self.update(self._done + items)

  def end(self):
    """Ends the stage: its last line, if it printed any."""
    if self._printed:
      self._print(' done')

  def _print(self, suffix=''):
    now = time.monotonic()
    self._last, self._printed = now, True
    of = f' of {self._total:,}' if self._total is not None else ''
    print(f'{self._name}: {self._done:,}{of} {self._unit} '
          f'({now - self._start:.0f} s){suffix}',
          file=self.stream or sys.stderr, flush=True)


NO_PROGRESS = Progress(enabled=False)


@dataclasses.dataclass(frozen=True)
class SourceFile:
  """One scanned file.

  Attributes:
    path: path relative to src_dir, '/'-separated (stored as image/filename).
    source_split: the split folder it came from, or None (pool layout).
    class_name: its class folder.
    label: class id (index of class_name in the sorted class names).
    patient_id: best-effort patient key parsed from the file name.
    num_bytes: file size.
    detailed_class: RSNA's detailed class; None in other layouts, or when
      the RSNA tree has no detailed class file.
    boxes: RSNA's boxes, ((x, y, width, height), ...) in the source image's
      pixels; None in other layouts.
    is_dicom: a DICOM file, whose patient id is an identifier the writer
      stores only hashed (`writer.hashed_patient_id`).
    labels: a multi-label source's raw codes (`schema.LABEL_CODES`), one per
      label name; None in the single-label layouts (then class_name and
      label hold the class; in a multi-label plan they are '' and -1).
    view, sex, age_years, study_id: a multi-label record's
      `schema.MULTILABEL_FEATURES` (None: unknown).
    hash_ids: the patient and study ids identify persons: the writer
      stores them hashed, and replaces them in image/filename
      (`private_parts`).
    private_parts: ((text, id), ...): path segments (or file name stems, or
      the part of a stem before its first '_') equal to `text` are stored
      as the hash of `id`; an id of None drops the segment (a bucket
      folder named after the id's digits).
  """
  path: str
  source_split: str | None
  class_name: str
  label: int
  patient_id: str
  num_bytes: int
  detailed_class: str | None = None
  boxes: tuple | None = None
  is_dicom: bool = False
  labels: tuple | None = None
  view: str | None = None
  sex: str | None = None
  age_years: int | None = None
  study_id: str | None = None
  hash_ids: bool = False
  private_parts: tuple = ()


@dataclasses.dataclass
class Scan:
  """What `scan` found: layout, classes, files (sorted by path), ignored,
  and entries of class folders skipped as unreadable ([{'path', 'reason'}],
  sorted by path)."""
  src_dir: str
  layout: str
  class_names: tuple
  files: list
  ignored: list  # relative paths of skipped top-level entries and OS litter
  skipped: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Plan:
  """What to write: `splits` maps split -> files sorted by path.

  Attributes:
    num_scanned: entries found in the class folders (litter excluded);
      equals the files in all splits plus the duplicates plus `skipped`.
    duplicates: [{'kept', 'dropped', 'sha256', 'same'}], relative paths;
      'same' is 'bytes' or, for DICOM files, 'pixels'.
    split_counts: {'requested': {split: {class: n}}, 'actual': ...} for a
      re-split, else None.
    skipped: [{'path', 'reason'}] of entries the scan could not use (see
      the module docstring); the writer adds the files it cannot decode.
    label_names: a multi-label plan's labels (`sources_multilabel`), None
      for a single-label one.
    unlabelled: a multi-label plan's image files no label row names
      ([{'path', 'reason'}]).
    split_info: a multi-label plan's split method and what it did (see
      `sources_multilabel.plan`).
  """
  src_dir: str
  layout: str
  class_names: tuple
  splits: dict
  duplicates: list
  ignored: list
  num_scanned: int
  split_counts: dict | None = None
  skipped: list = dataclasses.field(default_factory=list)
  label_names: tuple | None = None
  unlabelled: list = dataclasses.field(default_factory=list)
  split_info: dict | None = None


def patient_id(filename):
  """Best-effort patient key from a Kermany file name.

  'person12_bacteria_3.jpeg' -> 'person12'; 'IM-0115-0001.jpeg' and
  'NORMAL2-IM-0115-0001.jpeg' -> 'IM-115'; anything else -> the path
  without its extension ('NORMAL/001.png' -> 'NORMAL/001'), so an unparsed
  file is its own group, even where another class folder has a file of the
  same name. Other names need `patient_id_regex` or a patient CSV
  (`assign_patient_ids`).
  """
  name = os.path.basename(filename)
  m = _PERSON_RE.match(name)
  if m:
    return f'person{int(m[1])}'
  m = _IM_RE.match(name)
  if m:
    return f'IM-{int(m[1])}'
  return os.path.splitext(filename)[0]


def compile_patient_id_regex(pattern):
  """Checks a `patient_id_regex`: valid, with one group or a group named
  'patient'.

  Returns:
    (compiled pattern, the group to read: 'patient' or 1).
  Raises:
    SourceError: naming what is wrong with it.
  """
  try:
    compiled = re.compile(pattern)
  except re.error as e:
    raise SourceError(f'patient_id_regex {pattern!r} is not a regular '
                      f'expression: {e}') from None
  if 'patient' in compiled.groupindex:
    return compiled, 'patient'
  if compiled.groups != 1:
    raise SourceError(
        f'patient_id_regex {pattern!r} has {compiled.groups} groups; give '
        'one group, or name the patient\'s (?P<patient>...), e.g. '
        "'^(\\d+)_'")
  return compiled, 1


def read_patient_csv(csv_path):
  """{path or file name: patient id} from a CSV with the columns `path`
  and `patient_id`.

  Raises:
    SourceError: unreadable, without those columns or rows, a blank id, or
      one path given two patients.
  """
  rows = _read_csv(csv_path, ('path', 'patient_id'), 'a patient CSV')
  if not rows:
    raise SourceError(f'patient CSV {csv_path} has no rows; give a header '
                      'path,patient_id and one row per image')
  patients = {}
  for line, row in enumerate(rows, start=2):
    path = (row['path'] or '').strip().replace(os.sep, '/').lstrip('/')
    value = (row['patient_id'] or '').strip()
    if not path or not value:
      raise SourceError(f'patient CSV {csv_path} line {line}: path and '
                        'patient_id must not be blank')
    if patients.setdefault(path, value) != value:
      raise SourceError(f'patient CSV {csv_path} line {line}: {path} has two '
                        f'patient ids ({patients[path]!r} and {value!r})')
  return patients


def assign_patient_ids(files, patient_id_regex=None, patient_csv=None):
  """Replaces the scanned patient ids with the user's.

  Args:
    files: `SourceFile`s.
    patient_id_regex: searched (`re.search`) in each file's name, or in its
      path relative to the source folder if the pattern has a '/'; the
      patient id is its group `patient`, else its one group.
    patient_csv: a CSV (`read_patient_csv`) whose `path` is the path
      relative to the source folder or, failing that, the file name.

  Returns:
    The files with their patient ids replaced (the same list if neither is
    given).
  Raises:
    SourceError: both given, a bad pattern or CSV, or a file the pattern
      does not match or the CSV does not list (named, with how many more).
  """
  if patient_id_regex and patient_csv:
    raise SourceError('give --patient_id_regex or --patient_csv, not both')
  if not patient_id_regex and not patient_csv:
    return files
  if patient_id_regex:
    compiled, group = compile_patient_id_regex(patient_id_regex)
    on_path = '/' in patient_id_regex

    def lookup(f):
      m = compiled.search(f.path if on_path else os.path.basename(f.path))
      return (m[group] or None) if m else None
    source = f'patient_id_regex {patient_id_regex!r}'
    fix = 'fix the pattern (or give --patient_csv)'
  else:
    table = read_patient_csv(patient_csv)

    def lookup(f):
      return table.get(f.path, table.get(os.path.basename(f.path)))
    source = f'patient CSV {patient_csv}'
    fix = 'add a row for each image'
  assigned, missing = [], []
  for f in files:
    value = lookup(f)
    if value is None:
      missing.append(f.path)
    else:
      assigned.append(dataclasses.replace(f, patient_id=value))
  if missing:
    more = f' and {len(missing) - 1} other file(s)' if len(missing) > 1 else ''
    verb = 'does not match' if patient_id_regex else 'has no row for'
    raise SourceError(f'{source} {verb} {display_path(missing[0])}{more}; '
                      f'{fix}')
  return assigned


def dicom_patient_id(full_path, path):
  """Patient key of a DICOM file in a folder layout: its PatientID
  (0010,0020), read from the header only; the file stem if it has none or
  cannot be read (the writer skips an unreadable file with the reason).

  Args:
    full_path: the file.
    path: its path relative to the source folder.
  """
  try:
    value = str(dicom.read_header(full_path).get('PatientID', '') or '')
  except Exception:  # pylint: disable=broad-except  (reported by the writer)
    value = ''
  return value.strip() or os.path.splitext(os.path.basename(path))[0]


def detect_multilabel_layout(src_dir):
  """The multi-label layout of src_dir when its files say so unambiguously
  ('nih', 'chexpert', 'mimic'), else None.

  Data_Entry_2017*.csv -> nih; train.csv and valid.csv whose header has a
  Path column -> chexpert; mimic-cxr-2.0.0-*.csv.gz files -> mimic. Two of
  them at once is ambiguous: None (`sources_multilabel.resolve_layout`
  then asks for --layout).
  """
  if not os.path.isdir(src_dir):
    return None
  names = set(os.listdir(src_dir))
  found = []
  if any(n.startswith(NIH_CSV_PREFIX) and n.endswith('.csv') for n in names):
    found.append('nih')
  if {CHEXPERT_TRAIN, CHEXPERT_VALID} <= names:
    try:
      with open(os.path.join(src_dir, CHEXPERT_TRAIN), newline='',
                encoding='utf-8-sig') as f:
        header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
      header = []
    if 'Path' in header:
      found.append('chexpert')
  if any(n.startswith(MIMIC_PREFIX) and n.endswith('.csv.gz') for n in names):
    found.append('mimic')
  return found[0] if len(found) == 1 else None


def is_litter(name):
  """Whether a file or folder name is OS litter or hidden."""
  return name in _LITTER or name.startswith('.')


def scan(src_dir, layout='auto'):
  """Finds the class folders and files of a source tree.

  Args:
    src_dir: the source folder.
    layout: 'auto', 'kaggle', 'mendeley', 'pool' or 'rsna' (see module
      docstring).

  Returns:
    A `Scan`.

  Raises:
    SourceError: src_dir missing or empty, layout not found, fewer than two
      class folders, split folders with different classes, or a class folder
      without images.
  """
  if layout not in LAYOUTS:
    raise SourceError(f'layout must be one of {LAYOUTS}, got {layout!r}')
  if layout in MULTILABEL_LAYOUTS:
    raise SourceError(f'the {layout} layout is multi-label: plan it with '
                      'sources_multilabel.plan (writer.convert does)')
  if not os.path.isdir(src_dir):
    raise SourceError(
        f'src_dir {src_dir} does not exist or is not a folder; pass the folder '
        'that holds train/ val/ test/ or the class folders')
  if layout == 'auto':
    detected = detect_multilabel_layout(src_dir)
    if detected:
      raise SourceError(
          f'src_dir {src_dir} is a multi-label {detected} tree: plan it with '
          'sources_multilabel.plan (writer.convert and tools/make_tfrecords '
          'do)')
  entries = sorted(os.listdir(src_dir))
  folders = [e for e in entries if not is_litter(e) and
             os.path.isdir(os.path.join(src_dir, e))]
  if not folders:
    raise SourceError(
        f'src_dir {src_dir} has no folders; it should hold train/ val/ test/ '
        'or class folders (NORMAL/ PNEUMONIA/)')

  split_folders = [s for s in SPLIT_FOLDERS if s in folders]
  is_rsna = (RSNA_IMAGES in folders and
             os.path.isfile(os.path.join(src_dir, RSNA_LABELS)))
  if layout == 'rsna' or (layout == 'auto' and is_rsna and not split_folders):
    return scan_rsna(src_dir)
  if layout == 'auto':
    if {'train', 'test'} <= set(split_folders):
      layout = 'kaggle' if 'val' in split_folders else 'mendeley'
    elif split_folders:
      raise SourceError(
          f'src_dir {src_dir} has {"/ ".join(split_folders)}/ but not both '
          'train/ and test/; add the missing split folder, or pass the class '
          'folders as one pool (layout pool)')
    else:
      layout = 'pool'
  if layout == 'pool':
    splits = [None]
  else:
    splits = ['train', 'val', 'test'] if layout == 'kaggle' else ['train', 'test']
    missing = [s for s in splits if s not in folders]
    if missing:
      raise SourceError(f'src_dir {src_dir} has no {"/ ".join(missing)}/ '
                        f'folder, which the {layout} layout needs')

  scanned = folders if layout == 'pool' else splits
  ignored = [display_path(e) +
             ('/' if os.path.isdir(os.path.join(src_dir, e)) else '')
             for e in entries if e not in scanned]

  class_folders = {}  # split -> sorted class names
  for split in splits:
    split_dir = os.path.join(src_dir, split) if split else src_dir
    names = []
    for e in sorted(os.listdir(split_dir)):
      if not is_litter(e) and os.path.isdir(os.path.join(split_dir, e)):
        names.append(e)
      elif split:
        ignored.append(f'{split}/{display_path(e)}')
    class_folders[split] = names

  class_names = sorted({c for names in class_folders.values() for c in names})
  for c in class_names:
    if not _is_utf8(c):
      raise SourceError(
          f'class folder name {display_path(c)!r} is not valid UTF-8; rename '
          'the folder')
  if len(class_names) < 2:
    hint = ''
    if len(class_names) == 1 and splits == [None]:
      inner = os.path.join(src_dir, class_names[0])
      if any(os.path.isdir(os.path.join(inner, s)) for s in SPLIT_FOLDERS):
        hint = f'; did you mean --src_dir={inner}?'
    raise SourceError(
        f'src_dir {src_dir} has {len(class_names)} class folder(s) '
        f'{class_names}; a classifier needs at least two (e.g. NORMAL/ '
        f'PNEUMONIA/){hint}')
  for split, names in class_folders.items():
    if names != class_names:
      raise SourceError(
          f'{split}/ has class folders {names} but the dataset has '
          f'{class_names}; every split folder needs the same class folders')

  files = []
  skipped = []
  for split in splits:
    for label, class_name in enumerate(class_names):
      rel_root = f'{split}/{class_name}' if split else class_name
      found = _walk_class_folder(src_dir, rel_root, ignored, skipped)
      if not any(p.lower().endswith(IMAGE_EXTENSIONS) for p, _ in found):
        raise SourceError(
            f'class folder {os.path.join(src_dir, rel_root)} has no images '
            f'({", ".join(IMAGE_EXTENSIONS[:3])}, ...); add images or remove '
            'the folder')
      for path, num_bytes in found:
        full_path = os.path.join(src_dir, path)
        if dicom.is_dicom(full_path):
          files.append(SourceFile(path, split, class_name, label,
                                  dicom_patient_id(full_path, path),
                                  num_bytes, is_dicom=True))
        else:
          files.append(SourceFile(path, split, class_name, label,
                                  patient_id(path), num_bytes))
  files.sort(key=lambda f: f.path)
  skipped.sort(key=lambda s: s['path'])
  return Scan(src_dir, layout, tuple(class_names), files, sorted(ignored),
              skipped)


def read_rsna_labels(labels_path):
  """patientId -> (Target, boxes) from stage_2_train_labels.csv, one entry
  per image however many box rows it has.

  Returns:
    {patientId: (Target 0 or 1, ((x, y, width, height), ...))}; boxes in
    the source image's pixels, in file order, none for Target 0.

  Raises:
    SourceError: the file is unreadable, lacks the patientId or Target
      column, has a Target other than 0/1, gives one image two Targets, or
      has a box that is not four numbers (or a Target 1 row without one).
  """
  rows = _read_csv(labels_path, ('patientId', 'Target'))
  labels = {}
  for line, row in enumerate(rows, start=2):
    target = (row['Target'] or '').strip()
    if target not in ('0', '1'):
      raise SourceError(f'{labels_path} line {line}: Target must be 0 or 1, '
                        f'got {target!r}')
    previous, boxes = labels.setdefault(row['patientId'], (int(target), []))
    if previous != int(target):
      raise SourceError(f'{labels_path}: patientId {row["patientId"]} has '
                        'rows with Target 0 and 1; fix the labels file')
    box = _box(row)
    if box is None and target == '1':
      raise SourceError(f'{labels_path} line {line}: Target 1 needs a box '
                        '(x, y, width, height as numbers)')
    if box is not None:
      boxes.append(box)
  return {pid: (target, tuple(boxes))
          for pid, (target, boxes) in labels.items()}


def _box(row):
  """(x, y, width, height) of one label row; None if all four are blank
  (Target 0 rows) or any is not a number."""
  values = [(row.get(k) or '').strip() for k in ('x', 'y', 'width', 'height')]
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    return None


def read_rsna_classes(class_info_path):
  """patientId -> detailed class from stage_2_detailed_class_info.csv.

  Raises:
    SourceError: unreadable, lacks the patientId or class column, or gives
      one image two classes.
  """
  classes = {}
  for row in _read_csv(class_info_path, ('patientId', 'class')):
    previous = classes.setdefault(row['patientId'], row['class'])
    if previous != row['class']:
      raise SourceError(f'{class_info_path}: patientId {row["patientId"]} '
                        f'has the classes {previous!r} and {row["class"]!r}; '
                        'fix the class file')
  return classes


def _read_csv(path, columns, kind='RSNA stage 2'):
  """The rows of a CSV file with a header, checked for `columns`."""
  try:
    # utf-8-sig: a byte-order mark would become part of the first column.
    with open(path, newline='', encoding='utf-8-sig') as f:
      rows = list(csv.DictReader(f))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise SourceError(f'cannot read {path}: {e}') from e
  if rows and not set(columns) <= set(rows[0]):
    raise SourceError(f'{path} needs the columns {" and ".join(columns)} '
                      f'({kind}), has {sorted(rows[0])}')
  return rows


def scan_rsna(src_dir):
  """Scans the RSNA layout: every entry of stage_2_train_images/, labelled
  from stage_2_train_labels.csv.

  An image without a label row is skipped with that reason; label rows
  without an image are listed in `ignored` (with their patientIds), so that
  nothing is dropped silently. The same for stage_2_detailed_class_info.csv,
  if present: an image missing from it gets the detailed class '' and is
  listed in `ignored`.

  Returns:
    A `Scan` with layout 'rsna' and class names NORMAL, PNEUMONIA; every file
    in the pool (source_split None), its patient id the file's stem (the
    writer stores a salted hash of it), its boxes and detailed class set.

  Raises:
    SourceError: see `read_rsna_labels` and `read_rsna_classes`; or no
      images.
  """
  labels_path = os.path.join(src_dir, RSNA_LABELS)
  if not os.path.isfile(labels_path):
    raise SourceError(f'src_dir {src_dir} has no {RSNA_LABELS}, which the '
                      'rsna layout needs')
  labels = read_rsna_labels(labels_path)
  class_info_path = os.path.join(src_dir, RSNA_CLASS_INFO)
  classes = (read_rsna_classes(class_info_path)
             if os.path.isfile(class_info_path) else None)
  ignored = [display_path(e) + ('/' if os.path.isdir(
      os.path.join(src_dir, e)) else '')
             for e in sorted(os.listdir(src_dir))
             if e not in (RSNA_IMAGES, RSNA_LABELS, RSNA_CLASS_INFO)]
  skipped = []
  found = _walk_class_folder(src_dir, RSNA_IMAGES, ignored, skipped)
  files, seen = [], set()
  for path, num_bytes in found:
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem not in labels:
      skipped.append({'path': display_path(path),
                      'reason': f'no row in {RSNA_LABELS}'})
      continue
    seen.add(stem)
    label, boxes = labels[stem]
    detailed_class = None if classes is None else classes.get(stem, '')
    files.append(SourceFile(path, None, RSNA_CLASS_NAMES[label], label, stem,
                            num_bytes, detailed_class, boxes, is_dicom=True))
  _report_ids(ignored, sorted(set(labels) - seen),
              f'{RSNA_LABELS}: {{}} label row(s) without an image in '
              f'{RSNA_IMAGES}/')
  if classes is not None:
    _report_ids(ignored, sorted(seen - set(classes)),
                f'{RSNA_CLASS_INFO}: {{}} image(s) without a row (detailed '
                "class '')")
  if not files:
    raise SourceError(f'{os.path.join(src_dir, RSNA_IMAGES)} has no labelled '
                      'images')
  files.sort(key=lambda f: f.path)
  skipped.sort(key=lambda item: item['path'])
  return Scan(src_dir, 'rsna', RSNA_CLASS_NAMES, files, sorted(ignored),
              skipped)


def _report_ids(ignored, ids, text):
  """Appends one line for `ids` (the first five shown) to `ignored`;
  `text` has a {} for their number."""
  if ids:
    shown = ', '.join(ids[:5]) + (', ...' if len(ids) > 5 else '')
    ignored.append(f'{text.format(len(ids))} ({shown})')


def display_path(path):
  """`path` printable and JSON-safe: bytes that are not UTF-8 (which Python
  carries as lone surrogates) shown as \\xNN escapes."""
  return os.fsencode(path).decode('utf-8', 'backslashreplace')


def _is_utf8(name):
  try:
    name.encode('utf-8')
  except UnicodeEncodeError:
    return False
  return True


def _walk_class_folder(src_dir, rel_root, ignored, skipped,
                       progress=NO_PROGRESS):
  """(relative path, size) of every usable non-litter file under one class
  folder; appends the others to `skipped` and litter and linked folders to
  `ignored`; advances `progress` (a stage the caller started) by each file
  looked at."""
  found = []
  for root, dirs, names in os.walk(os.path.join(src_dir, rel_root)):
    rel = os.path.relpath(root, src_dir).replace(os.sep, '/')
    for d in list(dirs):
      if is_litter(d) or os.path.islink(os.path.join(root, d)):
        dirs.remove(d)
        ignored.append(f'{display_path(rel)}/{display_path(d)}/')
    dirs.sort()
    for name in sorted(names):
      path = f'{rel}/{name}'
      if is_litter(name):
        ignored.append(display_path(path))
        continue
      reason, num_bytes = _check_file(os.path.join(root, name), path)
      if reason:
        skipped.append({'path': display_path(path), 'reason': reason})
      else:
        found.append((path, num_bytes))
      progress.advance()
  return found


def _check_file(full_path, rel_path):
  """(None, size) for a regular file with a UTF-8 name, else (reason, 0)."""
  if not _is_utf8(rel_path):
    return 'file name is not valid UTF-8; rename the file', 0
  try:
    info = os.stat(full_path)  # follows symbolic links
  except OSError as e:
    if os.path.islink(full_path):
      if e.errno == errno.ELOOP:
        return 'symbolic link loop', 0
      return f'broken symbolic link ({e.strerror})', 0
    return f'cannot read: {e.strerror}', 0
  if not stat.S_ISREG(info.st_mode):
    kind = ('FIFO' if stat.S_ISFIFO(info.st_mode) else
            'socket' if stat.S_ISSOCK(info.st_mode) else
            'device' if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
            else 'special file')
    return f'not a regular file ({kind})', 0
  return None, info.st_size


def find_duplicates(src_dir, files, prefer_evaluation_splits=True,
                    progress=NO_PROGRESS):
  """Finds duplicate images and keeps one of each.

  Two kinds: byte-identical files, and DICOM files with the same stored
  pixels (`dicom.pixel_digest`), since the same film is often re-encoded
  (another transfer syntax, other header values) and then shares no bytes.
  Other files are hashed (sha256) only if their sizes collide; every DICOM
  file is decoded once for its digest, as re-encoding changes the size.
  Hashing runs in threads (hashlib, file reads and the image decoders
  release the GIL). Empty files are left alone: they are all "identical"
  but are skipped later as unreadable; so are DICOM files that cannot be
  decoded, which the writer skips with the reason.

  Args:
    src_dir: the source folder.
    files: `SourceFile`s.
    prefer_evaluation_splits: keep the copy in test, then val, then train, so
      published evaluation sets stay whole; otherwise the first by path.
    progress: a `Progress` for the hashing.

  Returns:
    (kept files in the input order, duplicates [{'kept', 'dropped',
    'sha256', 'same'}] sorted by dropped path; 'same' is 'bytes' or
    'pixels').
  """
  progress.stage('looking for DICOM files (their pixels are hashed)',
                 len(files))
  is_dicom = {}
  for f in files:
    is_dicom[f.path] = dicom.is_dicom(os.path.join(src_dir, f.path))
    progress.update(len(is_dicom))
  progress.end()
  by_size = collections.defaultdict(list)
  for f in files:
    if f.num_bytes > 0 and not is_dicom[f.path]:
      by_size[f.num_bytes].append(f)
  candidates = [f for group in by_size.values() if len(group) > 1
                for f in group]
  candidates += [f for f in files if f.num_bytes > 0 and is_dicom[f.path]]

  def digest_of(f):
    path = os.path.join(src_dir, f.path)
    return _pixel_sha256(path) if is_dicom[f.path] else _sha256(path)

  progress.stage('hashing files of equal size for duplicates',
                 len(candidates))
  digests = []
  with concurrent.futures.ThreadPoolExecutor(_HASH_THREADS) as pool:
    # In chunks: one map of all the files would submit them all before the
    # first result, and report nothing until nearly the end.
    for start in range(0, len(candidates), _HASH_CHUNK):
      digests.extend(pool.map(digest_of,
                              candidates[start:start + _HASH_CHUNK]))
      progress.update(len(digests))
  progress.end()
  by_hash = collections.defaultdict(list)
  for f, digest in zip(candidates, digests):
    if digest is not None:  # unreadable now: the writer skips it with a reason
      # Pixel and byte digests never share a group.
      by_hash[(is_dicom[f.path], digest)].append(f)

  def keep_rank(f):
    if prefer_evaluation_splits:
      return (_KEEP_RANK[f.source_split], f.path)
    return (f.path,)

  dropped = set()
  duplicates = []
  for (pixels, digest), group in by_hash.items():
    group.sort(key=keep_rank)
    for f in group[1:]:
      dropped.add(f.path)
      duplicates.append({'kept': group[0].path, 'dropped': f.path,
                         'sha256': digest,
                         'same': 'pixels' if pixels else 'bytes'})
  duplicates.sort(key=lambda d: d['dropped'])
  return [f for f in files if f.path not in dropped], duplicates


def _pixel_sha256(path):
  """`dicom.pixel_digest`, or None if the file cannot be decoded (the
  writer skips it with the reason)."""
  try:
    return dicom.pixel_digest(path)
  except Exception:  # pylint: disable=broad-except  (reported by the writer)
    return None


def _sha256(path):
  """Hex digest of a file, or None if it cannot be read (deleted or made
  unreadable since the scan)."""
  digest = hashlib.sha256()
  try:
    with open(path, 'rb') as f:
      for block in iter(lambda: f.read(1 << 20), b''):
        digest.update(block)
  except OSError:
    return None
  return digest.hexdigest()


def parse_class_counts(text):
  """Parses 'NORMAL:150,PNEUMONIA:400' into {'NORMAL': 150, 'PNEUMONIA': 400}.

  Raises:
    SourceError: malformed text or a negative count.
  """
  counts = {}
  for item in text.split(','):
    name, sep, number = item.strip().rpartition(':')
    if not sep or not name or not re.fullmatch(r'\d+', number.strip()):
      raise SourceError(f'cannot parse class counts {text!r}; write them as '
                        'CLASS:COUNT,CLASS:COUNT, e.g. NORMAL:150,PNEUMONIA:400')
    if name in counts:
      raise SourceError(f'class {name} appears twice in {text!r}')
    counts[name] = int(number)
  return counts


def stable_order(keys, seed, salt=''):
  """A seeded shuffle that depends only on the keys and the seed.

  Sorting by a hash of (seed, salt, key) gives the same order on every Python
  and numpy version and whatever order the keys arrive in.
  """
  return sorted(keys, key=lambda k: hashlib.sha256(
      f'{seed}:{salt}:{k}'.encode('utf-8')).digest())


def draw_splits(files, class_names, val_counts, test_counts, seed=0):
  """Draws test, then val, by patient; the rest is train.

  Greedy over the patients in a seeded order (see `_fill`): a patient's
  images are taken whole and only if no class overshoots its target, so no
  patient spans two splits and each class is filled separately (stratified).
  Counts are exact unless no remaining patient fits the gap; then they fall
  short and the actual counts say by how much.

  Args:
    files: `SourceFile`s (deduplicated).
    class_names: the dataset's classes.
    val_counts, test_counts: {class: images} for every class.
    seed: the draw is a function of seed and file names only.

  Returns:
    ({'train': [...], 'val': [...], 'test': [...]} sorted by path,
     {'requested': {...}, 'actual': {split: {class: n}}}).

  Raises:
    SourceError: a class missing from or unknown to the counts, or counts
      that leave no training image of a class.
  """
  return _draw(files, class_names, {'test': test_counts, 'val': val_counts},
               seed)


def _draw(files, class_names, targets, seed):
  """Draws the splits of `targets` ({split: {class: n}}, in drawing order)
  by patient; the rest is train. See `draw_splits`."""
  available = collections.Counter(f.class_name for f in files)
  for split, counts in targets.items():
    if counts is None:
      raise SourceError(f'a re-split needs {split} counts for every class, '
                        f'e.g. --{split}_counts=NORMAL:150,PNEUMONIA:400')
    unknown = sorted(set(counts) - set(class_names))
    missing = [c for c in class_names if c not in counts]
    if unknown or missing:
      raise SourceError(
          f'{split} counts {counts} do not match the classes {list(class_names)}'
          f'; give one count for each class, e.g. --{split}_counts='
          + ','.join(f'{c}:N' for c in class_names))
  for c in class_names:
    asked = sum(counts[c] for counts in targets.values())
    if asked >= available[c]:
      wanted = ' + '.join(f'{split} {counts[c]}'
                          for split, counts in targets.items())
      raise SourceError(
          f'{wanted} {c} images leave none for training: there are '
          f'{available[c]} (after removing duplicates); ask for fewer')

  groups = collections.defaultdict(list)
  for f in files:
    groups[f.patient_id].append(f)
  group_counts = {pid: collections.Counter(f.class_name for f in fs)
                  for pid, fs in groups.items()}
  remaining = stable_order(groups, seed, 'patients')
  splits = {}
  actual = {}
  for split, split_targets in targets.items():
    chosen, taken = _fill(remaining, group_counts, split_targets)
    remaining = [p for p in remaining if p not in chosen]
    splits[split] = sorted((f for pid in chosen for f in groups[pid]),
                           key=lambda f: f.path)
    actual[split] = taken
  splits['train'] = sorted((f for pid in remaining for f in groups[pid]),
                           key=lambda f: f.path)
  train_counts = collections.Counter(f.class_name for f in splits['train'])
  actual['train'] = {c: train_counts[c] for c in class_names}
  requested = {s: dict(targets[s]) for s in SPLIT_FOLDERS if s in targets}
  return ({s: splits[s] for s in SPLIT_FOLDERS if s in splits},
          {'requested': requested,
           'actual': {s: actual[s] for s in SPLIT_FOLDERS if s in actual}})


def _fill(order, group_counts, targets):
  """Chooses patients whose class counts add up to `targets` (at most).

  Greedy in the seeded `order`, adding a patient only if no class overshoots;
  then the smallest patients first to close the gaps; then swaps of a chosen
  patient for a larger remaining one while that closes more of the gap.

  Returns:
    (chosen patient ids in an ordered dict, {class: images taken}).
  """
  taken = collections.Counter()
  chosen = {}  # an ordered set

  def fits(add, remove=()):
    total = taken + add
    total.subtract(remove)
    return all(total[c] <= targets[c] for c in total)

  by_size = sorted(order, key=lambda p: sum(group_counts[p].values()))
  for candidates in (order, by_size):
    for pid in candidates:
      if pid not in chosen and fits(group_counts[pid]):
        chosen[pid] = True
        taken += group_counts[pid]
  gap = sum(targets.values()) - sum(taken.values())
  while gap:
    swap = next(((old, new) for old in chosen for new in by_size
                 if new not in chosen and
                 sum(group_counts[new].values()) >
                 sum(group_counts[old].values()) and
                 fits(group_counts[new], group_counts[old])), None)
    if swap is None:
      break
    old, new = swap
    del chosen[old]
    chosen[new] = True
    taken.subtract(group_counts[old])
    taken += group_counts[new]
    gap = sum(targets.values()) - sum(taken.values())
  return chosen, {c: taken[c] for c in targets}


def check_split_arguments(resplit=False, val_counts=None, test_counts=None,
                          keep_test=False, val_fraction=None,
                          test_fraction=None):
  """Checks how the splits are asked for, before anything is scanned.

  Raises:
    SourceError: a re-split and keep_test together, a split to draw with
      neither counts nor a fraction, counts and a fraction
      for one split, a fraction outside (0, 1) or fractions adding up to 1
      or more, test counts or a test fraction with keep_test, or counts or
      fractions without a split to draw.
  """
  if resplit and keep_test:
    raise SourceError('--resplit draws val and test anew, --keep_test keeps '
                      'the test folder: give one of them')
  for split, counts, fraction in (('val', val_counts, val_fraction),
                                  ('test', test_counts, test_fraction)):
    if counts is not None and fraction is not None:
      raise SourceError(f'give --{split}_counts or --{split}_fraction, not '
                        'both')
    if fraction is not None and not 0 < fraction < 1:
      raise SourceError(f'{split}_fraction must be between 0 and 1 '
                        f'(exclusive), got {fraction}')
  if (val_fraction or 0) + (test_fraction or 0) >= 1:
    raise SourceError(f'val_fraction {val_fraction} + test_fraction '
                      f'{test_fraction} leave nothing for training; ask for '
                      'less')
  asked = any(v is not None for v in (val_counts, test_counts, val_fraction,
                                      test_fraction))
  if keep_test and (test_counts is not None or test_fraction is not None):
    raise SourceError('--keep_test keeps the test folder as it is: drop '
                      '--test_counts/--test_fraction')
  if resplit:
    for split, counts, fraction in (('val', val_counts, val_fraction),
                                    ('test', test_counts, test_fraction)):
      if counts is None and fraction is None:
        raise SourceError(
            f'a re-split needs {split} counts for every class, e.g. '
            f'--{split}_counts=NORMAL:150,PNEUMONIA:400, or '
            f'--{split}_fraction')
  if keep_test and val_counts is None and val_fraction is None:
    raise SourceError('--keep_test draws val from train: add --val_counts '
                      'or --val_fraction')
  if not resplit and not keep_test and asked:
    raise SourceError('val/test counts and fractions only apply to a '
                      're-split; add --resplit (or --keep_test for val '
                      'alone) or drop them')


def counts_from_fraction(files, class_names, fraction):
  """{class: round(fraction * images of the class in `files`)}."""
  available = collections.Counter(f.class_name for f in files)
  return {c: math.floor(fraction * available[c] + 0.5) for c in class_names}


def plan(src_dir, resplit=False, val_counts=None, test_counts=None,
         seed=0, layout='auto', keep_test=False, val_fraction=None,
         test_fraction=None, patient_id_regex=None, patient_csv=None):
  """Scans `src_dir`, removes duplicates and assigns every file a split.

  Args:
    src_dir: the source folder.
    resplit: pool all images and draw val and test anew (grouped by
      patient); otherwise keep the split folders of the source.
    val_counts, test_counts: {class: images}; only with resplit (val also
      with keep_test).
    seed: seed of the re-split.
    layout: see `scan`.
    keep_test: keep the source's test/ folder as it is and draw val from
      the rest (train/, and val/ if there is one) by patient; images of a
      patient who is also in test/ are left out of train and val (skipped,
      with that reason), so that no patient spans two splits.
    val_fraction, test_fraction: instead of the counts, a fraction of each
      class's images (after removing duplicates) in (0, 1).
    patient_id_regex, patient_csv: the patients of a user's own file names
      (see `assign_patient_ids`); default: parsed from Kermany's names.

  Returns:
    A `Plan`.

  Raises:
    SourceError: see `check_split_arguments`, `scan`, `assign_patient_ids`
      and `draw_splits`; also a pool layout without a re-split (it has no
      splits to keep), and keep_test without a test folder.
  """
  check_split_arguments(resplit, val_counts, test_counts, keep_test,
                        val_fraction, test_fraction)
  if patient_id_regex or patient_csv:
    # Checked before the (long) scan of a large tree.
    if patient_id_regex:
      compile_patient_id_regex(patient_id_regex)
    else:
      read_patient_csv(patient_csv)
  found = scan(src_dir, layout)
  if not resplit and not keep_test and found.layout in ('pool', 'rsna'):
    kind = ('one pool of class folders' if found.layout == 'pool' else
            'an RSNA training set (one pool of images)')
    raise SourceError(
        f'src_dir {src_dir} is {kind} with no split folders; add --resplit '
        'with --val_counts and --test_counts (or the fractions)')
  if found.layout == 'rsna' and (patient_id_regex or patient_csv):
    raise SourceError('RSNA\'s patient ids are its patientIds: drop '
                      '--patient_id_regex/--patient_csv')
  scanned = assign_patient_ids(found.files, patient_id_regex, patient_csv)
  files, duplicates = find_duplicates(
      src_dir, scanned, prefer_evaluation_splits=not resplit)
  skipped = list(found.skipped)
  split_counts = None
  if resplit:
    if val_fraction is not None:
      val_counts = counts_from_fraction(files, found.class_names, val_fraction)
    if test_fraction is not None:
      test_counts = counts_from_fraction(files, found.class_names,
                                         test_fraction)
    splits, split_counts = draw_splits(files, found.class_names, val_counts,
                                       test_counts, seed)
  elif keep_test:
    splits, split_counts, left_out = _keep_test_splits(
        src_dir, found, files, val_counts, val_fraction, seed)
    skipped = sorted(skipped + left_out, key=lambda item: item['path'])
  else:
    splits = {s: [f for f in files if f.source_split == s]
              for s in SPLIT_FOLDERS
              if any(f.source_split == s for f in found.files)}
  return Plan(src_dir, found.layout, found.class_names, splits, duplicates,
              found.ignored, len(found.files) + len(found.skipped),
              split_counts, skipped)


def _keep_test_splits(src_dir, found, files, val_counts, val_fraction, seed):
  """test/ as it is, val drawn by patient from the rest (see `plan`).

  Returns:
    (splits, split_counts, [{'path', 'reason'}] of the files left out).
  """
  if found.layout not in ('kaggle', 'mendeley'):
    raise SourceError(f'src_dir {src_dir} has no test/ folder to keep '
                      f'({found.layout} layout); use --resplit')
  test = [f for f in files if f.source_split == 'test']
  test_patients = {f.patient_id for f in test}
  pool, left_out = [], []
  for f in files:
    if f.source_split == 'test':
      continue
    if f.patient_id in test_patients:
      left_out.append({'path': display_path(f.path), 'reason': (
          'its patient is also in test/, which is kept as it is; left out '
          'so that no patient spans two splits')})
    else:
      pool.append(f)
  if val_fraction is not None:
    val_counts = counts_from_fraction(pool, found.class_names, val_fraction)
  drawn, split_counts = _draw(pool, found.class_names, {'val': val_counts},
                              seed)
  test_counts = collections.Counter(f.class_name for f in test)
  split_counts['actual']['test'] = {c: test_counts[c]
                                    for c in found.class_names}
  splits = {'train': drawn['train'], 'val': drawn['val'],
            'test': sorted(test, key=lambda f: f.path)}
  return splits, split_counts, left_out


def check_out_dir(src_dir, out_dir):
  """Refuses an out_dir inside src_dir (it would be scanned next time) or
  containing it (overwriting would delete the source).

  Raises:
    SourceError: naming the fix.
  """
  src = os.path.realpath(src_dir)
  out = os.path.realpath(out_dir)
  if out == src or out.startswith(src + os.sep):
    raise SourceError(f'out_dir {out_dir} is inside src_dir {src_dir}; write '
                      'the TFRecords somewhere outside the image folders')
  if src.startswith(out + os.sep):
    raise SourceError(f'src_dir {src_dir} is inside out_dir {out_dir}; choose '
                      'an out_dir that does not contain the images')
