"""NIH ChestX-ray14.

Data_Entry_2017*.csv: one row per image; 'Finding Labels' '|'-separated in
NIH's spelling (`LABELS`); 'No Finding' alone: all 14 negative; a finding
not listed is negative (NIH has no uncertain or blank); 'No Finding' with a
finding contradicts itself and is skipped. The images sit under images*/
at any depth (found by file name; further files of the same name are
duplicates of the first, and count as scanned). train_val_list.txt and
test_list.txt are the official split: test_list.txt is test, val is drawn
from train_val_list.txt by patient (`val_fraction`).

Boxes: where BBox_List_2017.csv sits beside the label file, its boxes
(`Image Index, Finding Label, Bbox [x,y,w,h]`: the header's brackets split
into four names, read by position; 'Infiltrate' is NIH's 'Infiltration')
are stored with each image's record, with their label and in the PNG's
pixels (`schema.LABELLED_BOX_KEYS`; the reader ''); every image of such a
dataset carries the keys, empty where it has no box. An unknown finding or
a box that is not four numbers is refused in one line; box rows of an image
no label row names are listed in `Plan.ignored`.

View: 'View Position' as it is. Sex 'F' or 'M', else ''. Age: whole years,
-1 unknown (older files write '058Y'). Privacy: the patient id is stored
hashed, also where it prefixes the file name (`SourceFile.private_parts`).
"""

import collections
import dataclasses
import os

from xray_tfdata.sources import base
from xray_tfdata.sources import splits
from xray_tfdata.sources import tables

SourceError = base.SourceError
LABELS = ('Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltration',
          'Mass', 'Nodule', 'Pneumonia', 'Pneumothorax', 'Consolidation',
          'Edema', 'Emphysema', 'Fibrosis', 'Pleural_Thickening', 'Hernia')
NO_FINDING = 'No Finding'
CSV_PREFIX = 'Data_Entry_2017'
TRAIN_VAL_LIST = 'train_val_list.txt'
TEST_LIST = 'test_list.txt'
COLUMNS = ('Image Index', 'Finding Labels', 'Patient ID', 'Patient Age',
           'Patient Gender', 'View Position')
BOX_CSV = 'BBox_List_2017.csv'
# The box file's names of the box's cells (its header's 'Bbox [x,y,w,h]'
# split at the commas), and its spelling of the findings that differ.
BOX_COLUMNS = ('Image Index', 'Finding Label', 'Bbox [x', 'y', 'w', 'h]')
BOX_SPELLING = {'Infiltrate': 'Infiltration'}


@dataclasses.dataclass
class Options(tables.Options):
  SOURCE = 'nih'


def detect(src_dir):
  """Whether src_dir holds a Data_Entry_2017*.csv."""
  return any(n.startswith(CSV_PREFIX) and n.endswith('.csv')
             for n in os.listdir(src_dir))


def plan(src_dir, options, seed=0, progress=base.NO_PROGRESS):
  """A `base.Plan` of an NIH tree (`tables.plan`)."""
  return tables.plan(src_dir, options, scan, seed, progress, {
      'train': f'{TRAIN_VAL_LIST} names no usable image',
      'test': f'{TEST_LIST} names no usable image'})


def parse_findings(text):
  """NIH's 'Finding Labels' as a code per `LABELS`.

  Returns:
    (codes tuple, None), or (None, reason) for an unknown finding name (a
    name is matched exactly: 'Thickening' is not 'Pleural_Thickening'),
    a blank cell, or 'No Finding' with findings.
  """
  names = [n.strip() for n in (text or '').split('|')]
  if names == [NO_FINDING]:
    return (0,) * len(LABELS), None
  if NO_FINDING in names and len(names) > 1:
    others = ', '.join(repr(n) for n in names if n != NO_FINDING)
    return None, (f'{NO_FINDING!r} together with a finding ({others}): '
                  'the row contradicts itself')
  unknown = [n for n in names if n not in LABELS]
  if unknown:
    return None, ('unknown label value: finding '
                  f'{unknown[0]!r} is not one of NIH\'s 14 (or '
                  f'{NO_FINDING!r})')
  present = set(names)
  return tuple(int(n in present) for n in LABELS), None


def read_boxes(path):
  """BBox_List_2017.csv (or .csv.gz) as {image name: [((x, y, width,
  height), label index into `LABELS`, 'line N')]}, file order.

  Raises:
    SourceError: unreadable, a missing column, an unknown finding, or a
      box that is not four numbers.
  """
  boxes = collections.defaultdict(list)
  name = os.path.basename(path)
  for line, row in tables.read_table(path, BOX_COLUMNS, f'NIH {name}'):
    finding = (row['Finding Label'] or '').strip()
    label = BOX_SPELLING.get(finding, finding)
    if label not in LABELS:
      raise SourceError(f'{name} line {line}: unknown finding {finding!r} '
                        f'(NIH\'s 14, Infiltrate for Infiltration); fix the '
                        'row')
    cells = [(row[k] or '').strip() for k in BOX_COLUMNS[2:]]
    try:
      box = tuple(float(c) for c in cells)
    except ValueError:
      raise SourceError(f'{name} line {line}: box {cells} is not four '
                        'numbers (x, y, w, h); fix the row') from None
    boxes[(row['Image Index'] or '').strip()].append(
        (box, LABELS.index(label), f'line {line}'))
  return boxes


def scan(src_dir, options, split_method, progress=base.NO_PROGRESS):
  """Label rows and image files of an NIH tree (module docstring).

  Returns:
    (rows, found, ignored, csv_names, LABELS): `tables.Row`s, the walk's
    files and ignored entries, and the label CSVs read.
  """
  del options  # the split method is all it needs
  csv_names = sorted(n for n in os.listdir(src_dir)
                     if n.startswith(CSV_PREFIX) and n.endswith('.csv'))
  if not csv_names:
    raise SourceError(f'src_dir {src_dir} has no {CSV_PREFIX}*.csv, '
                      'which the nih layout needs; give the folder that '
                      'holds it')
  roots = sorted(e for e in os.listdir(src_dir) if e.startswith('images') and
                 os.path.isdir(os.path.join(src_dir, e)))
  found, ignored = base.walk(src_dir, roots, progress)
  by_name = collections.defaultdict(list)
  for path in sorted(found):
    by_name[os.path.basename(path)].append(path)
  lists = {}
  if split_method == 'official':
    for name, split in ((TEST_LIST, 'test'),
                        (TRAIN_VAL_LIST, 'train')):
      list_path = os.path.join(src_dir, name)
      if not os.path.isfile(list_path):
        raise SourceError(
            f'src_dir {src_dir} has no {name}, which --split=official '
            'needs; add NIH\'s split lists, or pass --resplit')
      with open(list_path, encoding='utf-8-sig') as f:
        for line in f:
          if line.strip():
            lists.setdefault(line.strip(), set()).add(split)
  box_path = os.path.join(src_dir, BOX_CSV)
  boxes = read_boxes(box_path) if os.path.isfile(box_path) else None
  rows = []
  for csv_name in csv_names:
    for line, row in tables.reported(
        tables.read_table(os.path.join(src_dir, csv_name), COLUMNS,
                          f'NIH {csv_name}'), csv_name, progress):
      where = f'{csv_name} line {line}'
      name = (row['Image Index'] or '').strip()
      paths = by_name.get(name, [])
      path = paths[0] if paths else f'images/{name}'
      entry = tables.Row(where, path if paths else None)
      patient = (row['Patient ID'] or '').strip()
      codes, reason = parse_findings(row['Finding Labels'])
      if not name:
        reason = 'blank Image Index'
      elif not patient:
        reason = 'blank Patient ID'
      reason = tables.truncated(row) or reason
      if patient.isdigit():
        patient = str(int(patient))
      stem = os.path.splitext(name)[0]
      prefix = stem.split('_')[0]
      entry.reason = reason
      entry.patient_id = patient
      entry.labels = codes or ()
      entry.view = (row['View Position'] or '').strip()
      entry.sex = tables.parse_sex(row['Patient Gender'])
      entry.age_years = tables.parse_age(row['Patient Age'])
      entry.private_parts = ((prefix, patient),)
      if split_method == 'official' and not reason:
        named = lists.get(name, set())
        if not named:
          entry.reason = (f'in neither {TRAIN_VAL_LIST} nor '
                          f'{TEST_LIST}')
        else:
          entry.source_split = next(s for s in splits.EVALUATION_FIRST
                                    if s in named)
      entry.missing_name = name
      if boxes is not None:
        marked = boxes.get(name, ())
        entry.boxes = tuple(box for box, _, _ in marked)
        entry.box_labels = tuple(label for _, label, _ in marked)
        entry.box_readers = ('',) * len(marked)
      rows.append(entry)
      # Other files of the same name (an archive unpacked twice) are
      # duplicates of the first.
      for other in paths[1:]:
        rows.append(tables.Row(where, other,
                               reason=f'same file name as {path}'))
  if boxes is not None:
    named = {row.missing_name for row in rows}
    base.report_ids(ignored, sorted(set(boxes) - named),
                    f'{BOX_CSV}: boxes of {{}} image(s) no label row names')
    csv_names = csv_names + [BOX_CSV]
  return rows, found, ignored, csv_names, LABELS


