"""A user's labelled folder: one CSV (`labels_csv`) with a path column
(relative to src_dir), a patient column and the label columns (1, 1.0, 0,
0.0, -1, -1.0 or blank -> -2). No official split: val and test are drawn
by patient (--resplit). The file names are the user's and are stored as
they are; the patient ids are stored hashed.
"""

import dataclasses
import os

from xray_tfdata.sources import base
from xray_tfdata.sources import tables

SourceError = base.SourceError
DEFAULT_PATH_COLUMN = 'path'
DEFAULT_PATIENT_COLUMN = 'patient_id'


@dataclasses.dataclass
class Options(tables.Options):
  """`tables.Options` and the CSV's file and columns.

  Attributes:
    labels_csv: the CSV.
    path_column, patient_column: its image path and patient columns (None:
      'path', 'patient_id').
    label_columns: its label columns, 'A,B,C', in the order to store them.
  """
  SOURCE = 'csv'
  OFFICIAL = False
  labels_csv: str | None = None
  path_column: str | None = None
  patient_column: str | None = None
  label_columns: str | None = None

  def arguments(self):
    return dict(
        super().arguments(), labels_csv=(
            os.path.abspath(self.labels_csv) if self.labels_csv else None),
        path_column=self.path_column or DEFAULT_PATH_COLUMN,
        patient_column=self.patient_column or DEFAULT_PATIENT_COLUMN,
        label_columns=self.label_columns)


def detect(src_dir):
  """Never: a labelled folder is named by --labels_csv."""
  del src_dir
  return False


def plan(src_dir, options, seed=0, progress=base.NO_PROGRESS):
  """A `base.Plan` of a labelled folder (`tables.plan`)."""
  return tables.plan(src_dir, options, scan, seed, progress)


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


def scan(src_dir, options, split_method, progress=base.NO_PROGRESS):
  """Label rows (of `labels_csv`) and image files (all of src_dir) of a
  user's labelled folder: (rows, found, ignored, tables read, label
  names), as `tables.plan` takes."""
  del split_method  # drawn either way
  labels_csv = options.labels_csv
  path_column = options.path_column or DEFAULT_PATH_COLUMN
  patient_column = options.patient_column or DEFAULT_PATIENT_COLUMN
  label_columns = options.label_columns
  if not labels_csv:
    raise SourceError('the csv layout needs --labels_csv (a CSV with a path, '
                      'a patient and label columns)')
  label_columns = parse_label_columns(label_columns)
  table = tables.read_table(
      labels_csv, (path_column, patient_column) + label_columns,
      f'labels CSV (--path_column={path_column}, '
      f'--patient_column={patient_column}, --label_columns)')
  found, ignored = base.walk(src_dir, sorted(
      e for e in os.listdir(src_dir) if not base.is_litter(e) and
      os.path.isdir(os.path.join(src_dir, e))), progress)
  # Files at the top level: images count, the label CSV (and other
  # non-images) are listed as ignored.
  for e in sorted(os.listdir(src_dir)):
    full = os.path.join(src_dir, e)
    if os.path.isdir(full) or base.is_litter(e):
      continue
    if e.lower().endswith(base.IMAGE_EXTENSIONS):
      reason, size = base.check_file(full, e)
      found[e] = (size, reason)
    else:
      ignored.append(base.display_path(e))
  name = os.path.basename(labels_csv)
  rows = []
  for line, row in tables.reported(table, name, progress):
    where = f'{name} line {line}'
    path = tables.safe_relative_path(row[path_column], where, src_dir)
    patient = (row[patient_column] or '').strip()
    codes, reason = tables.codes(row, label_columns)
    if not path:
      reason = f'blank {path_column}'
    elif not patient:
      reason = f'blank {patient_column}'
    reason = tables.truncated(row) or reason
    rows.append(tables.Row(where, path or None, reason, patient_id=patient,
                           labels=codes or ()))
  return rows, found, ignored, [name], label_columns


