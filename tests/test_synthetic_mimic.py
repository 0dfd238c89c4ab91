"""The synthetic MIMIC-CXR-JPG 2.0.0 tree (xray_tfdata/synthetic/mimic.py).

The headers below are the real files' first lines (as MIMIC-CXR-JPG 2.0.0
documents them), written out here rather than taken from the module, so
that a changed constant fails.
"""

import collections
import os
import re

import pytest
from PIL import Image

from synthetic_checks import assert_findings_show
from synthetic_checks import CODES
from synthetic_checks import files
from synthetic_checks import read_csv
from xray_tfdata.synthetic import mimic

MIMIC_HEADERS = {
    'mimic-cxr-2.0.0-chexpert.csv.gz': (
        'subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,'
        'Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,'
        'No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,'
        'Support Devices').split(','),
    'mimic-cxr-2.0.0-metadata.csv.gz': (
        'dicom_id,subject_id,study_id,PerformedProcedureStepDescription,'
        'ViewPosition,Rows,Columns,StudyDate,StudyTime,'
        'ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,'
        'PatientOrientationCodeSequence_CodeMeaning').split(','),
    'mimic-cxr-2.0.0-split.csv.gz': 'dicom_id,study_id,subject_id,split'.split(
        ','),
}
NUM_IMAGES = 160


@pytest.fixture(scope='module')
def mimic_tree(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('mimic') / 'mimic')
  # Half the default size: enough for the pixel checks.
  summary = mimic.make_synthetic_mimic(
      out, num_images=NUM_IMAGES, seed=5,
      size_scale=mimic.DEFAULT_SIZE_SCALE / 2, num_workers=1)
  return out, summary


def test_mimic_layout_and_label_files(mimic_tree):
  out, summary = mimic_tree
  tables = {}
  for name, expected in MIMIC_HEADERS.items():
    header, rows, _ = read_csv(os.path.join(out, name))
    assert header == expected, name
    tables[name] = rows
  labels = tables['mimic-cxr-2.0.0-chexpert.csv.gz']
  metadata = tables['mimic-cxr-2.0.0-metadata.csv.gz']
  split = tables['mimic-cxr-2.0.0-split.csv.gz']
  assert len(metadata) == len(split) == NUM_IMAGES
  jpegs = [f for f in files(out) if f.endswith('.jpg')]
  assert len(jpegs) == NUM_IMAGES
  with open(os.path.join(out, 'IMAGE_FILENAMES'), encoding='utf-8') as f:
    assert sorted(f.read().splitlines()) == sorted(jpegs)
  for row in metadata:
    subject, study, dicom = row['subject_id'], row['study_id'], row['dicom_id']
    assert re.fullmatch(r'1\d{7}', subject) and re.fullmatch(r'5\d{7}', study)
    assert re.fullmatch(r'[0-9a-f]{8}(-[0-9a-f]{8}){4}', dicom)
    path = f'files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg'
    assert path in jpegs
    with Image.open(os.path.join(out, path)) as image:
      # Rows and Columns describe the image, as in the real set.
      assert image.size == (int(row['Columns']), int(row['Rows']))
    assert re.fullmatch(r'2[12]\d{6}', row['StudyDate'])
    float(row['StudyTime'])
  assert {row['ViewPosition'] for row in metadata} >= {'PA', 'AP', 'LATERAL'}
  # Labels per study: one row for each study of the images.
  studies = {(row['subject_id'], row['study_id']) for row in metadata}
  assert sorted(studies) == sorted((r['subject_id'], r['study_id'])
                                   for r in labels)
  assert set(collections.Counter(
      row[label] for row in labels for label in MIMIC_HEADERS[
          'mimic-cxr-2.0.0-chexpert.csv.gz'][2:])) == CODES
  per_study = collections.Counter(row['study_id'] for row in metadata)
  assert max(per_study.values()) >= 2  # PA + lateral
  per_subject = collections.defaultdict(set)
  for row in metadata:
    per_subject[row['subject_id']].add(row['study_id'])
  assert max(len(s) for s in per_subject.values()) >= 2
  # The official split by subject, all three splits present.
  subject_splits = collections.defaultdict(set)
  for row in split:
    subject_splits[row['subject_id']].add(row['split'])
  assert all(len(s) == 1 for s in subject_splits.values())
  assert {row['split'] for row in split} == {'train', 'validate', 'test'}
  assert summary['splits'].keys() == {'train', 'validate', 'test'}


def _frontal_images(out):
  """[(path, effusion code, cardiomegaly code)] of the frontal images."""
  _, labels, _ = read_csv(os.path.join(out, 'mimic-cxr-2.0.0-chexpert.csv.gz'))
  by_study = {row['study_id']: row for row in labels}
  _, metadata, _ = read_csv(os.path.join(out,
                                         'mimic-cxr-2.0.0-metadata.csv.gz'))
  found = []
  for row in metadata:
    if row['ViewPosition'] in ('PA', 'AP'):
      s = row['subject_id']
      study = by_study[row['study_id']]
      found.append((os.path.join(out, f'files/p{s[:2]}/p{s}/s{row["study_id"]}'
                                      f'/{row["dicom_id"]}.jpg'),
                    study['Pleural Effusion'], study['Cardiomegaly']))
  return found


def test_effusion_and_cardiomegaly_show_in_the_pixels(mimic_tree):
  out, _ = mimic_tree
  assert_findings_show(_frontal_images(out))
