"""CheXpert v1.0 and v1.0-small.

train.csv and valid.csv with 'Path', 'Sex', 'Age', 'Frontal/Lateral',
'AP/PA' and the 14 `LABELS` (1.0, 0.0, -1.0, blank -> -2). src_dir is the
folder holding train.csv; a Path's first segment (that folder's own name,
'CheXpert-v1.0-small/...') is dropped. The patient is the 'patientNNNNN'
segment, the study 'patientNNNNN/studyN'. The official split: valid.csv
(the radiologists' labels) is test, val is drawn from train.csv by patient.

View: a frontal image's 'AP/PA' value as the source spells it ('AP', 'PA',
and the few 'LL'/'RL' it has); a lateral image's 'AP/PA' value where it has
one, else 'LATERAL' (CheXpert leaves AP/PA blank for laterals). Sex: 'F' or
'M' ('Female'/'Male'), else ''. Age: whole years, -1 unknown. Privacy: the
patient and study ids are stored hashed, also as the path's folders.
"""

import dataclasses
import os

from xray_tfdata.sources import base
from xray_tfdata.sources import tables

# CheXpert's column order, also MIMIC's (whose file is alphabetical), so
# that the two sets' records list the labels alike.
LABELS = ('No Finding', 'Enlarged Cardiomediastinum', 'Cardiomegaly',
          'Lung Opacity', 'Lung Lesion', 'Edema', 'Consolidation',
          'Pneumonia', 'Atelectasis', 'Pneumothorax', 'Pleural Effusion',
          'Pleural Other', 'Fracture', 'Support Devices')
TRAIN = 'train.csv'
VALID = 'valid.csv'
COLUMNS = ('Path', 'Sex', 'Age', 'Frontal/Lateral', 'AP/PA')


@dataclasses.dataclass
class Options(tables.Options):
  SOURCE = 'chexpert'


def detect(src_dir):
  """Whether src_dir holds train.csv and valid.csv, train.csv's header
  with a Path column."""
  return ({TRAIN, VALID} <= set(os.listdir(src_dir)) and
          'Path' in tables.read_header(os.path.join(src_dir, TRAIN)))


def plan(src_dir, options, seed=0, progress=base.NO_PROGRESS):
  """A `base.Plan` of a CheXpert tree (`tables.plan`)."""
  return tables.plan(src_dir, options, scan, seed, progress, {
      'train': f'{TRAIN} has no usable row',
      'test': f'{VALID} has no usable row'})


def _relative_path(path, where, src_dir):
  """A CheXpert Path relative to src_dir: its first segment (the name of
  the folder holding train.csv) dropped, unless it is already train/ or
  valid/."""
  relative = tables.safe_relative_path(path, where, src_dir)
  parts = relative.split('/')
  if parts[0] not in ('train', 'valid') and len(parts) > 1:
    parts = parts[1:]
  return '/'.join(parts)


def scan(src_dir, options, split_method, progress=base.NO_PROGRESS):
  """Label rows and image files of a CheXpert tree (module docstring):
  (rows, found, ignored, tables read, LABELS), as `tables.plan` takes."""
  del options, split_method  # both CSVs are read either way
  found, ignored = base.walk(src_dir, ('train', 'valid'), progress)
  rows = []
  for csv_name, split in ((TRAIN, 'train'), (VALID, 'test')):
    for line, row in tables.reported(
        tables.read_table(os.path.join(src_dir, csv_name),
                          COLUMNS + LABELS, f'CheXpert {csv_name}'),
        csv_name, progress):
      where = f'{csv_name} line {line}'
      path = _relative_path(row['Path'], where, src_dir)
      entry = tables.Row(where, path, source_split=split)
      segments = path.split('/')
      patient = next((s for s in segments if s.startswith('patient')), '')
      study = next((s for s in segments if s.startswith('study')), '')
      codes, reason = tables.codes(row, LABELS)
      if not patient:
        reason = f'no patientNNNNN folder in its Path {path!r}'
      entry.reason = tables.truncated(row) or reason
      entry.patient_id = patient
      entry.study_id = f'{patient}/{study}' if study else ''
      entry.labels = codes or ()
      frontal = (row['Frontal/Lateral'] or '').strip().lower() == 'frontal'
      ap_pa = (row['AP/PA'] or '').strip()
      entry.view = ap_pa if frontal or ap_pa else 'LATERAL'
      entry.sex = tables.parse_sex(row['Sex'])
      entry.age_years = tables.parse_age(row['Age'])
      entry.private_parts = ((patient, patient),) + (
          ((study, entry.study_id),) if study else ())
      rows.append(entry)
  return rows, found, ignored, [TRAIN, VALID], LABELS


