"""MIMIC-CXR-JPG.

mimic-cxr-2.0.0-chexpert.csv.gz: labels per study (CheXpert's 14 labels
and codes); -metadata.csv.gz: one row per image (dicom_id, subject_id,
study_id, ViewPosition); -split.csv.gz: the official split (train,
validate -> val, test); the images at
files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg.

A study's repeated label row counts once, two that disagree are both
unused (the study's images skipped); an image's two split rows give it the
evaluation split among them; both are listed in `Plan.ignored`.
`Plan.num_scanned` counts the metadata rows (one per image). View:
ViewPosition as it is (MIMIC's CSVs have no sex or age). Privacy: the
subject and study ids are stored hashed, also as the path's folders and
the dicom_id; the p{NN} bucket folder is dropped.
"""

import collections
import dataclasses
import os

from xray_tfdata.sources import base
from xray_tfdata.sources import chexpert
from xray_tfdata.sources import splits
from xray_tfdata.sources import tables

PREFIX = 'mimic-cxr-2.0.0-'
LABELS_FILE = 'mimic-cxr-2.0.0-chexpert.csv.gz'
METADATA_FILE = 'mimic-cxr-2.0.0-metadata.csv.gz'
SPLIT_FILE = 'mimic-cxr-2.0.0-split.csv.gz'
IMAGES = 'files'
SPLITS = {'train': 'train', 'validate': 'val', 'test': 'test'}
LABELS = chexpert.LABELS


@dataclasses.dataclass
class Options(tables.Options):
  SOURCE = 'mimic'
  OFFICIAL_VAL = True


def detect(src_dir):
  """Whether src_dir holds mimic-cxr-2.0.0-*.csv.gz files."""
  return any(n.startswith(PREFIX) and n.endswith('.csv.gz')
             for n in os.listdir(src_dir))


def plan(src_dir, options, seed=0, progress=base.NO_PROGRESS):
  """A `base.Plan` of a MIMIC-CXR-JPG tree (`tables.plan`)."""
  return tables.plan(src_dir, options, scan, seed, progress, {
      'train': f'{SPLIT_FILE} names no usable train image',
      'test': f'{SPLIT_FILE} names no usable test image'})


def scan(src_dir, options, split_method, progress=base.NO_PROGRESS):
  """Image rows (the metadata file's) and files of a MIMIC-CXR-JPG tree:
  (rows, found, ignored, tables read, LABELS), as `tables.plan` takes.

  A metadata row whose study has no label row is skipped with that reason;
  label rows without an image are listed in `ignored`. A study with two
  label rows: rows with the same codes count once; rows that disagree are
  both unused and the study's images skipped with that reason (never a
  guess which is right). An image with two split rows: rows that name two
  splits give it the evaluation split among them (test before validate
  before train, as NIH's image in both lists). Both are listed in `ignored`.
  A row with fewer cells than its header skips the images it concerns.
  """
  del options  # the split method is all it needs
  label_rows = collections.defaultdict(list)
  for line, row in tables.reported(tables.read_table(
      os.path.join(src_dir, LABELS_FILE),
      ('subject_id', 'study_id') + LABELS, 'MIMIC-CXR label file'),
                             LABELS_FILE, progress):
    key = ((row['subject_id'] or '').strip(), (row['study_id'] or '').strip())
    short = tables.truncated(row)
    label_rows[key].append(
        (line, (None, short) if short else tables.codes(row, LABELS)))
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
    for line, row in tables.reported(tables.read_table(
        os.path.join(src_dir, SPLIT_FILE),
        ('dicom_id', 'study_id', 'subject_id', 'split'),
        'MIMIC-CXR split file (--split=official; or pass --resplit)'),
                               SPLIT_FILE, progress):
      short = tables.truncated(row)
      split_rows[(row['dicom_id'] or '').strip()].append(
          (line, None if short else (row['split'] or '').strip(), short))
  found, ignored = base.walk(src_dir, (IMAGES,), progress)
  rows, used = [], set()
  for line, row in tables.reported(tables.read_table(
      os.path.join(src_dir, METADATA_FILE),
      ('dicom_id', 'subject_id', 'study_id', 'ViewPosition'),
      'MIMIC-CXR metadata file'), METADATA_FILE, progress):
    where = f'{METADATA_FILE} line {line}'
    dicom_id = (row['dicom_id'] or '').strip()
    subject = (row['subject_id'] or '').strip()
    study = (row['study_id'] or '').strip()
    path = (f'{IMAGES}/p{subject[:2]}/p{subject}/s{study}/'
            f'{dicom_id}.jpg')
    entry = tables.Row(where, path, patient_id=subject, study_id=study,
                 view=(row['ViewPosition'] or '').strip(),
                 private_parts=((f'p{subject[:2]}', None),
                                (f'p{subject}', subject),
                                (f's{study}', study), (dicom_id, dicom_id)))
    label = labels.get((subject, study))
    short = tables.truncated(row)
    if short:
      entry.reason = f'{where}: {short}'
    elif not dicom_id or not subject or not study:
      entry.reason = 'blank dicom_id, subject_id or study_id'
    elif label is None:
      entry.reason = (f'no label row for its study (subject {subject}, study '
                      f'{study}) in {LABELS_FILE}')
    else:
      used.add((subject, study))
      codes, reason = label[1]
      entry.labels, entry.reason = codes or (), reason
      if reason:
        entry.reason = f'{LABELS_FILE} {label[0]}: {reason}'
    if split_method == 'official' and not entry.reason:
      entry.source_split, entry.reason = _split_of(
          split_rows.get(dicom_id, []))
    rows.append(entry)
  base.report_ids(
      ignored, sorted(f'{s}/{t}' for s, t in set(labels) - used),
      f'{LABELS_FILE}: {{}} label row(s) whose study has no image in '
      f'{METADATA_FILE}')
  base.report_ids(
      ignored, sorted(conflicts),
      f'{LABELS_FILE}: {{}} study(ies) with more than one label row '
      '(rows with the same codes count once; rows that disagree are both '
      'unused, their images skipped)')
  repeated = sorted(d for d, r in split_rows.items() if len(r) > 1)
  two_splits = sum(len({split for _, split, _ in split_rows[d]}) > 1
                   for d in repeated)
  base.report_ids(
      ignored, repeated,
      f'{SPLIT_FILE}: {{}} image(s) with more than one row ('
      f'{two_splits} of them in two splits: each gets the evaluation split '
      'among them, test before validate before train)')
  return rows, found, ignored, [METADATA_FILE], LABELS


def _split_of(split_rows):
  """(split, None) of an image from its rows of MIMIC's split file, or
  (None, reason) (`scan_mimic`)."""
  if not split_rows:
    return None, f'no row in {SPLIT_FILE}'
  for line, split, short in split_rows:
    if short:
      return None, f'{SPLIT_FILE} line {line}: {short}'
    if split not in SPLITS:
      return None, (f'split {split!r} in {SPLIT_FILE} is not one of '
                    f'{", ".join(SPLITS)}')
  named = {SPLITS[split] for _, split, _ in split_rows}
  return next(s for s in splits.EVALUATION_FIRST if s in named), None


