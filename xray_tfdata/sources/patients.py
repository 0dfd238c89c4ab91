"""Patient ids: parsed from Kermany's file names, from a DICOM header, or
given by the user (a regular expression or a patient CSV).

No TensorFlow here; this runs before the writer imports it.
"""

import dataclasses
import os
import re

from xray_tfdata import dicom
from xray_tfdata.sources import base
from xray_tfdata.sources import tables

SourceError = base.SourceError
_PERSON_RE = re.compile(r'^person(\d+)_')
_IM_RE = re.compile(r'^(?:NORMAL2-)?IM-(\d+)-')


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
  rows = tables.read_table(csv_path, ('path', 'patient_id'), 'patient CSV',
                           fix='fix --patient_csv')
  if not rows:
    raise SourceError(f'patient CSV {csv_path} has no rows; give a header '
                      'path,patient_id and one row per image')
  patients = {}
  for line, row in rows:
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
    raise SourceError(f'{source} {verb} {base.display_path(missing[0])}{more}; '
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
