"""The synthetic NIH ChestX-ray14 tree (xray_tfdata/synthetic/nih.py).

The header below is the real file's first line (as in torchxrayvision's copy
of Data_Entry_2017_v2020.csv), written out here rather than taken from the
module, so that a changed constant fails.
"""

import collections
import os
import re

import numpy as np
import pytest
from PIL import Image

from synthetic_checks import assert_findings_show
from synthetic_checks import auc
from synthetic_checks import BASES
from synthetic_checks import display
from synthetic_checks import files
from synthetic_checks import read_csv
from synthetic_checks import region_means
from synthetic_checks import tree_hashes
from synthetic_checks import UPPER
from xray_tfdata.synthetic import nih

NIH_HEADER = ['Image Index', 'Finding Labels', 'Follow-up #', 'Patient ID',
              'Patient Age', 'Patient Gender', 'View Position',
              'OriginalImage[Width', 'Height]', 'OriginalImagePixelSpacing[x',
              'y]']
NIH_FINDINGS = {'Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltration',
                'Mass', 'Nodule', 'Pneumonia', 'Pneumothorax', 'Consolidation',
                'Edema', 'Emphysema', 'Fibrosis', 'Pleural_Thickening',
                'Hernia'}
NUM_IMAGES = 160


@pytest.fixture(scope='module')
def nih_tree(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('nih') / 'nih')
  # Half the default size (64 px): enough for the pixel checks.
  summary = nih.make_synthetic_nih(
      out, num_images=NUM_IMAGES, seed=5,
      size_scale=nih.DEFAULT_SIZE_SCALE / 2, num_workers=1)
  return out, summary


def test_nih_layout_and_label_file(nih_tree):
  out, summary = nih_tree
  header, rows, raw = read_csv(os.path.join(out, 'Data_Entry_2017_v2020.csv'))
  assert header == NIH_HEADER
  assert all(len(row) == 11 for row in raw)
  assert len(rows) == summary['num_images'] == NUM_IMAGES
  images = [f for f in files(out) if f.endswith('.png')]
  assert len(images) == NUM_IMAGES
  folders = collections.Counter(os.path.dirname(f) for f in images)
  assert len(folders) >= 2
  assert all(re.fullmatch(r'images_\d{3}/images', f) for f in folders)
  by_name = {os.path.basename(f): f for f in images}
  for row in rows:
    name = row['Image Index']
    match = re.fullmatch(r'(\d{8})_(\d{3})\.png', name)
    assert match and name in by_name
    assert int(match.group(1)) == int(row['Patient ID'])
    assert int(match.group(2)) == int(row['Follow-up #'])
    findings = row['Finding Labels'].split('|')
    assert findings == ['No Finding'] or set(findings) <= NIH_FINDINGS
    assert row['View Position'] in ('PA', 'AP')
    assert row['Patient Gender'] in ('M', 'F')
    assert 0 < int(row['Patient Age']) < 100
    assert int(row['OriginalImage[Width']) > 1000
    float(row['OriginalImagePixelSpacing[x'])
  with Image.open(os.path.join(out, images[0])) as image:
    assert image.format == 'PNG' and image.mode == 'L'
    assert image.size[0] == image.size[1]  # NIH's PNGs are square
  assert {f for row in rows for f in row['Finding Labels'].split('|')} >= {
      'Effusion', 'Cardiomegaly', 'No Finding'}
  assert {row['View Position'] for row in rows} == {'PA', 'AP'}


def test_nih_lists_split_by_patient(nih_tree):
  out, summary = nih_tree
  _, rows, _ = read_csv(os.path.join(out, 'Data_Entry_2017_v2020.csv'))
  patient = {row['Image Index']: row['Patient ID'] for row in rows}
  lists = {}
  for name in ('train_val_list.txt', 'test_list.txt'):
    with open(os.path.join(out, name), encoding='utf-8') as f:
      lists[name] = f.read().splitlines()
  train_val, test = lists['train_val_list.txt'], lists['test_list.txt']
  assert sorted(train_val + test) == sorted(patient)
  assert test and train_val
  assert not {patient[n] for n in train_val} & {patient[n] for n in test}
  per_patient = collections.Counter(patient.values())
  assert max(per_patient.values()) >= 3
  assert len(patient) / len(per_patient) > 1.5  # several images per patient
  assert summary['splits']['test']['images'] == len(test)


def _frontal_images(out):
  """[(path, effusion code, cardiomegaly code)]: every NIH image."""
  _, rows, _ = read_csv(os.path.join(out, 'Data_Entry_2017_v2020.csv'))
  paths = {os.path.basename(f): f for f in files(out)}
  return [(os.path.join(out, paths[row['Image Index']]),
           '1.0' if 'Effusion' in row['Finding Labels'] else '0.0',
           '1.0' if 'Cardiomegaly' in row['Finding Labels'] else '0.0')
          for row in rows]


def test_effusion_and_cardiomegaly_show_in_the_pixels(nih_tree):
  out, _ = nih_tree
  assert_findings_show(_frontal_images(out))


def test_other_labels_carry_no_pixel_signal(nih_tree):
  """A random label (Infiltration) leaves the bases as they are."""
  out, _ = nih_tree
  _, rows, _ = read_csv(os.path.join(out, 'Data_Entry_2017_v2020.csv'))
  paths = {os.path.basename(f): f for f in files(out)}
  draws = {True: [], False: []}
  for row in rows:
    if 'Effusion' in row['Finding Labels']:
      continue
    bases, upper = region_means(os.path.join(out, paths[row['Image Index']]),
                                [BASES, UPPER])
    draws['Infiltration' in row['Finding Labels']].append(bases - upper)
  assert len(draws[True]) >= 5
  assert 0.25 < auc(draws[True], draws[False]) < 0.75


def test_size_scale_multiplies_the_real_sizes(tmp_path):
  out = str(tmp_path / 'nih')
  nih.make_synthetic_nih(out, num_images=20, size_scale=0.05, num_workers=1)
  png = next(f for f in files(out) if f.endswith('.png'))
  with Image.open(os.path.join(out, png)) as image:
    assert image.size == (51, 51)  # 0.05 * 1024


def test_box_file(tmp_path):
  """BBox_List_2017.csv: the real header, NIH's 8 box findings as the file
  spells them, each box on an image listing the finding, inside it, and an
  Effusion box brighter than its mirror image (it points at the fluid).
  The rest of the tree is the tree without boxes."""
  plain, boxed = str(tmp_path / 'plain'), str(tmp_path / 'boxed')
  nih.make_synthetic_nih(plain, num_images=120, seed=8, size_scale=0.06,
                         num_workers=1)
  summary = nih.make_synthetic_nih(boxed, num_images=120, seed=8,
                                   size_scale=0.06, num_workers=1, boxes=True)
  with open(os.path.join(boxed, 'BBox_List_2017.csv'), encoding='utf-8') as f:
    lines = f.read().splitlines()
  assert lines[0] == 'Image Index,Finding Label,Bbox [x,y,w,h],,,'
  _, rows, _ = read_csv(os.path.join(boxed, 'Data_Entry_2017_v2020.csv'))
  findings = {row['Image Index']: row['Finding Labels'].split('|')
              for row in rows}
  paths = {os.path.basename(f): f for f in files(boxed)}
  spelled = {'Infiltrate': 'Infiltration'}
  counts = collections.Counter()
  brighter = []
  for line in lines[1:]:
    name, finding, x, y, w, h = line.split(',')
    counts[finding] += 1
    assert finding in {'Atelectasis', 'Cardiomegaly', 'Effusion',
                       'Infiltrate', 'Mass', 'Nodule', 'Pneumonia',
                       'Pneumothorax'}
    assert spelled.get(finding, finding) in findings[name]
    pixels = display(os.path.join(boxed, paths[name]))
    side = pixels.shape[1]
    x, y, w, h = (float(v) for v in (x, y, w, h))
    assert 0 <= x and 0 <= y and x + w <= side and y + h <= side
    if finding == 'Effusion':
      x0, x1, y0, y1 = int(x), int(x + w), int(y), int(y + h)
      brighter.append(pixels[y0:y1, x0:x1].mean() >
                      pixels[y0:y1, side - x1:side - x0].mean())
  assert dict(counts) == summary['boxes']
  assert len(brighter) >= 5 and np.mean(brighter) > 0.8
  assert {'Infiltrate', 'Effusion', 'Cardiomegaly'} <= set(counts)
  boxed_images = {line.split(',')[0] for line in lines[1:]}
  assert len(boxed_images) == summary['boxed_images']
  plain_hashes, boxed_hashes = tree_hashes(plain), tree_hashes(boxed)
  assert boxed_hashes.pop('BBox_List_2017.csv')
  changed = {f for f in boxed_hashes if boxed_hashes[f] != plain_hashes[f]}
  assert boxed_hashes.keys() == plain_hashes.keys()
  assert {os.path.basename(f) for f in changed} <= boxed_images
