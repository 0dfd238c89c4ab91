"""The synthetic NIH ChestX-ray14, CheXpert and MIMIC-CXR-JPG source trees.

The headers below are the real files' first lines (NIH's and CheXpert's as
in torchxrayvision's copies of Data_Entry_2017_v2020.csv and train.csv;
MIMIC's as MIMIC-CXR-JPG 2.0.0 documents them), written out here rather
than taken from the module, so that a changed constant fails.
"""

import collections
import csv
import gzip
import hashlib
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT
from conftest import assert_one_line_error
from xray_tfdata import synthetic_multilabel as sml

NIH_HEADER = ['Image Index', 'Finding Labels', 'Follow-up #', 'Patient ID',
              'Patient Age', 'Patient Gender', 'View Position',
              'OriginalImage[Width', 'Height]', 'OriginalImagePixelSpacing[x',
              'y]']
NIH_FINDINGS = {'Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltration',
                'Mass', 'Nodule', 'Pneumonia', 'Pneumothorax', 'Consolidation',
                'Edema', 'Emphysema', 'Fibrosis', 'Pleural_Thickening',
                'Hernia'}
CHEXPERT_HEADER = (
    'Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,'
    'Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,'
    'Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,'
    'Support Devices').split(',')
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
CODES = {'1.0', '0.0', '-1.0', ''}
NUM_IMAGES = 160


def _read_csv(path):
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rt', newline='', encoding='utf-8') as f:
    rows = list(csv.reader(f))
  return rows[0], [dict(zip(rows[0], row)) for row in rows[1:]], rows[1:]


def _files(root):
  found = []
  for folder, _, names in os.walk(root):
    found += [os.path.relpath(os.path.join(folder, n), root) for n in names]
  return sorted(f for f in found if f != sml.MARKER)


@pytest.fixture(scope='module')
def trees(tmp_path_factory):
  root = tmp_path_factory.mktemp('multilabel')
  made = {}
  for layout in sml.LAYOUTS:
    out = str(root / layout)
    # Half the default sizes (NIH 64 px): enough for the pixel checks.
    made[layout] = (out, sml.make_synthetic_multilabel(
        out, layout, num_images=NUM_IMAGES, seed=5,
        size_scale=sml.DEFAULT_SIZE_SCALE[layout] / 2, num_workers=1))
  return made


def test_nih_layout_and_label_file(trees):
  out, summary = trees['nih']
  header, rows, raw = _read_csv(os.path.join(out, 'Data_Entry_2017_v2020.csv'))
  assert header == NIH_HEADER
  assert all(len(row) == 11 for row in raw)
  assert len(rows) == summary['num_images'] == NUM_IMAGES
  images = [f for f in _files(out) if f.endswith('.png')]
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


def test_nih_lists_split_by_patient(trees):
  out, summary = trees['nih']
  _, rows, _ = _read_csv(os.path.join(out, 'Data_Entry_2017_v2020.csv'))
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


def test_chexpert_layout_and_codes(trees):
  out, summary = trees['chexpert']
  root = os.path.join(out, 'CheXpert-v1.0-small')
  assert sorted(os.listdir(root)) == ['train', 'train.csv', 'valid',
                                      'valid.csv']
  tables = {}
  for split in ('train', 'valid'):
    header, rows, _ = _read_csv(os.path.join(root, f'{split}.csv'))
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
  jpegs = [f for f in _files(out) if f.endswith('.jpg')]
  assert len(jpegs) == NUM_IMAGES == len(tables['train']) + len(
      tables['valid'])
  assert summary['num_lateral'] == sum(
      row['Frontal/Lateral'] == 'Lateral' for rows in tables.values()
      for row in rows)


def test_mimic_layout_and_label_files(trees):
  out, summary = trees['mimic']
  tables = {}
  for name, expected in MIMIC_HEADERS.items():
    header, rows, _ = _read_csv(os.path.join(out, name))
    assert header == expected, name
    tables[name] = rows
  labels = tables['mimic-cxr-2.0.0-chexpert.csv.gz']
  metadata = tables['mimic-cxr-2.0.0-metadata.csv.gz']
  split = tables['mimic-cxr-2.0.0-split.csv.gz']
  assert len(metadata) == len(split) == NUM_IMAGES
  jpegs = [f for f in _files(out) if f.endswith('.jpg')]
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


def _region_means(path, regions):
  """Mean intensity of each (y0, y1, x0, x1) fraction box, at 64 px."""
  with Image.open(path) as image:
    pixels = np.asarray(image.convert('L').resize((64, 64)), np.float64)
  means = []
  for boxes in regions:
    values = [pixels[int(y0 * 64):int(y1 * 64), int(x0 * 64):int(x1 * 64)]
              for y0, y1, x0, x1 in boxes]
    means.append(np.mean(np.concatenate([v.ravel() for v in values])))
  return means


def _auc(positives, negatives):
  positives, negatives = np.asarray(positives), np.asarray(negatives)
  return ((positives[:, None] > negatives[None, :]).mean() +
          0.5 * (positives[:, None] == negatives[None, :]).mean())


# Lung bases (effusion), relative to the upper lungs; the heart's borders
# beside the spine (an enlarged heart reaches them), relative to the middle.
_BASES = [(0.7, 0.85, 0.2, 0.4), (0.7, 0.85, 0.6, 0.8)]
_UPPER = [(0.3, 0.45, 0.2, 0.4), (0.3, 0.45, 0.6, 0.8)]
_HEART_SIDES = [(0.58, 0.68, 0.31, 0.38), (0.58, 0.68, 0.7, 0.77)]


def _frontal_images(layout, out):
  """[(path, effusion code, cardiomegaly code)] of the frontal images."""
  if layout == 'nih':
    _, rows, _ = _read_csv(os.path.join(out, 'Data_Entry_2017_v2020.csv'))
    paths = {os.path.basename(f): f for f in _files(out)}
    return [(os.path.join(out, paths[row['Image Index']]),
             '1.0' if 'Effusion' in row['Finding Labels'] else '0.0',
             '1.0' if 'Cardiomegaly' in row['Finding Labels'] else '0.0')
            for row in rows]
  if layout == 'chexpert':
    _, rows, _ = _read_csv(os.path.join(out, 'CheXpert-v1.0-small',
                                        'train.csv'))
    return [(os.path.join(out, row['Path']), row['Pleural Effusion'],
             row['Cardiomegaly']) for row in rows
            if row['Frontal/Lateral'] == 'Frontal']
  _, labels, _ = _read_csv(os.path.join(out, 'mimic-cxr-2.0.0-chexpert.csv.gz'))
  by_study = {row['study_id']: row for row in labels}
  _, metadata, _ = _read_csv(os.path.join(out,
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


@pytest.mark.parametrize('layout', sml.LAYOUTS)
def test_effusion_and_cardiomegaly_show_in_the_pixels(trees, layout):
  """Images whose label file says 1.0 differ from those saying 0.0 or
  nothing, in the region the finding occupies; on the written files."""
  out, _ = trees[layout]
  effusion = {True: [], False: []}
  heart = {True: [], False: []}
  for path, effusion_code, cardiomegaly_code in _frontal_images(layout, out):
    if effusion_code == '-1.0' or cardiomegaly_code == '-1.0':
      continue  # uncertain: either
    bases, upper, sides = _region_means(path, [_BASES, _UPPER, _HEART_SIDES])
    effusion[effusion_code == '1.0'].append(bases - upper)
    if effusion_code != '1.0':  # an effusion brightens the heart's sides too
      heart[cardiomegaly_code == '1.0'].append(sides - upper)
  for name, values in (('effusion', effusion), ('cardiomegaly', heart)):
    assert len(values[True]) >= 5 and len(values[False]) >= 5, name
    assert _auc(values[True], values[False]) > 0.85, name


def test_other_labels_carry_no_pixel_signal(trees):
  """A random label (Infiltration) leaves the bases as they are."""
  out, _ = trees['nih']
  _, rows, _ = _read_csv(os.path.join(out, 'Data_Entry_2017_v2020.csv'))
  paths = {os.path.basename(f): f for f in _files(out)}
  draws = {True: [], False: []}
  for row in rows:
    if 'Effusion' in row['Finding Labels']:
      continue
    bases, upper = _region_means(os.path.join(out, paths[row['Image Index']]),
                                 [_BASES, _UPPER])
    draws['Infiltration' in row['Finding Labels']].append(bases - upper)
  assert len(draws[True]) >= 5
  assert 0.25 < _auc(draws[True], draws[False]) < 0.75


def _tree_hashes(out):
  hashes = {}
  for f in _files(out):
    with open(os.path.join(out, f), 'rb') as handle:
      hashes[f] = hashlib.sha256(handle.read()).hexdigest()
  return hashes


@pytest.mark.parametrize('layout', sml.LAYOUTS)
def test_deterministic_for_a_seed(tmp_path, layout):
  def tree(name, seed):
    out = str(tmp_path / name)
    sml.make_synthetic_multilabel(out, layout, num_images=24, seed=seed,
                                  size_scale=sml.DEFAULT_SIZE_SCALE[layout] / 4,
                                  num_workers=1)
    return _tree_hashes(out)

  first = tree('a', 3)
  assert first == tree('b', 3)
  assert first != tree('c', 4)


@pytest.mark.slow
def test_workers_draw_the_same_bytes(tmp_path):
  """The process pool (spawn; from 256 images on) gives the same files as
  drawing in-process."""
  def tree(name, workers):
    out = str(tmp_path / name)
    sml.make_synthetic_mimic(out, num_images=260, size_scale=0.01,
                             num_workers=workers)
    return _tree_hashes(out)

  assert tree('one', 1) == tree('two', 2)


def test_size_scale_multiplies_the_real_sizes(tmp_path):
  out = str(tmp_path / 'nih')
  sml.make_synthetic_nih(out, num_images=20, size_scale=0.05, num_workers=1)
  png = next(f for f in _files(out) if f.endswith('.png'))
  with Image.open(os.path.join(out, png)) as image:
    assert image.size == (51, 51)  # 0.05 * 1024


def test_refuses_a_foreign_folder_and_replaces_its_own(tmp_path):
  (tmp_path / 'keep.txt').write_text('mine')
  with pytest.raises(sml.SyntheticMultilabelError, match='not empty'):
    sml.make_synthetic_nih(str(tmp_path), num_images=20)
  assert os.listdir(tmp_path) == ['keep.txt']
  out = str(tmp_path / 'tree')
  sml.make_synthetic_mimic(out, num_images=30, size_scale=0.01, num_workers=1)
  # Its own tree is replaced, nothing of the old one left.
  sml.make_synthetic_nih(out, num_images=20, size_scale=0.02, num_workers=1)
  assert not os.path.exists(os.path.join(out, 'files'))
  assert os.path.exists(os.path.join(out, 'Data_Entry_2017_v2020.csv'))
  (tmp_path / 'file').write_text('x')
  with pytest.raises(sml.SyntheticMultilabelError, match='is a file'):
    sml.make_synthetic_chexpert(str(tmp_path / 'file'), num_images=20)


@pytest.mark.parametrize('kwargs, message', [
    ({'num_images': 19}, 'at least 20'),
    ({'layout': 'padchest'}, 'layout'),
    ({'size_scale': 0}, 'size_scale'),
])
def test_bad_arguments(tmp_path, kwargs, message):
  arguments = {'layout': 'nih', 'num_images': 20, **kwargs}
  with pytest.raises(sml.SyntheticMultilabelError, match=message):
    sml.make_synthetic_multilabel(str(tmp_path / 'x'), **arguments)
  assert not os.path.exists(tmp_path / 'x')


@pytest.mark.slow
def test_a_200_image_tree_is_fast(tmp_path):
  summary = sml.make_synthetic_chexpert(str(tmp_path / 'c'), num_images=200,
                                        num_workers=1)
  assert summary['num_images'] == 200
  assert summary['elapsed_seconds'] < 15  # a few seconds on one core


@pytest.mark.slow
@pytest.mark.parametrize('layout', sml.LAYOUTS)
def test_make_synthetic_tool(tmp_path, layout):
  out = str(tmp_path / layout)
  tool = os.path.join(REPO_ROOT, 'tools', 'make_synthetic')
  result = subprocess.run(
      [sys.executable, tool, f'--out_dir={out}', f'--layout={layout}',
       '--num_images=40', '--seed=2', '--num_workers=1'],
      capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
  assert result.returncode == 0, result.stderr
  assert f'wrote 40 images ({layout} layout' in result.stdout
  images = [f for f in _files(out) if f.endswith(('.png', '.jpg'))]
  assert len(images) == 40
  # The same as the library call.
  reference = str(tmp_path / 'reference')
  sml.make_synthetic_multilabel(reference, layout, num_images=40, seed=2,
                                num_workers=1)
  assert _tree_hashes(out) == _tree_hashes(reference)
  (tmp_path / 'foreign').mkdir()
  (tmp_path / 'foreign' / 'x.txt').write_text('x')
  result = subprocess.run(
      [sys.executable, tool, f'--out_dir={tmp_path / "foreign"}',
       f'--layout={layout}'], capture_output=True, text=True, timeout=300,
      cwd=REPO_ROOT)
  assert_one_line_error(result, 'not empty')
  assert os.listdir(tmp_path / 'foreign') == ['x.txt']
