"""The synthetic NIH tree with Google's expert labels
(xray_tfdata/synthetic/nih_google.py). The combined file's header is the
real one (torchxrayvision's google2019_nih-chest-xray-labels.csv.gz)."""

import collections
import os

import pytest

from synthetic_checks import auc
from synthetic_checks import BASES
from synthetic_checks import files
from synthetic_checks import read_csv
from synthetic_checks import region_means
from synthetic_checks import UPPER
from xray_tfdata.synthetic import nih_google

REAL_HEADER = (
    'Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,'
    'Patient Gender,View Position,OriginalImage[Width,Height],'
    'OriginalImagePixelSpacing[x,y],Fracture,Pneumothorax,Airspace opacity,'
    'Nodule or mass,Set Id')
LABELS = ['Fracture', 'Pneumothorax', 'Airspace opacity', 'Nodule or mass']
SPLIT_FILES = {
    'validation': 'four_findings_expert_labels_validation_labels.csv',
    'test': 'four_findings_expert_labels_test_labels.csv',
}
NUM_IMAGES = 160


@pytest.fixture(scope='module')
def google_tree(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('google') / 'nih_google')
  summary = nih_google.make_synthetic_nih_google(
      out, num_images=NUM_IMAGES, seed=6, size_scale=0.06, num_workers=1)
  return out, summary


def _lists(out):
  lists = {}
  for split, name in (('train_val', 'train_val_list.txt'),
                      ('test', 'test_list.txt')):
    with open(os.path.join(out, name), encoding='utf-8') as f:
      lists[split] = set(f.read().splitlines())
  return lists


def test_per_split_files_over_the_nih_tree(google_tree):
  out, summary = google_tree
  lists = _lists(out)
  images = {os.path.basename(f) for f in files(out) if f.endswith('.png')}
  _, nih_rows, _ = read_csv(os.path.join(out, 'Data_Entry_2017_v2020.csv'))
  nih_patient = {row['Image Index']: row['Patient ID'] for row in nih_rows}
  yes = {}
  for split, name in SPLIT_FILES.items():
    header, rows, _ = read_csv(os.path.join(out, name))
    assert header == REAL_HEADER.split(',')[:-1]  # no Set Id per split
    assert rows
    for row in rows:
      assert row['Image Index'] in images
      assert row['Patient ID'] == nih_patient[row['Image Index']]
      assert row['Image Index'] in lists['train_val' if split == 'validation'
                                         else 'test']
      assert {row[label] for label in LABELS} <= {'YES', 'NO'}
    yes[split] = {label: sum(row[label] == 'YES' for row in rows)
                  for label in LABELS}
    assert summary['expert'][split] == len(rows)
  assert yes == summary['expert_yes']
  assert len(lists['test']) == summary['expert']['test']


def test_airspace_opacity_shows_in_the_pixels(google_tree):
  out, _ = google_tree
  paths = {os.path.basename(f): f for f in files(out)}
  draws = {True: [], False: []}
  for name in SPLIT_FILES.values():
    _, rows, _ = read_csv(os.path.join(out, name))
    for row in rows:
      bases, upper = region_means(
          os.path.join(out, paths[row['Image Index']]), [BASES, UPPER])
      draws[row['Airspace opacity'] == 'YES'].append(bases - upper)
  assert len(draws[True]) >= 5 and len(draws[False]) >= 5
  assert auc(draws[True], draws[False]) > 0.85


def test_one_file_with_a_set_id(tmp_path):
  out = str(tmp_path / 'one')
  summary = nih_google.make_synthetic_nih_google(
      out, num_images=40, seed=1, size_scale=0.02, num_workers=1,
      set_id_file=True)
  with open(os.path.join(out, 'google2019_nih-chest-xray-labels.csv'),
            encoding='utf-8') as f:
    assert f.readline().rstrip('\n') == REAL_HEADER
  _, rows, _ = read_csv(os.path.join(out,
                                     'google2019_nih-chest-xray-labels.csv'))
  sets = collections.Counter(row['Set Id'] for row in rows)
  assert dict(sets) == {'test': summary['expert']['test'],
                        'val': summary['expert']['validation']}
  assert not any(os.path.exists(os.path.join(out, name))
                 for name in SPLIT_FILES.values())
