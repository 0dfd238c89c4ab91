"""The synthetic CheXpert-v1.0-small tree (xray_tfdata/synthetic/chexpert.py).

The header below is the real train.csv's first line (as in torchxrayvision's
copy), written out here rather than taken from the module, so that a
changed constant fails.
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
from xray_tfdata.synthetic import chexpert

CHEXPERT_HEADER = (
    'Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,'
    'Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,'
    'Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,'
    'Support Devices').split(',')
NUM_IMAGES = 160


@pytest.fixture(scope='module')
def chexpert_tree(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('chexpert') / 'chexpert')
  # Half the default size: enough for the pixel checks.
  summary = chexpert.make_synthetic_chexpert(
      out, num_images=NUM_IMAGES, seed=5,
      size_scale=chexpert.DEFAULT_SIZE_SCALE / 2, num_workers=1)
  return out, summary


def test_chexpert_layout_and_codes(chexpert_tree):
  out, summary = chexpert_tree
  root = os.path.join(out, 'CheXpert-v1.0-small')
  assert sorted(os.listdir(root)) == ['train', 'train.csv', 'valid',
                                      'valid.csv']
  tables = {}
  for split in ('train', 'valid'):
    header, rows, _ = read_csv(os.path.join(root, f'{split}.csv'))
    assert header == CHEXPERT_HEADER
    tables[split] = rows
    for row in rows:
      path = re.fullmatch(
          rf'CheXpert-v1\.0-small/{split}/patient(\d{{5}})/study(\d+)/'
          r'view(\d)_(frontal|lateral)\.jpg', row['Path'])
      assert path, row['Path']
      assert os.path.isfile(os.path.join(out, row['Path']))
      assert row['Sex'] in ('Male', 'Female', 'Unknown')
      assert 0 <= int(row['Age']) <= 90
      lateral = path.group(4) == 'lateral'
      assert row['Frontal/Lateral'] == ('Lateral' if lateral else 'Frontal')
      assert (row['AP/PA'] == '') == lateral
      assert lateral or row['AP/PA'] in ('AP', 'PA')
  codes = lambda rows: collections.Counter(
      row[label] for row in rows for label in CHEXPERT_HEADER[5:])
  train_codes, valid_codes = codes(tables['train']), codes(tables['valid'])
  assert set(train_codes) == CODES  # uncertain and blank both present
  assert set(valid_codes) == {'1.0', '0.0'}  # as the real valid.csv
  # Valid's patients are not train's.
  patients = {split: {row['Path'].split('/')[2] for row in rows}
              for split, rows in tables.items()}
  assert patients['train'] and patients['valid']
  assert not patients['train'] & patients['valid']
  per_patient = collections.Counter(row['Path'].split('/')[2]
                                    for row in tables['train'])
  assert max(per_patient.values()) >= 3
  assert any(row['Frontal/Lateral'] == 'Lateral' for row in tables['train'])
  with Image.open(os.path.join(out, tables['train'][0]['Path'])) as image:
    assert image.format == 'JPEG' and image.mode == 'L'
  jpegs = [f for f in files(out) if f.endswith('.jpg')]
  assert len(jpegs) == NUM_IMAGES == len(tables['train']) + len(
      tables['valid'])
  assert summary['num_lateral'] == sum(
      row['Frontal/Lateral'] == 'Lateral' for rows in tables.values()
      for row in rows)


def _frontal_images(out):
  """[(path, effusion code, cardiomegaly code)] of the frontal images."""
  _, rows, _ = read_csv(os.path.join(out, 'CheXpert-v1.0-small',
                                    'train.csv'))
  return [(os.path.join(out, row['Path']), row['Pleural Effusion'],
           row['Cardiomegaly']) for row in rows
          if row['Frontal/Lateral'] == 'Frontal']


def test_effusion_and_cardiomegaly_show_in_the_pixels(chexpert_tree):
  out, _ = chexpert_tree
  assert_findings_show(_frontal_images(out))
