"""VinDr-CXR, in either of its two published layouts, every reader kept.

competition (Kaggle's VinBigData challenge): `train.csv` (`image_id,
class_name, class_id, rad_id, x_min, y_min, x_max, y_max`), a row per box a
radiologist drew, or one `No finding` row (class 14, no box) from a
radiologist who marked nothing; DICOMs `train/<image_id>.dicom` and
`test/<image_id>.dicom`. Only train is labelled: the official split has no
test set here (refused in one line; pass --resplit), and test/'s images are
listed as unlabelled.

physionet (VinDr-CXR 1.0.0): `annotations/image_labels_{train,test}.csv`
(`image_id`, `rad_ID` in train (rad_id is read too), then 0/1 per label:
22 local labels, 6 global ones, `No finding`), a row per reader;
`annotations/annotations_
{train,test}.csv` (`image_id`, `rad_id` in train, `x_min, y_min, x_max,
y_max, class_name`). The test split is the readers' consensus, one row per
image without a reader. Read when `annotations/image_labels_train.csv`
exists (it outranks a train.csv beside it). The official split: train and
test as published, val drawn from train by patient.

Per image and label the record stores how many readers marked it
(`schema.MARKED_BY`) and how many read the image (`schema.NUM_READERS`; 1
for the test consensus); its raw code (`schema.LABELS`) is 1 where at least
one reader marked it, else 0. `No finding` is a label like the others. The
reader policy (any, majority, all; `labels.READER_POLICIES`) is chosen when
reading. Every box is kept with its label and reader (`schema.
LABELLED_BOX_KEYS`; reader '' for the consensus), in the DICOM's pixels
(the writer scales them to the stored image); a box outside its image is
refused before anything is written (`base.check_boxes`).

Every CSV row is accounted for: each image's rows make one record (or one
skip, with the reason and its lines), and `Plan.split_info['label_rows']`
counts the rows of each file. An image whose rows contradict each other (a
class id that is not its class name's, a cell that is not a number or 0/1,
a competition reader with both a `No finding` row and a finding's, a
reader's two rows in image_labels) is skipped with the reason. VinDr
publishes no patient id: each image is its own patient (the image id, stored hashed, also in
image/filename). Sex and age come from the DICOM header (PatientSex,
PatientAge such as '045Y', which the release keeps), as SIIM's; a header
that cannot be read leaves them unknown (''/-1) and the decode names the
file. No view is read ('').
"""

import collections
import dataclasses
import os

from xray_tfdata import dicom
from xray_tfdata.sources import base
from xray_tfdata.sources import tables

SourceError = base.SourceError
COMPETITION_CSV = 'train.csv'
COMPETITION_COLUMNS = ('image_id', 'class_name', 'class_id', 'rad_id',
                       'x_min', 'y_min', 'x_max', 'y_max')
# The competition's classes by class_id (the real train.csv's).
COMPETITION_LABELS = (
    'Aortic enlargement', 'Atelectasis', 'Calcification', 'Cardiomegaly',
    'Consolidation', 'ILD', 'Infiltration', 'Lung Opacity', 'Nodule/Mass',
    'Other lesion', 'Pleural effusion', 'Pleural thickening', 'Pneumothorax',
    'Pulmonary fibrosis', 'No finding')
NO_FINDING = 'No finding'
ANNOTATIONS = 'annotations'
IMAGE_LABELS = 'annotations/image_labels_{}.csv'
BOXES = 'annotations/annotations_{}.csv'
BOX_COLUMNS = ('x_min', 'y_min', 'x_max', 'y_max')
EXTENSIONS = ('.dicom', '.dcm')
CONSENSUS = ''  # the reader of the test split's consensus


@dataclasses.dataclass
class Options(tables.Options):
  SOURCE = 'vindr'


def release(src_dir):
  """'physionet', 'competition' or None: which layout src_dir holds."""
  if os.path.isfile(os.path.join(src_dir, IMAGE_LABELS.format('train'))):
    return 'physionet'
  header = tables.read_header(os.path.join(src_dir, COMPETITION_CSV))
  if {'image_id', 'rad_id', 'class_name'} <= set(header):
    return 'competition'
  return None


def detect(src_dir):
  """Whether src_dir holds VinDr-CXR's label files (either layout)."""
  return release(src_dir) is not None


def plan(src_dir, options, seed=0, progress=base.NO_PROGRESS):
  """A `base.Plan` of a VinDr-CXR tree (`tables.plan`), with
  split_info['label_rows'] = {file: rows read}."""
  label_rows = {}
  scan_counting = lambda *args: _scan(*args, label_rows=label_rows)
  planned = tables.plan(src_dir, options, scan_counting, seed, progress, {
      'train': 'no usable labelled image in train/',
      'test': ('no usable labelled image in test/ (the competition layout '
               'labels train only)')})
  planned.split_info['label_rows'] = label_rows
  return planned


class _Image:
  """One image's reads, gathered from its rows."""

  def __init__(self, split):
    self.split = split
    self.lines = []
    self.reads = {}  # reader -> set of labels marked
    self.boxes = []  # (x, y, width, height), label, reader
    self.reason = None

  def fail(self, reason):
    self.reason = self.reason or reason


def _box(row, where):
  """(x, y, width, height) of a row's x_min..y_max, None when all four are
  blank; (None, reason) kept as a string when not numbers."""
  cells = [(row.get(k) or '').strip() for k in BOX_COLUMNS]
  if not any(cells):
    return None
  try:
    x_min, y_min, x_max, y_max = (float(c) for c in cells)
  except ValueError:
    return f'{where}: box {cells} is not four numbers'
  return (x_min, y_min, x_max - x_min, y_max - y_min)


def scan(src_dir, options, split_method, progress=base.NO_PROGRESS):
  """Label rows and image files of a VinDr-CXR tree (module docstring):
  (rows, found, ignored, tables read, label names), as `tables.plan`
  takes; one `tables.Row` per image."""
  return _scan(src_dir, options, split_method, progress, {})


def _scan(src_dir, options, split_method, progress, label_rows):
  del options, split_method  # every label file is read either way
  layout = release(src_dir)
  if layout is None:
    raise SourceError(
        f'src_dir {src_dir} has neither {COMPETITION_CSV} (with image_id, '
        f'rad_id, class_name) nor {IMAGE_LABELS.format("train")}, which the '
        'vindr layout needs; give the folder that holds them')
  images = {}
  ignored = []
  if layout == 'competition':
    label_names = COMPETITION_LABELS
    read = [COMPETITION_CSV]
    _read_competition(src_dir, images, label_rows, progress)
  else:
    label_names = None
    read = []
    for split in ('train', 'test'):
      names = _read_physionet_labels(src_dir, split, images, label_rows,
                                     progress)
      if label_names is None:
        label_names = names
      elif set(names) != set(label_names):
        raise SourceError(
            f'{IMAGE_LABELS.format(split)} has other label columns than '
            f'{IMAGE_LABELS.format("train")} '
            f'({sorted(set(names) ^ set(label_names))}); give the two files '
            'of one release')
      read.append(IMAGE_LABELS.format(split))
      if os.path.isfile(os.path.join(src_dir, BOXES.format(split))):
        _read_physionet_boxes(src_dir, split, images, label_names, label_rows,
                              ignored, progress)
        read.append(BOXES.format(split))
  found, walked_ignored = base.walk(src_dir, ('train', 'test'), progress)
  ignored += walked_ignored
  by_stem = {}
  for path in found:
    stem, extension = os.path.splitext(path)
    if extension.lower() in EXTENSIONS:
      by_stem.setdefault(stem, path)
  rows = []
  for image_id, image in sorted(images.items(),
                                key=lambda item: (item[1].split, item[0])):
    path = by_stem.get(f'{image.split}/{image_id}')
    where = _lines(image.lines)
    row = tables.Row(where, path, source_split=image.split,
                     missing_name=f'{image.split}/{image_id}.dicom')
    if path is None:
      row.reason = 'missing image'
    else:
      row.sex, row.age_years = _sex_and_age(os.path.join(src_dir, path))
    row.reason = image.reason or row.reason
    row.patient_id = image_id
    row.private_parts = ((image_id, image_id),)
    marked_by = tuple(sum(label in marks for marks in image.reads.values())
                      for label in label_names)
    row.marked_by = marked_by
    row.num_readers = len(image.reads)
    row.labels = tuple(int(k > 0) for k in marked_by)
    row.boxes = tuple(box for box, _, _ in image.boxes)
    row.box_labels = tuple(label_names.index(label)
                           for _, label, _ in image.boxes)
    row.box_readers = tuple(reader for _, _, reader in image.boxes)
    rows.append(row)
  return rows, found, ignored, read, tuple(label_names)


def _sex_and_age(full_path):
  """(sex 'M'/'F'/'', age in years or -1) from a DICOM's header."""
  try:
    header = dicom.read_header(full_path)
  except dicom.DicomError:
    raise  # pydicom missing: one line for the whole conversion
  except Exception:  # pylint: disable=broad-except  (the decode names it)
    return '', -1
  return tables.header_sex_and_age(header)


def _lines(lines):
  """'train.csv lines 2, 3, 9' from [(file, line)] (one file's run per
  file, in order)."""
  by_file = collections.defaultdict(list)
  for name, line in lines:
    by_file[name].append(str(line))
  return '; '.join(f'{name} line{"s" if len(numbers) > 1 else ""} '
                   f'{", ".join(numbers)}'
                   for name, numbers in by_file.items())


def _read_competition(src_dir, images, label_rows, progress):
  table = tables.read_table(os.path.join(src_dir, COMPETITION_CSV),
                            COMPETITION_COLUMNS, 'VinDr-CXR train.csv')
  label_rows[COMPETITION_CSV] = len(table)
  for line, row in tables.reported(table, COMPETITION_CSV, progress):
    where = f'{COMPETITION_CSV} line {line}'
    image_id = (row['image_id'] or '').strip()
    image = images.setdefault(image_id, _Image('train'))
    image.lines.append((COMPETITION_CSV, line))
    if not image_id:
      image.fail(f'{where}: blank image_id')
      continue
    reason = tables.truncated(row)
    if reason:
      image.fail(f'{where}: {reason}')
      continue
    label = (row['class_name'] or '').strip()
    class_id = (row['class_id'] or '').strip()
    reader = (row['rad_id'] or '').strip()
    if label not in COMPETITION_LABELS:
      image.fail(f'{where}: unknown label value: class_name {label!r} is '
                 "not one of VinDr-CXR's 15")
      continue
    if class_id != str(COMPETITION_LABELS.index(label)):
      image.fail(f'{where}: class_id {class_id!r} is not the id of '
                 f'{label!r} ({COMPETITION_LABELS.index(label)})')
      continue
    if not reader:
      image.fail(f'{where}: blank rad_id')
      continue
    _mark(image, where, reader, label, _box(row, where))


def _mark(image, where, reader, label, box, exclusive=True):
  """Records one reader's mark (and box) on an image; `exclusive`: a
  `No finding` beside a finding contradicts (the competition's rows, where
  `No finding` is the row of a reader who marked nothing; PhysioNet's
  columns also hold global labels, which it does not exclude)."""
  if isinstance(box, str):
    image.fail(box)
    return
  marks = image.reads.setdefault(reader, set())
  marks.add(label)
  if exclusive and NO_FINDING in marks and len(marks) > 1:
    image.fail(f'{where}: reader {reader or "(consensus)"} marked '
               f'{NO_FINDING!r} and a finding: the rows contradict each '
               'other')
  if box is not None:
    if label == NO_FINDING:
      image.fail(f'{where}: a {NO_FINDING!r} row with a box')
      return
    image.boxes.append((box, label, reader))


def _read_physionet_labels(src_dir, split, images, label_rows, progress):
  """Reads image_labels_<split>.csv into `images`; returns its label names
  in the file's order."""
  name = IMAGE_LABELS.format(split)
  path = os.path.join(src_dir, name)
  header = [h for h in tables.read_header(path)]
  reader_column = _reader_column(header, split, 'rad_ID')
  table = tables.read_table(path, ('image_id', NO_FINDING) + (
      (reader_column,) if reader_column else ()), f'VinDr-CXR {name}')
  label_names = tuple(h for h in header
                      if h != 'image_id' and h.lower() != 'rad_id')
  label_rows[name] = len(table)
  for line, row in tables.reported(table, name, progress):
    where = f'{name} line {line}'
    image_id = (row['image_id'] or '').strip()
    image = images.setdefault(image_id, _Image(split))
    image.lines.append((name, line))
    if image.split != split:
      image.fail(f'{where}: image {image_id} is labelled in both train and '
                 'test')
      continue
    if not image_id:
      image.fail(f'{where}: blank image_id')
      continue
    reason = tables.truncated(row)
    if reason:
      image.fail(f'{where}: {reason}')
      continue
    reader = (row[reader_column] or '').strip() if reader_column else CONSENSUS
    if reader_column and not reader:
      image.fail(f'{where}: blank {reader_column}')
      continue
    if reader in image.reads:
      image.fail(f'{where}: a second row of reader '
                 f'{reader or "(consensus)"} for this image')
      continue
    image.reads[reader] = set()
    for label in label_names:
      value = (row[label] or '').strip()
      if value in ('1', '1.0'):
        _mark(image, where, reader, label, None, exclusive=False)
      elif value not in ('0', '0.0'):
        image.fail(f'{where}: unknown label value {value!r} in column '
                   f'{label!r} (allowed: 0 or 1)')
  return label_names


def _reader_column(header, split, spelling):
  """The train file's reader column as its header spells it (the release's
  documentation writes rad_ID in image_labels and rad_id in annotations;
  either is read in either file), `spelling` where it has none (then
  refused as missing); None for test, the consensus."""
  if split != 'train':
    return None
  return next((h for h in header if h.lower() == 'rad_id'), spelling)


def _read_physionet_boxes(src_dir, split, images, label_names, label_rows,
                          ignored, progress):
  """Adds annotations_<split>.csv's boxes to the images of `images`; box
  rows of an image image_labels does not name are listed in `ignored`."""
  name = BOXES.format(split)
  reader_column = _reader_column(
      tables.read_header(os.path.join(src_dir, name)), split, 'rad_id')
  table = tables.read_table(
      os.path.join(src_dir, name), ('image_id', 'class_name') + BOX_COLUMNS
      + ((reader_column,) if reader_column else ()), f'VinDr-CXR {name}')
  label_rows[name] = len(table)
  orphans = []
  for line, row in tables.reported(table, name, progress):
    where = f'{name} line {line}'
    image_id = (row['image_id'] or '').strip()
    image = images.get(image_id)
    if image is None or image.split != split:
      orphans.append(f'{image_id or "(blank)"} (line {line})')
      continue
    image.lines.append((name, line))
    reason = tables.truncated(row)
    if reason:
      image.fail(f'{where}: {reason}')
      continue
    label = (row['class_name'] or '').strip()
    if label not in label_names:
      image.fail(f'{where}: unknown label value: class_name {label!r} is not '
                 f'a column of {IMAGE_LABELS.format(split)}')
      continue
    reader = (row[reader_column] or '').strip() if reader_column else CONSENSUS
    box = _box(row, where)
    if isinstance(box, str):
      image.fail(box)
    elif box is not None:
      if label == NO_FINDING:
        image.fail(f'{where}: a {NO_FINDING!r} row with a box')
      else:
        image.boxes.append((box, label, reader))
  base.report_ids(ignored, orphans,
                  f'{name}: {{}} box row(s) of an image '
                  f'{IMAGE_LABELS.format(split)} does not name')
