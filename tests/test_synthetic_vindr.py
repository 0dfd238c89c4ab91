"""The synthetic VinDr-CXR trees (xray_tfdata/synthetic/vindr.py), both
releases, read back here and recounted per label and per reader.

The competition's header and class ids are the real train.csv's
(torchxrayvision's copy, vinbigdata-train.csv.gz), written out here."""

import collections
import os

import numpy as np
import pytest

from synthetic_checks import auc
from synthetic_checks import cross_validated_auc
from synthetic_checks import display
from synthetic_checks import files
from synthetic_checks import read_csv
from xray_tfdata.synthetic import tree
from xray_tfdata.synthetic import vindr

pydicom = pytest.importorskip('pydicom')

COMPETITION_HEADER = ['image_id', 'class_name', 'class_id', 'rad_id', 'x_min',
                      'y_min', 'x_max', 'y_max']
CLASS_IDS = {'Aortic enlargement': 0, 'Atelectasis': 1, 'Calcification': 2,
             'Cardiomegaly': 3, 'Consolidation': 4, 'ILD': 5,
             'Infiltration': 6, 'Lung Opacity': 7, 'Nodule/Mass': 8,
             'Other lesion': 9, 'Pleural effusion': 10,
             'Pleural thickening': 11, 'Pneumothorax': 12,
             'Pulmonary fibrosis': 13, 'No finding': 14}
NUM_IMAGES = 60


@pytest.fixture(scope='module')
def trees(tmp_path_factory):
  root = tmp_path_factory.mktemp('vindr')
  made = {}
  for release in ('competition', 'physionet'):
    out = str(root / release)
    made[release] = (out, vindr.make_synthetic_vindr(
        out, num_images=NUM_IMAGES, seed=2, size_scale=0.025, num_workers=1,
        release=release))
  return made


def _sizes(out):
  """{image_id: (split, rows, columns)} from the DICOM headers."""
  sizes = {}
  for path in files(out):
    if path.endswith('.dicom'):
      dataset = pydicom.dcmread(os.path.join(out, path),
                                stop_before_pixels=True)
      split, name = path.split('/')
      sizes[name[:-len('.dicom')]] = (split, dataset.Rows, dataset.Columns)
  return sizes


def _recount(reads):
  """marked {label: {k readers: images}} from {(image, reader): labels}."""
  per_image = collections.defaultdict(collections.Counter)
  for (image_id, _), labels in reads.items():
    per_image[image_id].update(labels)
  marked = collections.defaultdict(collections.Counter)
  for counts in per_image.values():
    for label, k in counts.items():
      marked[label][k] += 1
  return {label: dict(sorted(c.items())) for label, c in marked.items()}


def _jsonable(summary_marked):
  return {label: {int(k): v for k, v in cell.items()}
          for label, cell in summary_marked.items()}


def test_competition_train_csv(trees):
  out, summary = trees['competition']
  header, rows, _ = read_csv(os.path.join(out, 'train.csv'))
  assert header == COMPETITION_HEADER
  sizes = _sizes(out)
  assert len(sizes) == NUM_IMAGES
  train = {i for i, (split, _, _) in sizes.items() if split == 'train'}
  assert {i for i, (split, _, _) in sizes.items() if split == 'test'}
  assert {row['image_id'] for row in rows} == train  # test: unlabelled
  reads = collections.defaultdict(set)
  readers = collections.defaultdict(set)
  for row in rows:
    assert CLASS_IDS[row['class_name']] == int(row['class_id'])
    reads[row['image_id'], row['rad_id']].add(row['class_name'])
    readers[row['image_id']].add(row['rad_id'])
    box = [row[k] for k in ('x_min', 'y_min', 'x_max', 'y_max')]
    if row['class_name'] == 'No finding':
      assert box == ['', '', '', '']
    else:
      _, height, width = sizes[row['image_id']]
      x_min, y_min, x_max, y_max = map(float, box)
      assert 0 <= x_min < x_max <= width and 0 <= y_min < y_max <= height
  assert all(len(r) == 3 for r in readers.values())  # three per image
  for labels in reads.values():
    assert labels == {'No finding'} or 'No finding' not in labels
  assert _recount(reads) == _jsonable(summary['marked'])
  per_reader = collections.Counter(r for rs in readers.values() for r in rs)
  assert dict(per_reader) == summary['readers']
  assert summary['no_finding_rows'] == sum(
      row['class_name'] == 'No finding' for row in rows)
  # The readers disagree: any, majority and all give different labels.
  assert any(set(cell) - {3} for cell in summary['marked'].values())


def test_physionet_annotations(trees):
  out, summary = trees['physionet']
  sizes = _sizes(out)
  labels_header, label_rows, _ = read_csv(
      os.path.join(out, 'annotations', 'image_labels_train.csv'))
  assert labels_header[:2] == ['image_id', 'rad_ID']
  assert labels_header[-1] == 'No finding' and len(labels_header) == 30
  _, box_rows, _ = read_csv(
      os.path.join(out, 'annotations', 'annotations_train.csv'))
  reads = {}
  for row in label_rows:
    marked = {name for name in labels_header[2:] if row[name] == '1'}
    assert set(row[name] for name in labels_header[2:]) <= {'0', '1'}
    reads[row['image_id'], row['rad_ID']] = marked
  boxed = collections.defaultdict(set)
  for row in box_rows:
    boxed[row['image_id'], row['rad_id']].add(row['class_name'])
  local = set(CLASS_IDS)
  for key, marked in reads.items():
    assert boxed[key] == marked & local  # a box for every local label
  assert {i for i, _ in reads} == {i for i, (s, _, _) in sizes.items()
                                   if s == 'train'}
  assert collections.Counter(i for i, _ in reads).most_common(1)[0][1] == 3
  local_reads = {key: marked & local for key, marked in reads.items()}
  assert _recount(local_reads) == _jsonable(summary['marked'])
  # The test split: one consensus row per image, no reader column.
  test_header, test_rows, _ = read_csv(
      os.path.join(out, 'annotations', 'image_labels_test.csv'))
  assert 'rad_ID' not in test_header
  assert sorted(row['image_id'] for row in test_rows) == sorted(
      i for i, (s, _, _) in sizes.items() if s == 'test')
  consensus = collections.Counter(
      name for row in test_rows for name in CLASS_IDS
      if name != 'No finding' and row[name] == '1')
  assert dict(consensus) == summary['consensus']


def test_effusion_boxes_point_at_the_fluid(trees):
  """Pixels inside the readers' Pleural effusion boxes are brighter than
  the same box mirrored to the other side (no fluid there), and images
  that most readers call effusion have brighter bases."""
  out, _ = trees['competition']
  _, rows, _ = read_csv(os.path.join(out, 'train.csv'))
  by_image = collections.defaultdict(list)
  for row in rows:
    by_image[row['image_id']].append(row)
  inside, mirrored = [], []
  bases = {True: [], False: []}
  for image_id, image_rows in by_image.items():
    pixels = display(os.path.join(out, 'train', f'{image_id}.dicom'))
    height, width = pixels.shape
    effusion = [r for r in image_rows if r['class_name'] == 'Pleural effusion']
    votes = len({r['rad_id'] for r in effusion})
    lower = pixels[int(0.7 * height):int(0.85 * height)].mean()
    upper = pixels[int(0.3 * height):int(0.45 * height)].mean()
    if votes != 1:
      bases[votes >= 2].append(lower - upper)
    sides = {float(r['x_min']) < width / 2 for r in effusion}
    for row in effusion:
      if votes < 2 or len(sides) > 1:
        continue  # a false mark, or fluid on both sides
      x_min, y_min, x_max, y_max = (int(float(row[k])) for k in
                                    ('x_min', 'y_min', 'x_max', 'y_max'))
      inside.append(pixels[y_min:y_max, x_min:x_max].mean())
      mirrored.append(pixels[y_min:y_max, width - x_max:width - x_min].mean())
  assert len(inside) >= 5
  assert np.mean(np.array(inside) > np.array(mirrored)) > 0.8
  assert len(bases[True]) >= 3 and len(bases[False]) >= 5
  assert auc(bases[True], bases[False]) > 0.85


def test_dicoms_are_12_bit_some_monochrome1(trees):
  out, _ = trees['competition']
  photometric = collections.Counter()
  for path in [f for f in files(out) if f.endswith('.dicom')][:40]:
    dataset = pydicom.dcmread(os.path.join(out, path))
    assert (dataset.BitsAllocated, dataset.BitsStored) == (16, 12)
    assert dataset.pixel_array.max() < 4096
    photometric[dataset.PhotometricInterpretation] += 1
  assert set(photometric) == {'MONOCHROME1', 'MONOCHROME2'}


def test_unknown_release(tmp_path):
  with pytest.raises(tree.SyntheticError, match='release'):
    vindr.make_synthetic_vindr(str(tmp_path / 'x'), release='kaggle')
  assert not os.path.exists(tmp_path / 'x')


@pytest.mark.slow  # fits a model
def test_a_model_learns_the_readers_effusion_from_the_dicoms(tmp_path):
  """Labelled by the readers' majority, read from MONOCHROME1 and 2."""
  out = str(tmp_path / 'vindr')
  vindr.make_synthetic_vindr(out, num_images=300, seed=4, size_scale=0.01,
                             num_workers=1)
  _, rows, _ = read_csv(os.path.join(out, 'train.csv'))
  votes = collections.defaultdict(set)
  for row in rows:
    votes[row['image_id']]
    if row['class_name'] == 'Pleural effusion':
      votes[row['image_id']].add(row['rad_id'])
  paths = [os.path.join(out, 'train', f'{i}.dicom') for i in sorted(votes)]
  labels = [len(votes[i]) >= 2 for i in sorted(votes)]
  assert cross_validated_auc(paths, labels) > 0.85
