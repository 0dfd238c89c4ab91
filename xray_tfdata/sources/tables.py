"""Label tables: the one CSV reader of every source, the parsing of label
cells, and the planning shared by the sources whose labels come in tables
(NIH, CheXpert, MIMIC, a labels CSV).

A labelled source's scan turns its tables into `Row`s, one per label row
(or per image, MIMIC), each naming its image or why it cannot be used;
`plan` turns them into files, each carrying the raw code of every label
(`schema.LABEL_CODES`: 1 positive, 0 negative, -1 uncertain, -2 not
mentioned), and accounts for every row: written, skipped with a reason
(missing image, unreadable, unknown label value, outside the official split
lists, no label row for its study), or a duplicate (a second row for the
same image, or an image byte-identical to another:
`duplicates.find_duplicates`); every file under the image folders that no
row names is listed in `Plan.unlabelled` with the reason 'no label row'.
`Plan.num_scanned` counts the rows, so that scanned = written + skipped +
duplicates. An unknown label value skips its row and is never fatal;
labels are parsed exactly, never by substring. A row with fewer cells than
its header (a file cut short) is skipped with that reason: its missing
labels are never read as 'not mentioned'. Label files may start with a
UTF-8 byte-order mark (.gz too).

Splits (`plan`):
  official  the source's published split (`Options.OFFICIAL`); val drawn
            by patient from its training part (`val_fraction`) unless the
            source has its own val (`Options.OFFICIAL_VAL`). A patient the
            official split puts in two splits is moved, all images, to the
            evaluation split among them (test before val before train), and
            the move is counted in `Plan.split_info['source_overlap']`: the
            evaluation sets stay whole, and no patient crosses splits.
  resplit   patient-grouped val and test (`val_fraction`, `test_fraction`)
            by `splits.draw_splits`.
After planning the patients in more than one split are counted; it must
be 0 (`Plan.split_info['patient_overlap']`). An official split whose train
or test set is empty is refused. A drawn split's images, requested and
actual, are `Plan.split_info['images']`; on a small set, where patients are
taken whole, one far from its fraction is flagged (`splits.far_off_splits`)
and the converter's summary warns.

Pure Python and numpy; no TensorFlow (this runs before the writer imports it).
"""

import collections
import csv
import dataclasses
import gzip
import io
import os

from xray_tfdata.sources import base
from xray_tfdata.sources import duplicates as duplicates_lib
from xray_tfdata.sources import splits as splits_lib

SourceError = base.SourceError
# Raw code of each accepted label value (after stripping blanks).
_CODES = {'1': 1, '1.0': 1, '0': 0, '0.0': 0, '-1': -1, '-1.0': -1, '': -2}
_SEX = {'F': 'F', 'M': 'M', 'FEMALE': 'F', 'MALE': 'M'}
_UNLABELLED = 'no label row'


@dataclasses.dataclass
class Options:
  """How a labelled source is split (its flags; `check` before scanning).

  Attributes:
    layout: --layout as given ('auto' or the source's name), recorded.
    split: 'official' or 'resplit' (None: official where the source
      publishes one).
    resplit: the same as split='resplit'.
    val_fraction, test_fraction: see `splits.check_fractions`.
  Class attributes, set by each source:
    SOURCE: the source's layout name.
    OFFICIAL: whether the source publishes a split.
    OFFICIAL_VAL: whether that split has its own val.
    REQUIRED_SPLITS: the official splits that must not be empty (Google's
      NIH labels publish val and test only).
  """
  SOURCE = ''
  OFFICIAL = True
  OFFICIAL_VAL = False
  REQUIRED_SPLITS = ('train', 'test')
  layout: str = 'auto'
  split: str | None = None
  resplit: bool = False
  val_fraction: float | None = None
  test_fraction: float | None = None

  @property
  def split_method(self):
    return 'resplit' if self.resplit else (self.split or 'official')

  def check(self):
    """The (val, test) fractions to use.

    Raises:
      SourceError: --resplit with --split=official, or see
        `splits.check_fractions`.
    """
    if self.resplit and self.split == 'official':
      raise SourceError('--resplit and --split=official contradict each '
                        'other; give one')
    return splits_lib.check_fractions(
        self.SOURCE, self.split_method, self.val_fraction, self.test_fraction,
        self.OFFICIAL, self.OFFICIAL_VAL)

  def arguments(self):
    """The options as xray_info.json records them."""
    return {'resplit': self.resplit, 'val_fraction': self.val_fraction,
            'test_fraction': self.test_fraction, 'layout': self.layout,
            'split': self.split_method, 'labels_csv': None,
            'path_column': 'path', 'patient_column': 'patient_id',
            'label_columns': None}


@dataclasses.dataclass
class Row:
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
  label_method: str | None = None  # base.SourceFile's
  stored_depth: tuple | None = None  # base.SourceFile's
  # Boxes and readers (`base.SourceFile`), where the source has them.
  boxes: tuple | None = None
  box_labels: tuple | None = None
  box_readers: tuple | None = None
  num_readers: int | None = None
  marked_by: tuple | None = None
  mask_rle: tuple | None = None  # `base.SourceFile.mask_rle`


def _open_text(path):
  # utf-8-sig: a byte-order mark (Excel writes one) would otherwise become
  # part of the first column's name, or of a list's first entry.
  if path.endswith('.gz'):
    return io.TextIOWrapper(gzip.open(path, 'rb'), encoding='utf-8-sig',
                            newline='')
  return open(path, newline='', encoding='utf-8-sig')


def read_table(path, columns, what, fix='give --layout, or fix --src_dir'):
  """The rows of a CSV (or .csv.gz) with a header, as (line, row dict).

  Every source reads its tables here: a byte-order mark is dropped, the
  header's names are stripped, and a missing column is named.

  Args:
    path: the file.
    columns: the columns it must have.
    what: what the file is, for messages ('NIH Data_Entry_2017.csv').
    fix: what to do when the file is missing, for messages.

  Raises:
    SourceError: missing, unreadable, or without one of `columns` (named,
      with the columns it has).
  """
  if not os.path.isfile(path):
    raise SourceError(f'{path} not found; the {what} is needed ({fix})')
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


def read_header(path):
  """The column names of a CSV's header, stripped; [] if it cannot be read
  (for detecting a layout without reading the whole file)."""
  try:
    with _open_text(path) as f:
      return [h.strip() for h in next(csv.reader(f), [])]
  except (OSError, UnicodeDecodeError, csv.Error, EOFError,
          gzip.BadGzipFile):
    return []


def reported(table, name, progress):
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


def header_sex_and_age(header):
  """(sex, age in whole years) from a DICOM header's PatientSex and
  PatientAge ('045Y'), as `parse_sex` and `parse_age` read them."""
  return (parse_sex(str(header.get('PatientSex', '') or '')),
          parse_age(str(header.get('PatientAge', '') or '')))


def codes(row, label_columns):
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


def files_from_rows(src_dir, rows, found):
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
    path = base.display_path(row.path)
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
    files.append(base.SourceFile(
        row.path, row.source_split, '', -1, row.patient_id, size,
        labels=tuple(row.labels), view=row.view, sex=row.sex,
        age_years=row.age_years, study_id=row.study_id, hash_ids=True,
        private_parts=row.private_parts, label_method=row.label_method,
        stored_depth=row.stored_depth, boxes=row.boxes,
        box_labels=row.box_labels, box_readers=row.box_readers,
        num_readers=row.num_readers, marked_by=row.marked_by,
        mask_rle=row.mask_rle))
  named = {row.path for row in rows if row.path is not None}
  unlabelled = [{'path': base.display_path(p),
                 'reason': reason or _UNLABELLED}
                for p, (_, reason) in sorted(found.items()) if p not in named]
  return files, skipped, duplicates, unlabelled




def plan(src_dir, options, scan, seed=0, progress=base.NO_PROGRESS,
         empty_split=None):
  """Scans a labelled source and assigns every usable image a split.

  Args:
    src_dir: the source folder.
    options: the source's `Options` (checked here, before the scan).
    scan: the source's scan, (src_dir, options, split_method, progress) ->
      (rows, found, ignored, tables read, label names).
    seed: seed of the drawn splits.
    progress: a `base.Progress`: lines while scanning, reading the label
      rows, hashing for duplicates and drawing splits (minutes at NIH's or
      CheXpert's size).
    empty_split: {'train': why, 'test': why}: what an empty official split
      means in the source's files, for the message.

  Returns:
    A `base.Plan` with label_names, unlabelled and split_info ({'method',
    'val_fraction', 'test_fraction', 'source_overlap', 'patient_overlap'}).

  Raises:
    SourceError: a missing file or column, a path outside src_dir, bad
      split arguments, no usable image, an empty official split, or (a
      bug) a patient in two splits.
  """
  val_fraction, test_fraction = options.check()
  split_method = options.split_method
  layout = options.SOURCE
  if not os.path.isdir(src_dir):
    raise SourceError(f'src_dir {src_dir} does not exist or is not a folder; '
                      f'pass the folder that holds the {layout} label files')
  rows, found, ignored, read, label_names = scan(src_dir, options,
                                                 split_method, progress)
  files, skipped, row_duplicates, unlabelled = files_from_rows(
      src_dir, rows, found)
  if not files:
    reasons = collections.Counter(s['reason'].split(':')[0] for s in skipped)
    why = ', '.join(f'{n} {r}' for r, n in reasons.most_common(3))
    raise SourceError(
        f'no usable image in {src_dir}: {len(rows)} label row(s) in '
        f'{", ".join(read)}' + (f' ({why})' if why else '') +
        '; check --src_dir and that the images sit where the label files '
        'say')
  # Before anything is written: a box outside its image is bad input.
  base.check_boxes(src_dir, files, label_names, progress)
  files, byte_duplicates = duplicates_lib.find_duplicates(
      src_dir, files, prefer_evaluation_splits=split_method == 'official',
      progress=progress)
  info = {'method': split_method, 'val_fraction': val_fraction,
          'test_fraction': test_fraction}
  num_labels = len(label_names)
  if split_method == 'official':
    files, info['source_overlap'] = splits_lib.resolve_source_overlap(files)
    by_split = collections.defaultdict(list)
    for f in files:
      by_split[f.source_split].append(f)
    for split in options.REQUIRED_SPLITS:
      if not by_split[split]:
        raise SourceError(
            f'the official {split} split is empty: {empty_split[split]}; fix '
            f'that file, or pass --resplit to draw {split} by patient')
    if options.OFFICIAL_VAL:
      splits = {s: sorted(by_split[s], key=lambda f: f.path)
                for s in base.SPLIT_FOLDERS if by_split[s]}
    else:
      fractions = {'val': val_fraction}
      drawn, _ = splits_lib.draw_splits(by_split['train'], fractions, seed,
                                        num_labels=num_labels,
                                        progress=progress)
      splits = {'train': drawn['train'], 'val': drawn['val'],
                'test': sorted(by_split['test'], key=lambda f: f.path)}
      info['images'] = splits_lib.requested_images(
          fractions, len(by_split['train']), splits)
  else:
    fractions = {'val': val_fraction, 'test': test_fraction}
    splits, _ = splits_lib.draw_splits(files, fractions, seed,
                                       num_labels=num_labels,
                                       progress=progress)
    splits = {s: splits[s] for s in base.SPLIT_FOLDERS}
    info['images'] = splits_lib.requested_images(fractions, len(files),
                                                 splits)
  overlap = splits_lib.check_patient_overlap(splits)
  if overlap['patients_in_more_than_one_split']:
    raise SourceError(
        f'{overlap["patients_in_more_than_one_split"]} patient(s) would be in '
        'two splits; this is a bug of the split planning: please report it')
  info['patient_overlap'] = overlap
  duplicates = sorted(row_duplicates + byte_duplicates,
                      key=lambda d: str(d['dropped']))
  skipped.sort(key=lambda s: (s['path'], s.get('row', '')))
  return base.Plan(
      src_dir, layout, tuple(label_names), splits, duplicates,
      sorted(ignored), len(rows), None, skipped, label_names=tuple(label_names),
      unlabelled=unlabelled, split_info=info)
