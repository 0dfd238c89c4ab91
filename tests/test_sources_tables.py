"""The labelled sources (sources.tables, nih, chexpert, mimic, labels_csv) and
their conversion: NIH, CheXpert, MIMIC and
csv trees written here, their counts recounted from the CSVs with `csv`.

The header lines are the real ones (NIH's Data_Entry_2017_v2020.csv and
CheXpert-v1.0-small's train.csv, as torchxrayvision ships them; MIMIC's as
PhysioNet documents them, its label file in its own alphabetical order).
"""

import collections
import csv
import dataclasses
import gzip
import hmac
import io
import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from xray_tfdata import dataset_info
from xray_tfdata import schema
from xray_tfdata import sources
from xray_tfdata.sources import class_folders
from xray_tfdata.sources import labels_csv
from xray_tfdata.sources import tables
from xray_tfdata import writer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SALT = 'test-salt'
STORED = 16

NIH_HEADER = ('Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,'
              'Patient Gender,View Position,OriginalImage[Width,Height],'
              'OriginalImagePixelSpacing[x,y]')
CHEXPERT_HEADER = (
    'Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged '
    'Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,'
    'Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,'
    'Pleural Other,Fracture,Support Devices')
MIMIC_LABEL_COLUMNS = sorted(sources.chexpert.LABELS)  # the file's own order

# NIH: (image, findings, patient, view, list); list: 'tv' train_val_list,
# 'test' test_list, None neither. The images of `NIH_NO_IMAGE` are not
# written; the last row repeats the first.
NIH_ROWS = [
    ('00000001_000.png', 'Cardiomegaly', '1', 'PA', 'tv'),
    ('00000001_001.png', 'Cardiomegaly|Emphysema', '1', 'PA', 'tv'),
    ('00000002_000.png', 'No Finding', '2', 'AP', 'tv'),
    ('00000003_000.png', 'Effusion|Pleural_Thickening', '3', 'PA', 'test'),
    ('00000003_001.png', 'Hernia', '3', 'AP', 'test'),
    ('00000004_000.png', 'Thickening', '4', 'PA', 'tv'),  # unknown finding
    ('00000005_000.png', 'Mass', '5', 'PA', 'tv'),  # missing image
    ('00000006_000.png', 'Nodule|Infiltration', '6', 'AP', 'tv'),
    ('00000007_000.png', 'Pneumothorax|Effusion', '7', 'PA', 'tv'),
    ('00000007_001.png', 'Effusion', '7', 'PA', 'tv'),
    ('00000008_000.png', 'Atelectasis|Consolidation|Edema', '8', 'AP', 'tv'),
    ('00000009_000.png', 'Fibrosis|Pneumonia', '9', 'PA', 'tv'),
    ('00000010_000.png', 'No Finding', '10', 'PA', 'test'),
    ('00000011_000.png', 'Mass|Nodule', '11', 'PA', None),  # in no list
    ('00000001_000.png', 'Cardiomegaly', '1', 'PA', 'tv'),  # duplicate row
]
NIH_NO_IMAGE = {'00000005_000.png'}
NIH_UNLABELLED = 'images_002/images/00000099_000.png'

# CheXpert: (csv, path under CheXpert-v1.0-small/, sex, age, frontal,
# ap_pa, {label: value}); values as the CSV writes them.
CHEXPERT_ROWS = [
    ('train', 'train/patient00001/study1/view1_frontal.jpg', 'Female', '68',
     'Frontal', 'AP', {'No Finding': '1.0', 'Pneumothorax': '0.0',
                       'Support Devices': '1.0'}),
    ('train', 'train/patient00001/study1/view2_lateral.jpg', 'Female', '68',
     'Lateral', '', {'No Finding': '1.0'}),
    ('train', 'train/patient00001/study2/view1_frontal.jpg', 'Female', '69',
     'Frontal', 'PA', {'Cardiomegaly': '-1.0', 'Edema': '1.0'}),
    ('train', 'train/patient00002/study1/view1_frontal.jpg', 'Male', '83',
     'Frontal', 'AP', {'Lung Opacity': '1.0', 'Pleural Effusion': '-1.0',
                       'Atelectasis': '-1.0', 'Support Devices': '0.0'}),
    ('train', 'train/patient00003/study1/view1_frontal.jpg', 'Male', '40',
     'Frontal', 'PA', {'Edema': '2.0'}),  # unknown value
    ('train', 'train/patient00004/study1/view1_frontal.jpg', 'Female', '50',
     'Frontal', 'AP', {'Fracture': '1.0'}),  # missing image
    ('train', 'train/patient00005/study1/view1_frontal.jpg', 'Unknown', '0',
     'Frontal', 'LL', {'Pneumonia': '1.0', 'Consolidation': '0.0'}),
    ('train', 'train/patient00006/study1/view1_frontal.jpg', 'Male', '77',
     'Frontal', 'AP', {'Pleural Effusion': '1.0', 'Lung Lesion': '1.0'}),
    ('train', 'train/patient00006/study1/view2_lateral.jpg', 'Male', '77',
     'Lateral', '', {'Pleural Effusion': '1.0', 'Lung Lesion': '1.0'}),
    ('train', 'train/patient00007/study3/view1_frontal.jpg', 'Female', '30',
     'Frontal', 'PA', {'No Finding': '1.0'}),
    ('train', 'train/patient00002/study1/view1_frontal.jpg', 'Male', '83',
     'Frontal', 'AP', {'Lung Opacity': '1.0'}),  # duplicate row
    ('valid', 'valid/patient64541/study1/view1_frontal.jpg', 'Male', '73',
     'Frontal', 'AP', {'Cardiomegaly': '1.0', 'Lung Opacity': '1.0',
                       'Pleural Effusion': '0.0'}),
    ('valid', 'valid/patient64542/study1/view2_lateral.jpg', 'Male', '70',
     'Lateral', '', {'No Finding': '0.0', 'Support Devices': '1.0'}),
]
CHEXPERT_NO_IMAGE = {'train/patient00004/study1/view1_frontal.jpg'}
CHEXPERT_UNLABELLED = 'train/patient00099/study1/view1_frontal.jpg'

# MIMIC: studies (subject, study) -> {label: value}; images (dicom,
# subject, study, view, split). Study 3's label row is missing; image d5's
# file is missing.
MIMIC_STUDIES = {
    ('10000032', '50414267'): {'No Finding': '1.0'},
    ('10000032', '53189527'): {'Edema': '-1.0', 'Pleural Effusion': '1.0'},
    ('10000764', '57375967'): {'Pneumonia': '1.0', 'Atelectasis': '0.0'},
    ('10000980', '51967283'): {'Cardiomegaly': '1.0', 'Fracture': '-1.0'},
    ('19999999', '59999999'): {'Lung Lesion': '1.0'},  # no image
}
MIMIC_IMAGES = [
    ('d1', '10000032', '50414267', 'PA', 'train'),
    ('d2', '10000032', '50414267', 'LATERAL', 'train'),
    ('d3', '10000032', '53189527', 'AP', 'train'),
    ('d4', '10000764', '57375967', 'AP', 'validate'),
    ('d5', '10000764', '57375967', 'LL', 'validate'),  # missing image
    ('d6', '10000980', '51967283', 'PA', 'test'),
    ('d7', '10000980', '58888888', 'PA', 'test'),  # no label row
]


def _image(root, rel, fmt='PNG', size=(20, 16)):
  """A small image whose content is unique to its path."""
  path = os.path.join(root, rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(zlib.crc32(rel.encode()))
  Image.fromarray(rng.integers(0, 256, (size[1], size[0]), np.uint8)).save(
      path, fmt)


def _write_csv(path, header, rows, compress=False):
  text = io.StringIO()
  text.write(header + '\n')
  csv.writer(text, lineterminator='\n').writerows(rows)
  data = text.getvalue().encode()
  with open(path, 'wb') as f:
    f.write(gzip.compress(data, mtime=0) if compress else data)


def make_nih(root, rows=NIH_ROWS):
  os.makedirs(root)
  table = []
  for i, (name, findings, patient, view, _) in enumerate(rows):
    table.append([name, findings, 0, patient, 40 + i, 'MF'[i % 2], view, 20,
                  16, 0.14, 0.14])
    if name not in NIH_NO_IMAGE:
      folder = 'images_001/images' if i % 2 else 'images_002/images'
      if not any(name in files for _, _, files in os.walk(root)):
        _image(root, f'{folder}/{name}')
  _image(root, NIH_UNLABELLED)
  _write_csv(os.path.join(root, 'Data_Entry_2017_v2020.csv'), NIH_HEADER,
             table)
  for name, which in ((sources.nih.TRAIN_VAL_LIST, 'tv'), (sources.nih.TEST_LIST,
                                                      'test')):
    with open(os.path.join(root, name), 'w') as f:
      f.writelines(sorted({r[0] + '\n' for r in rows if r[4] == which}))
  return root


def make_chexpert(root, rows=CHEXPERT_ROWS, header=CHEXPERT_HEADER):
  os.makedirs(root)
  folder = os.path.basename(root)
  tables = collections.defaultdict(list)
  for which, path, sex, age, frontal, ap_pa, values in rows:
    tables[which].append([f'{folder}/{path}', sex, age, frontal, ap_pa] +
                         [values.get(n, '') for n in sources.chexpert.LABELS])
    if path not in CHEXPERT_NO_IMAGE and '..' not in path:
      _image(root, path, 'JPEG')
  _image(root, CHEXPERT_UNLABELLED, 'JPEG')
  for which in ('train', 'valid'):
    _write_csv(os.path.join(root, f'{which}.csv'), header, tables[which])
  return root


def _mimic_path(dicom, subject, study):
  return f'files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg'


def make_mimic(root, images=MIMIC_IMAGES):
  os.makedirs(root)
  _write_csv(os.path.join(root, sources.mimic.LABELS_FILE),
             ','.join(['subject_id', 'study_id'] + MIMIC_LABEL_COLUMNS),
             [[s, t] + [v.get(n, '') for n in MIMIC_LABEL_COLUMNS]
              for (s, t), v in MIMIC_STUDIES.items()], compress=True)
  _write_csv(os.path.join(root, sources.mimic.METADATA_FILE),
             'dicom_id,subject_id,study_id,PerformedProcedureStepDescription,'
             'ViewPosition,Rows,Columns',
             [[d, s, t, 'CHEST (PA AND LAT)', v, 16, 20]
              for d, s, t, v, _ in images], compress=True)
  _write_csv(os.path.join(root, sources.mimic.SPLIT_FILE),
             'dicom_id,study_id,subject_id,split',
             [[d, t, s, split] for d, s, t, _, split in images],
             compress=True)
  for d, s, t, _, _ in images:
    if d != 'd5':
      _image(root, _mimic_path(d, s, t), 'JPEG')
  _image(root, _mimic_path('d9', '10000980', '51967283'), 'JPEG')  # unlabelled
  return root


def make_own(root, rows):
  """A csv-layout folder: rows (path, patient, Effusion, Nodule)."""
  os.makedirs(root)
  for path, *_ in rows:
    if path != 'scans/missing.png' and '..' not in path:
      if not os.path.exists(os.path.join(root, path)):
        _image(root, path)
  _image(root, 'scans/extra.png')  # unlabelled
  _write_csv(os.path.join(root, 'labels.csv'),
             'path,patient_id,Effusion,Nodule', rows)
  return root


OWN_ROWS = [
    ('scans/a1.png', 'A', '1', ''), ('scans/a2.png', 'A', '1.0', '0'),
    ('scans/b1.png', 'B', '-1', '1'), ('scans/c1.png', 'C', '0', '-1'),
    ('scans/d1.png', 'D', 'yes', '0'),  # unknown label value
    ('scans/missing.png', 'E', '1', '1'),
    ('scans/f1.png', 'F', '', ''), ('scans/g1.png', 'G', '1', '1'),
    ('scans/h1.png', 'H', '0', '0'), ('scans/b1.png', 'B', '-1', '1'),
]

def _plan(src, layout, split_method='official', val_fraction=None,
          test_fraction=None, seed=0, progress=sources.NO_PROGRESS,
          **csv_options):
  """The plan of a labelled source, its options by name."""
  options = sources.SOURCES[layout].Options(
      split=split_method, val_fraction=val_fraction,
      test_fraction=test_fraction, **csv_options)
  return sources.plan(src, options, seed, progress)


def _check_fractions(layout, split_method, val_fraction, test_fraction):
  """A labelled source's (val, test) fractions as its options check them."""
  return sources.SOURCES[layout].Options(
      split=split_method, val_fraction=val_fraction,
      test_fraction=test_fraction).check()


def _draw(files, num_labels, fractions, seed=0):
  """The one drawer with fraction targets: {split: files}."""
  drawn, counts = sources.splits.draw_splits(files, fractions, seed,
                                     num_labels=num_labels)
  assert counts is None
  return drawn



def _hash(value):
  return hmac.new(SALT.encode(), value.encode(), 'sha256').hexdigest()[:16]


def _convert(src, out, **kwargs):
  kwargs.setdefault('patient_id_salt', SALT)
  return writer.convert(src, out, image_size=STORED, num_workers=1,
                        progress=False, **kwargs)


def _records(out):
  """{split: [example dicts]} read with TFDS."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(out)
  return {split: list(tfds.as_numpy(builder.as_dataset(split=split)))
          for split in builder.info.splits}


def _recount(rows_by_split, label_names):
  """{split: {label: {code str: n}}} of (split, codes) rows."""
  counts = {}
  for split, codes in rows_by_split:
    entry = counts.setdefault(split, {n: collections.Counter()
                                      for n in label_names})
    for name, code in zip(label_names, codes):
      entry[name][str(code)] += 1
  return {s: {n: {str(c): e[n][str(c)] for c in schema.LABEL_CODES}
              for n in label_names} for s, e in counts.items()}


def _assert_accounted(info, num_rows):
  counts = info['counts']
  assert counts['scanned'] == num_rows
  assert (counts['written'] + counts['skipped'] + counts['duplicates'] ==
          num_rows)
  assert counts['skipped'] == len(info['skipped'])
  assert counts['duplicates'] == len(info['duplicates'])
  assert counts['unlabelled'] == len(info['unlabelled'])
  assert info['patient_overlap'] == {'checked': True,
                                     'patients_in_more_than_one_split': 0}


def _code(value):
  return {'1.0': 1, '1': 1, '0.0': 0, '0': 0, '-1.0': -1, '-1': -1,
          '': -2}[value]


# -- parsing ------------------------------------------------------------------


@pytest.mark.parametrize('text, positives, unknown', [
    ('No Finding', set(), None),
    ('Pleural_Thickening', {'Pleural_Thickening'}, None),
    ('Effusion|Pleural_Thickening', {'Effusion', 'Pleural_Thickening'}, None),
    ('Thickening', None, 'Thickening'),
    ('Pleural Thickening', None, 'Pleural Thickening'),
    ('effusion', None, 'effusion'),
    ('', None, ''),
])
def test_nih_findings_are_parsed_exactly(text, positives, unknown):
  codes, reason = sources.nih.parse_findings(text)
  if positives is None:
    assert codes is None and repr(unknown) in reason
    assert reason.startswith('unknown label value')
  else:
    assert reason is None
    assert codes == tuple(int(n in positives) for n in sources.nih.LABELS)


@pytest.mark.parametrize('value, code', [
    ('1', 1), ('1.0', 1), (' 0 ', 0), ('0.0', 0), ('-1', -1), ('-1.0', -1),
    ('', -2), (None, -2), ('2', None), ('yes', None), ('1.5', None),
    ('-2', None)])
def test_label_codes(value, code):
  assert tables.parse_code(value) == code


def test_real_headers_are_what_the_parsers_need():
  nih_header = NIH_HEADER.split(',')
  assert set(sources.nih.COLUMNS) <= set(nih_header)
  chexpert_header = CHEXPERT_HEADER.split(',')
  assert chexpert_header == list(sources.chexpert.COLUMNS +
                                 sources.chexpert.LABELS)


def test_detects_the_layouts(tmp_path):
  nih = make_nih(str(tmp_path / 'nih'))
  chexpert = make_chexpert(str(tmp_path / 'CheXpert-v1.0-small'))
  mimic = make_mimic(str(tmp_path / 'mimic'))
  assert sources.detect(nih) == 'nih'
  assert sources.detect(chexpert) == 'chexpert'
  assert sources.detect(mimic) == 'mimic'
  kaggle = str(tmp_path / 'kaggle')
  for split in ('train', 'val', 'test'):
    for c in ('NORMAL', 'PNEUMONIA'):
      _image(kaggle, f'{split}/{c}/IM-0001-0001.jpeg', 'JPEG')
  assert sources.detect(kaggle) is None
  assert isinstance(sources.options(kaggle), class_folders.Options)
  assert class_folders.scan(kaggle).layout == 'kaggle'
  assert isinstance(sources.options(kaggle, labels_csv='x.csv'),
                    labels_csv.Options)
  assert isinstance(sources.options(nih), sources.nih.Options)
  both = str(tmp_path / 'both')
  make_chexpert(both)
  _write_csv(os.path.join(both, 'Data_Entry_2017.csv'), NIH_HEADER, [])
  with pytest.raises(sources.SourceError, match='more than one multi-label'):
    sources.detect(both)
  with pytest.raises(sources.SourceError, match='more than one multi-label'):
    sources.options(both)
  assert isinstance(sources.options(both, layout='nih'), sources.nih.Options)


# -- planning -----------------------------------------------------------------


def _planned(plan):
  return {f.path: split for split, files in plan.splits.items()
          for f in files}


def test_nih_plan_accounts_for_every_row_and_file(tmp_path):
  src = make_nih(str(tmp_path / 'nih'))
  plan = _plan(src, 'nih', seed=3)
  assert plan.label_names == sources.nih.LABELS == plan.class_names
  planned = _planned(plan)
  by_name = {os.path.basename(p): s for p, s in planned.items()}
  # Official split: test_list.txt is test, val is from train_val_list.txt.
  for name, _, _, _, which in NIH_ROWS:
    if name in by_name:
      assert (by_name[name] == 'test') == (which == 'test'), name
  assert set(plan.splits) == {'train', 'val', 'test'}
  assert plan.splits['val'], 'val is drawn from train_val_list.txt'
  reasons = {s['path']: s['reason'] for s in plan.skipped}
  assert 'unknown label value' in reasons[
      'images_001/images/00000004_000.png']
  assert reasons['00000005_000.png'] == 'missing image'
  assert 'in neither' in reasons['images_001/images/00000011_000.png']
  assert [d['dropped'] for d in plan.duplicates] == [
      'Data_Entry_2017_v2020.csv line 16']
  assert plan.unlabelled == [{'path': NIH_UNLABELLED,
                              'reason': 'no label row'}]
  assert len(planned) + len(plan.skipped) + len(plan.duplicates) == len(
      NIH_ROWS) == plan.num_scanned
  patients = collections.defaultdict(set)
  for f in (f for files in plan.splits.values() for f in files):
    patients[f.patient_id].add(planned[f.path])
    assert f.hash_ids
  assert all(len(s) == 1 for s in patients.values())
  assert plan.split_info['patient_overlap'] == {
      'checked': True, 'patients_in_more_than_one_split': 0}
  first = next(f for f in plan.splits['train'] + plan.splits['val']
               if f.path.endswith('00000001_001.png'))
  assert (first.patient_id, first.view) == ('1', 'PA')
  assert first.labels == tuple(int(n in ('Cardiomegaly', 'Emphysema'))
                               for n in sources.nih.LABELS)


def test_official_split_that_puts_a_patient_in_two_is_moved_to_test(
    tmp_path):
  rows = [r if r[0] != '00000007_001.png' else r[:4] + ('test',)
          for r in NIH_ROWS]
  src = make_nih(str(tmp_path / 'nih'), rows)
  plan = _plan(src, 'nih')
  planned = {os.path.basename(p): s for p, s in _planned(plan).items()}
  assert planned['00000007_000.png'] == planned['00000007_001.png'] == 'test'
  assert plan.split_info['source_overlap'] == {'patients': 1,
                                               'images_moved': 1}
  assert plan.split_info['patient_overlap'][
      'patients_in_more_than_one_split'] == 0


def test_chexpert_plan(tmp_path):
  src = make_chexpert(str(tmp_path / 'CheXpert-v1.0-small'))
  plan = _plan(src, 'chexpert')
  planned = _planned(plan)
  assert {p for p, s in planned.items() if s == 'test'} == {
      r[1] for r in CHEXPERT_ROWS if r[0] == 'valid'}
  assert plan.splits['val']
  reasons = {s['path']: s['reason'] for s in plan.skipped}
  assert reasons == {
      'train/patient00003/study1/view1_frontal.jpg':
          "unknown label value '2.0' in column 'Edema' (allowed: 1, 0, -1 "
          'or blank)',
      'train/patient00004/study1/view1_frontal.jpg': 'missing image'}
  assert [d['path'] for d in plan.duplicates] == [
      'train/patient00002/study1/view1_frontal.jpg']
  assert [u['path'] for u in plan.unlabelled] == [CHEXPERT_UNLABELLED]
  files = {f.path: f for fs in plan.splits.values() for f in fs}
  lateral = files['train/patient00001/study1/view2_lateral.jpg']
  assert (lateral.view, lateral.sex, lateral.age_years, lateral.patient_id,
          lateral.study_id) == ('LATERAL', 'F', 68, 'patient00001',
                                'patient00001/study1')
  assert files['train/patient00005/study1/view1_frontal.jpg'].view == 'LL'
  assert files['train/patient00005/study1/view1_frontal.jpg'].sex == ''
  uncertain = files['train/patient00001/study2/view1_frontal.jpg'].labels
  assert uncertain[sources.chexpert.LABELS.index('Cardiomegaly')] == -1
  assert uncertain[sources.chexpert.LABELS.index('Fracture')] == -2
  patients = collections.defaultdict(set)
  for path, split in planned.items():
    patients[files[path].patient_id].add(split)
  assert all(len(s) == 1 for s in patients.values())


def test_mimic_plan_uses_its_split_file(tmp_path):
  src = make_mimic(str(tmp_path / 'mimic'))
  plan = _plan(src, 'mimic')
  planned = {os.path.basename(p)[:-4]: s for p, s in _planned(plan).items()}
  assert planned == {'d1': 'train', 'd2': 'train', 'd3': 'train',
                     'd4': 'val', 'd6': 'test'}
  reasons = {os.path.basename(s['path'])[:-4]: s['reason']
             for s in plan.skipped}
  assert reasons['d5'] == 'missing image'
  assert reasons['d7'].startswith('no label row for its study')
  assert [os.path.basename(u['path']) for u in plan.unlabelled] == ['d9.jpg']
  assert any('1 label row(s) whose study has no image' in i
             for i in plan.ignored)
  files = {os.path.basename(f.path)[:-4]: f
           for fs in plan.splits.values() for f in fs}
  assert files['d3'].labels[sources.chexpert.LABELS.index('Edema')] == -1
  assert files['d3'].labels[sources.chexpert.LABELS.index('Pleural Effusion')] == 1
  assert files['d2'].view == 'LATERAL'


def test_mimic_resplit_needs_no_split_file(tmp_path):
  src = make_mimic(str(tmp_path / 'mimic'))
  os.remove(os.path.join(src, sources.mimic.SPLIT_FILE))
  with pytest.raises(sources.SourceError, match='split-file|split file'):
    _plan(src, 'mimic')
  plan = _plan(src, 'mimic', 'resplit', 0.2, 0.2)
  assert sum(len(fs) for fs in plan.splits.values()) == 5
  assert plan.split_info['patient_overlap'][
      'patients_in_more_than_one_split'] == 0


def test_csv_layout_plan(tmp_path):
  src = make_own(str(tmp_path / 'own'), OWN_ROWS)
  plan = _plan(src, 'csv', 'resplit', 0.2, 0.2,
                 labels_csv=os.path.join(src, 'labels.csv'),
                 label_columns='Effusion,Nodule')
  assert plan.label_names == ('Effusion', 'Nodule')
  files = {f.path: f for fs in plan.splits.values() for f in fs}
  assert files['scans/a2.png'].labels == (1, 0)
  assert files['scans/f1.png'].labels == (-2, -2)
  reasons = {s['path']: s['reason'] for s in plan.skipped}
  assert set(reasons) == {'scans/d1.png', 'scans/missing.png'}
  assert "unknown label value 'yes'" in reasons['scans/d1.png']
  assert [d['path'] for d in plan.duplicates] == ['scans/b1.png']
  assert [u['path'] for u in plan.unlabelled] == ['scans/extra.png']
  assert 'labels.csv' in plan.ignored


def test_resplit_spreads_positives_by_patient_and_is_deterministic():
  rng = np.random.default_rng(0)
  files = []
  for p in range(300):
    for i in range(int(rng.integers(1, 4))):
      labels = tuple(int(x) for x in (rng.random(3) < (0.3, 0.1, 0.02)))
      files.append(sources.SourceFile(f'p{p}/{i}.png', None, '', -1, f'p{p}',
                                      1, labels=labels))
  fractions = {'val': 0.2, 'test': 0.1}
  drawn = _draw(files, 3, fractions, seed=5)
  again = _draw(list(reversed(files)), 3, fractions, seed=5)
  assert {s: [f.path for f in fs] for s, fs in drawn.items()} == {
      s: [f.path for f in fs] for s, fs in again.items()}
  other = _draw(files, 3, fractions, seed=6)
  assert [f.path for f in other['val']] != [f.path for f in drawn['val']]
  assert sources.splits.check_patient_overlap(drawn)[
      'patients_in_more_than_one_split'] == 0
  assert sorted(f.path for fs in drawn.values() for f in fs) == sorted(
      f.path for f in files)
  total = np.sum([f.labels for f in files], axis=0)
  for split, share in (('val', 0.2), ('test', 0.1)):
    positives = np.sum([f.labels for f in drawn[split]], axis=0)
    # Within a few patients (at most 3 images each) of the target.
    assert np.all(np.abs(positives - share * total) <= 6), (split, positives)
    assert abs(len(drawn[split]) - share * len(files)) <= 9


def test_bad_split_arguments():
  with pytest.raises(sources.SourceError, match='no official split'):
    _check_fractions('csv', 'official', None, None)
  with pytest.raises(sources.SourceError, match='drop --test_fraction'):
    _check_fractions('nih', 'official', 0.1, 0.1)
  with pytest.raises(sources.SourceError, match='has its own val'):
    _check_fractions('mimic', 'official', 0.1, None)
  assert _check_fractions('mimic', 'official', None, None) == (
      None, None)
  with pytest.raises(sources.SourceError, match='leave nothing'):
    _check_fractions('nih', 'resplit', 0.6, 0.5)
  assert _check_fractions('chexpert', 'resplit', None, None) == (
      0.1, 0.1)


def test_fingerprint_follows_the_labels(tmp_path):
  src = make_own(str(tmp_path / 'own'), OWN_ROWS)
  kwargs = dict(labels_csv=os.path.join(src, 'labels.csv'),
                label_columns='Effusion,Nodule')
  plan = _plan(src, 'csv', 'resplit', 0.2, 0.2, **kwargs)
  shards = writer.plan_shards(plan, 'own', None, 0, (STORED, STORED))
  changed = dataclasses.replace(plan, splits={
      s: [dataclasses.replace(f, labels=tuple(-2 for _ in f.labels))
          for f in fs] for s, fs in plan.splits.items()})
  changed_shards = writer.plan_shards(changed, 'own', None, 0,
                                      (STORED, STORED))
  fingerprint = writer._fingerprint  # pylint: disable=protected-access
  assert fingerprint(plan, shards, {}) != fingerprint(changed,
                                                      changed_shards, {})


# -- conversion ---------------------------------------------------------------


@pytest.fixture(scope='module')
def nih_dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp('nih')
  src = make_nih(str(root / 'nih'))
  out = str(root / 'out')
  return src, out, _convert(src, out, seed=1)


def test_nih_conversion_counts_match_a_recount_of_the_csv(nih_dataset):
  src, out, info = nih_dataset
  on_disk = dataset_info.load_info(out)
  assert on_disk.label_names == sources.nih.LABELS and on_disk.is_multilabel
  assert json.load(open(os.path.join(out, schema.INFO_FILENAME))) == info
  _assert_accounted(info, len(NIH_ROWS))
  records = _records(out)
  split_of = {}  # hashed patient -> split, from the records
  for split, examples in records.items():
    for e in examples:
      split_of[e[schema.PATIENT_ID].decode()] = split
  # The recount: the CSV's rows, minus those the tree made unusable.
  with open(os.path.join(src, 'Data_Entry_2017_v2020.csv'), newline='') as f:
    rows = list(csv.DictReader(f))
  seen, usable = set(), []
  for row in rows:
    name = row['Image Index']
    which = {r[0]: r[4] for r in NIH_ROWS}[name]
    if (name in seen or name in NIH_NO_IMAGE or which is None or
        'Thickening' == row['Finding Labels']):
      continue
    seen.add(name)
    findings = set(row['Finding Labels'].split('|'))
    usable.append((split_of[_hash(row['Patient ID'])],
                   [int(n in findings) for n in sources.nih.LABELS]))
  expected = _recount(usable, sources.nih.LABELS)
  assert {s: e['label_code_counts'] for s, e in info['splits'].items()} == \
      expected
  for split, entry in info['splits'].items():
    assert entry['class_counts'] == {
        n: expected[split][n]['1'] for n in sources.nih.LABELS}
    assert on_disk.label_code_counts(split) == {
        n: {int(c): v for c, v in expected[split][n].items()}
        for n in sources.nih.LABELS}
  assert sum(len(e) for e in records.values()) == len(usable)
  assert {s: len(e) for s, e in records.items()} == {
      s: e['num_examples'] for s, e in info['splits'].items()}


def test_nih_records_hide_the_ids_and_tfds_reads_them(nih_dataset):
  _, out, info = nih_dataset
  records = _records(out)
  test = {e[schema.PATIENT_ID].decode(): e for e in records['test']}
  assert set(test) == {_hash('3'), _hash('10')}
  example = [e for e in records['test']
             if e[schema.PATIENT_ID].decode() == _hash('3')]
  stored = sorted(e[schema.FILENAME].decode() for e in example)
  assert stored == [f'images_001/images/{_hash("3")}_000.png',
                    f'images_002/images/{_hash("3")}_001.png']
  by_name = {e[schema.FILENAME].decode(): e for e in example}
  first = by_name[f'images_001/images/{_hash("3")}_000.png']
  assert first[schema.LABELS].shape == (14,)
  assert list(first[schema.LABELS]) == [
      int(n in ('Effusion', 'Pleural_Thickening')) for n in sources.nih.LABELS]
  assert first[schema.VIEW] == b'PA' and first[schema.STUDY_ID] == b''
  assert first[schema.AGE_YEARS] == 43 and first[schema.SEX] == b'F'
  assert first[schema.ENCODED].shape == (STORED, STORED, 1)
  for examples in records.values():
    for e in examples:
      assert b'0000000' not in e[schema.FILENAME]
  assert info['patient_id'].startswith('hashed')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  image, labels = next(iter(tfds.as_numpy(tfds.builder_from_directory(
      out).as_dataset(split='val', as_supervised=True))))
  assert image.shape == (STORED, STORED, 1) and labels.shape == (14,)
  assert labels.dtype == np.int64
  features = json.load(open(os.path.join(out, 'features.json')))
  text = json.dumps(features)
  for key in (schema.LABELS, schema.VIEW, schema.SEX, schema.AGE_YEARS,
              schema.STUDY_ID):
    assert f'"{key}"' in text
  assert '"label"' not in text


def test_nih_dataset_verifies_and_reads(nih_dataset):
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  _, out, info = nih_dataset
  builder = pipeline.DatasetBuilder(out)
  assert builder.verify() == info['counts']['written']


def _shard_bytes(out):
  return {n: open(os.path.join(out, n), 'rb').read()
          for n in sorted(os.listdir(out)) if '.tfrecord-' in n}


def test_interrupted_multilabel_run_resumes_to_the_same_bytes(
    nih_dataset, tmp_path, monkeypatch):
  from xray_tfdata import imaging  # pylint: disable=g-import-not-at-top
  src, reference, reference_info = nih_dataset
  decode = imaging.decode_and_resize
  calls = []

  def interrupted(task):
    calls.append(task)
    if len(calls) > 4:
      raise KeyboardInterrupt
    return decode(task)
  monkeypatch.setattr(imaging, 'decode_and_resize', interrupted)
  out = str(tmp_path / 'out')
  with pytest.raises(KeyboardInterrupt):
    _convert(src, out, seed=1)
  assert not os.path.exists(out)
  monkeypatch.setattr(imaging, 'decode_and_resize',
                      lambda task: calls.append(task) or decode(task))
  calls.clear()
  info = _convert(src, out, seed=1)
  assert len(calls) == info['counts']['written'] - 4  # 4 shards were kept
  assert _shard_bytes(out) == _shard_bytes(reference)
  assert info['splits'] == reference_info['splits']


def test_single_and_multilabel_flags_do_not_mix(tmp_path):
  kaggle = str(tmp_path / 'kaggle')
  for split in ('train', 'val', 'test'):
    for c in ('NORMAL', 'PNEUMONIA'):
      _image(kaggle, f'{split}/{c}/IM-0001-0001.jpeg', 'JPEG')
  out = str(tmp_path / 'out')
  with pytest.raises(sources.SourceError, match='--split does not apply to the class folder layout'):
    _convert(kaggle, out, split='official')
  with pytest.raises(sources.SourceError, match='--labels_csv does not apply to the class folder'):
    _convert(kaggle, out, layout='kaggle', labels_csv='x.csv')
  nih = make_nih(str(tmp_path / 'nih'))
  with pytest.raises(sources.SourceError, match='--path_column does not apply to the nih layout'):
    _convert(nih, out, path_column='file')
  with pytest.raises(sources.SourceError, match='contradict'):
    _convert(nih, out, resplit=True, split='official')
  assert not os.path.exists(out)


@pytest.fixture(scope='module')
def chexpert_dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp('chexpert')
  src = make_chexpert(str(root / 'CheXpert-v1.0-small'))
  out = str(root / 'out')
  return src, out, _convert(src, out)


def test_chexpert_conversion_counts_match_a_recount(chexpert_dataset):
  src, out, info = chexpert_dataset
  _assert_accounted(info, len(CHEXPERT_ROWS))
  assert info['layout'] == 'chexpert' and info['split']['method'] == 'official'
  records = _records(out)
  split_of = {e[schema.PATIENT_ID].decode(): s
              for s, es in records.items() for e in es}
  usable, seen = [], set()
  for which in ('train', 'valid'):
    with open(os.path.join(src, f'{which}.csv'), newline='') as f:
      for row in csv.DictReader(f):
        path = row['Path'].split('/', 1)[1]
        if (path in seen or path in CHEXPERT_NO_IMAGE or
            row['Edema'] == '2.0'):
          continue
        seen.add(path)
        patient = path.split('/')[1]
        split = split_of[_hash(patient)]
        assert (split == 'test') == (which == 'valid')
        usable.append((split, [_code(row[n]) for n in sources.chexpert.LABELS]))
  expected = _recount(usable, sources.chexpert.LABELS)
  assert {s: e['label_code_counts'] for s, e in info['splits'].items()} == \
      expected
  # class_counts: the positives (code 1) only, never -1 or blank (-2),
  # which CheXpert has plenty of; recounted from the CSV and the records.
  for split, examples in records.items():
    stored = np.array([e[schema.LABELS] for e in examples])
    assert ((stored == -1).any() or (stored == -2).any()) or split == 'test'
    assert info['splits'][split]['class_counts'] == {
        n: expected[split][n]['1'] for n in sources.chexpert.LABELS} == {
            n: int((stored[:, i] == 1).sum())
            for i, n in enumerate(sources.chexpert.LABELS)}
  # Patient00005 is 0 years old (CheXpert's Age 0): 0, not unknown (-1).
  ages = {e[schema.PATIENT_ID].decode(): int(e[schema.AGE_YEARS])
          for es in records.values() for e in es}
  assert ages[_hash('patient00005')] == 0 and ages[_hash('patient00002')] == 83
  studies = {(e[schema.FILENAME].decode(), e[schema.STUDY_ID].decode(),
              e[schema.VIEW].decode()) for es in records.values() for e in es}
  p1 = _hash('patient00001')
  assert (f'train/{p1}/{_hash("patient00001/study1")}/view2_lateral.jpg',
          _hash('patient00001/study1'), 'LATERAL') in studies
  assert builder_verifies(out) == info['counts']['written']


def builder_verifies(out):
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.DatasetBuilder(out).verify()


def test_mimic_conversion(tmp_path):
  src = make_mimic(str(tmp_path / 'mimic'))
  info = _convert(src, str(tmp_path / 'out'))
  _assert_accounted(info, len(MIMIC_IMAGES))
  records = _records(str(tmp_path / 'out'))
  assert {s: len(e) for s, e in records.items()} == {'train': 3, 'val': 1,
                                                     'test': 1}
  usable = []
  split = {d: {'validate': 'val'}.get(s, s) for d, _, _, _, s in MIMIC_IMAGES}
  with gzip.open(os.path.join(src, sources.mimic.LABELS_FILE), 'rt') as f:
    labels = {(r['subject_id'], r['study_id']): r for r in csv.DictReader(f)}
  with gzip.open(os.path.join(src, sources.mimic.METADATA_FILE), 'rt') as f:
    for row in csv.DictReader(f):
      label = labels.get((row['subject_id'], row['study_id']))
      if row['dicom_id'] == 'd5' or label is None:
        continue
      usable.append((split[row['dicom_id']],
                     [_code(label[n]) for n in sources.chexpert.LABELS]))
  assert {s: e['label_code_counts'] for s, e in info['splits'].items()} == \
      _recount(usable, sources.chexpert.LABELS)
  names = [e[schema.FILENAME].decode() for es in records.values() for e in es]
  assert f'files/{_hash("10000032")}/{_hash("50414267")}/{_hash("d1")}.jpg' in \
      names
  assert not any('10000032' in n or '/p10/' in n for n in names)


def test_csv_conversion_and_resplit(tmp_path):
  src = make_own(str(tmp_path / 'own'), OWN_ROWS)
  out = str(tmp_path / 'out')
  info = _convert(src, out, resplit=True, val_fraction=0.2,
                  test_fraction=0.2, labels_csv=os.path.join(src, 'labels.csv'),
                  label_columns='Effusion,Nodule')
  _assert_accounted(info, len(OWN_ROWS))
  assert info['label_names'] == info['class_names'] == ['Effusion', 'Nodule']
  assert info['split'] == {
      'method': 'resplit', 'val_fraction': 0.2, 'test_fraction': 0.2,
      # 10 rows less an unknown value, a missing image and a duplicate.
      'images': {'pool': 7, 'requested': {'val': 1, 'test': 1},
                 'actual': {s: info['splits'][s]['num_examples']
                            for s in ('train', 'val', 'test')}}}
  assert info['arguments']['label_columns'] == 'Effusion,Nodule'
  records = _records(out)
  got = collections.Counter()
  for es in records.values():
    for e in es:
      got[(e[schema.PATIENT_ID].decode(), tuple(e[schema.LABELS]))] += 1
  expected = collections.Counter()
  seen = set()
  with open(os.path.join(src, 'labels.csv'), newline='') as f:
    for row in csv.DictReader(f):
      if row['path'] in seen or row['Effusion'] == 'yes' or (
          row['path'] == 'scans/missing.png'):
        continue
      seen.add(row['path'])
      expected[(_hash(row['patient_id']),
                (_code(row['Effusion']), _code(row['Nodule'])))] += 1
  assert got == expected
  assert builder_verifies(out) == sum(expected.values())


# -- bad input ----------------------------------------------------------------


@pytest.mark.parametrize('case, words', [
    ('no_column', "has no column 'AP/PA'"),
    ('outside', 'points outside src_dir'),
    ('absolute', 'points outside src_dir'),
    ('chexpert_outside', 'points outside src_dir'),
    ('empty', 'no usable image'),
    ('no_lists', 'has no test_list.txt'),
    ('counts', '--val_counts does not apply to the nih'),
    ('csv_official', 'the csv layout has no official split'),
])
def test_bad_input_raises_one_line_and_writes_nothing(tmp_path, case, words):
  src = str(tmp_path / 'CheXpert-v1.0-small')
  kwargs = {}
  if case == 'no_column':
    make_chexpert(src, header=CHEXPERT_HEADER.replace(',AP/PA', ',APPA'))
  elif case in ('outside', 'absolute', 'csv_official'):
    bad = '../escape.png' if case == 'outside' else '/etc/passwd'
    make_own(src, OWN_ROWS[:3] + [(bad, 'Z', '1', '1')])
    kwargs = dict(labels_csv=os.path.join(src, 'labels.csv'),
                  label_columns='Effusion,Nodule',
                  resplit=case != 'csv_official')
  elif case == 'chexpert_outside':
    make_chexpert(src, rows=CHEXPERT_ROWS[:2] + [
        ('train', '../../elsewhere/view1_frontal.jpg', 'Male', '1', 'Frontal',
         'AP', {})])
  elif case == 'empty':
    make_chexpert(src, rows=[r for r in CHEXPERT_ROWS
                             if r[1] in CHEXPERT_NO_IMAGE])
  else:
    make_nih(src)
    if case == 'no_lists':
      os.remove(os.path.join(src, sources.nih.TEST_LIST))
    else:
      kwargs = dict(val_counts={'Mass': 1})
  out = str(tmp_path / 'out')
  with pytest.raises(sources.SourceError) as raised:
    _convert(src, out, **kwargs)
  assert words in str(raised.value) and '\n' not in str(raised.value)
  assert not os.path.exists(out)
  assert not os.path.exists(out + writer.PARTIAL_SUFFIX)


@pytest.mark.slow
def test_tool_converts_and_refuses_bad_input(tmp_path):
  src = make_own(str(tmp_path / 'own'), OWN_ROWS[:6] +
                 [('../escape.png', 'Z', '1', '1')])
  out = str(tmp_path / 'out')
  args = [sys.executable, os.path.join('tools', 'make_tfrecords'),
          f'--src_dir={src}', f'--out_dir={out}',
          f'--labels_csv={src}/labels.csv', '--label_columns=Effusion,Nodule',
          '--resplit', '--image_size=16', '--num_workers=1',
          '--patient_id_salt=' + SALT]
  result = subprocess.run(args, cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'points outside src_dir' in lines[0], lines
  assert not os.path.exists(out)
  nih = make_nih(str(tmp_path / 'nih'))
  args = [sys.executable, os.path.join('tools', 'make_tfrecords'),
          f'--src_dir={nih}', f'--out_dir={out}', '--resplit',
          '--image_size=16', '--num_workers=1', '--patient_id_salt=' + SALT]
  result = subprocess.run(args, cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  assert 'unlabelled:' in result.stdout and NIH_UNLABELLED in result.stdout
  assert 'patients in more than one split: 0' in result.stdout
  info = json.load(open(os.path.join(out, schema.INFO_FILENAME)))
  assert info['layout'] == 'nih' and info['arguments']['split'] == 'resplit'
  _assert_accounted(info, len(NIH_ROWS))


# -- hostile label files (issue 32) ------------------------------------------


def _rewrite(path, edit):
  """Rewrites a (gzipped) CSV's bytes with edit(bytes) -> bytes."""
  with open(path, 'rb') as f:
    data = f.read()
  packed = path.endswith('.gz')
  data = edit(gzip.decompress(data) if packed else data)
  with open(path, 'wb') as f:
    f.write(gzip.compress(data, mtime=0) if packed else data)


def _cut_row(data, start, cells):
  """The CSV bytes with the row starting `start` cut to `cells` cells (a
  truncated file)."""
  lines = data.decode().split('\n')
  i = next(i for i, line in enumerate(lines) if line.startswith(start))
  lines[i] = ','.join(lines[i].split(',')[:cells])
  return '\n'.join(lines).encode()


def test_a_truncated_row_is_skipped_with_the_reason_never_read_as_blank(
    tmp_path):
  src = make_chexpert(str(tmp_path / 'CheXpert-v1.0-small'))
  cut = 'train/patient00001/study2/view1_frontal.jpg'
  # Cut after 'Edema' (the 11th cell): the labels after it would read as
  # blank, 'not mentioned'.
  _rewrite(os.path.join(src, 'train.csv'),
           lambda d: _cut_row(d, f'CheXpert-v1.0-small/{cut}', 11))
  plan = _plan(src, 'chexpert')
  assert cut not in _planned(plan)
  reasons = {s['path']: s['reason'] for s in plan.skipped}
  assert 'fewer cells than the header' in reasons[cut], reasons
  assert '(8 of 19)' in reasons[cut] or '11 of 19' in reasons[cut]
  own = make_own(str(tmp_path / 'own'), OWN_ROWS)
  _rewrite(os.path.join(own, 'labels.csv'),
           lambda d: _cut_row(d, 'scans/g1.png', 3))
  plan = _plan(own, 'csv', 'resplit', 0.2, 0.2,
                 labels_csv=os.path.join(own, 'labels.csv'),
                 label_columns='Effusion,Nodule')
  reasons = {s['path']: s['reason'] for s in plan.skipped}
  assert 'fewer cells than the header' in reasons['scans/g1.png']
  assert 'scans/g1.png' not in _planned(plan)


@pytest.mark.parametrize('which', ['labels', 'metadata', 'split'])
def test_a_short_mimic_row_is_skipped_with_the_reason(tmp_path, which):
  src = make_mimic(str(tmp_path / 'mimic'))
  name, start, cells = {
      'labels': (sources.mimic.LABELS_FILE, '10000032,53189527', 3),
      'metadata': (sources.mimic.METADATA_FILE, 'd3,', 2),
      'split': (sources.mimic.SPLIT_FILE, 'd3,', 1)}[which]
  _rewrite(os.path.join(src, name), lambda d: _cut_row(d, start, cells))
  plan = _plan(src, 'mimic')
  assert 'd3' not in {os.path.basename(p)[:-4] for p in _planned(plan)}
  reason = next(s['reason'] for s in plan.skipped if 'd3' in s['path'])
  assert 'fewer cells than the header' in reason and name in reason, reason
  assert len(_planned(plan)) + len(plan.skipped) + len(
      plan.duplicates) == plan.num_scanned


def test_mimic_conflicting_rows_are_reported_and_resolved_by_the_rule(
    tmp_path):
  src = make_mimic(str(tmp_path / 'mimic'))
  # A second label row for study 53189527 (d3) that disagrees, one for
  # 50414267 (d1, d2) that repeats the first, and a second split row for d4
  # (train) that disagrees with its first (validate) and one for d1 that
  # repeats it.
  def more_labels(data):
    return data + ('10000032,53189527' + ',' * len(MIMIC_LABEL_COLUMNS) +
                   '\n').encode() + data.decode().split('\n')[1].encode() + \
        b'\n'
  _rewrite(os.path.join(src, sources.mimic.LABELS_FILE), more_labels)
  _rewrite(os.path.join(src, sources.mimic.SPLIT_FILE),
           lambda d: d + b'd4,57375967,10000764,train\n'
           b'd1,50414267,10000032,train\n')
  plan = _plan(src, 'mimic')
  planned = {os.path.basename(p)[:-4]: s for p, s in _planned(plan).items()}
  # Disagreeing label rows: neither is used, the study's image is skipped.
  assert 'd3' not in planned
  reason = next(s['reason'] for s in plan.skipped if 'd3' in s['path'])
  assert 'label rows that disagree' in reason and 'line 3' in reason, reason
  # A repeated label row with the same codes is used once, and reported.
  assert planned['d1'] == planned['d2'] == 'train'
  # Two split rows that disagree: the evaluation split wins, and it is
  # reported.
  assert planned['d4'] == 'val'
  assert plan.split_info['patient_overlap'][
      'patients_in_more_than_one_split'] == 0
  ignored = ' '.join(plan.ignored)
  assert f'{sources.mimic.LABELS_FILE}: 2 stud' in ignored, plan.ignored
  assert f'{sources.mimic.SPLIT_FILE}: 2 image(s) with more than one row' in \
      ignored, plan.ignored
  assert '1 of them in two splits' in ignored


def test_byte_order_marks_are_read_everywhere(tmp_path):
  bom = '\ufeff'.encode()
  nih = make_nih(str(tmp_path / 'nih'))
  for name in (sources.nih.TRAIN_VAL_LIST, sources.nih.TEST_LIST):
    _rewrite(os.path.join(nih, name), lambda d: bom + d)
  plain = _plan(make_nih(str(tmp_path / 'nih2')), 'nih', seed=3)
  marked = _plan(nih, 'nih', seed=3)
  assert {os.path.basename(p): s for p, s in _planned(marked).items()} == {
      os.path.basename(p): s for p, s in _planned(plain).items()}
  mimic = make_mimic(str(tmp_path / 'mimic'))
  for name in (sources.mimic.LABELS_FILE, sources.mimic.METADATA_FILE,
               sources.mimic.SPLIT_FILE):
    _rewrite(os.path.join(mimic, name), lambda d: bom + d)
  assert len(_planned(_plan(mimic, 'mimic'))) == 5
  patients = tmp_path / 'patients.csv'
  patients.write_bytes(bom + b'path,patient_id\na.png,1\n')
  assert sources.patients.read_patient_csv(str(patients)) == {'a.png': '1'}


@pytest.mark.parametrize('case, words', [
    ('valid_header_only', 'valid.csv has no usable row'),
    ('train_header_only', 'train.csv has no usable row'),
    ('train_val_list_empty', 'train_val_list.txt names no usable image'),
    ('test_list_empty', 'test_list.txt names no usable image'),
])
def test_an_empty_official_split_is_refused_in_one_line(tmp_path, case,
                                                         words):
  src = str(tmp_path / 'CheXpert-v1.0-small')
  if case.startswith('valid') or case.startswith('train_header'):
    which = 'valid' if case.startswith('valid') else 'train'
    make_chexpert(src, rows=[r for r in CHEXPERT_ROWS if r[0] != which])
  else:
    make_nih(src)
    name = sources.nih.TRAIN_VAL_LIST if 'train' in case else sources.nih.TEST_LIST
    open(os.path.join(src, name), 'w').close()
  out = str(tmp_path / 'out')
  with pytest.raises(sources.SourceError) as raised:
    _convert(src, out)
  assert words in str(raised.value) and '\n' not in str(raised.value), \
      raised.value
  assert not os.path.exists(out)
  assert not os.path.exists(out + writer.PARTIAL_SUFFIX)


def test_draw_splits_of_no_files_is_empty():
  assert _draw([], 14, {'val': 0.1}) == {'train': [], 'val': []}


def test_no_finding_with_a_finding_is_skipped_for_that_reason():
  codes, reason = sources.nih.parse_findings('No Finding|Effusion')
  assert codes is None
  assert reason == ("'No Finding' together with a finding ('Effusion'): the "
                    'row contradicts itself')


def test_a_resplit_far_from_its_fractions_says_so(tmp_path):
  # 4 patients of 10 images each: a 0.1 val cannot be near 4 images.
  rows = [(f'scans/p{p}_{i}.png', f'P{p}', str(int(p == i % 4)), '0')
          for p in range(4) for i in range(10)]
  src = make_own(str(tmp_path / 'own'), rows)
  out = str(tmp_path / 'out')
  info = _convert(src, out, resplit=True, val_fraction=0.1,
                  test_fraction=0.1, labels_csv=os.path.join(src, 'labels.csv'),
                  label_columns='Effusion,Nodule')
  images = info['split']['images']
  assert images['requested'] == {'val': 4, 'test': 4}
  assert images['actual'] == {s: info['splits'][s]['num_examples']
                              for s in ('train', 'val', 'test')}
  assert images['actual']['val'] == 10
  buffer = io.StringIO()
  import contextlib  # pylint: disable=g-import-not-at-top
  with contextlib.redirect_stdout(buffer):
    writer.print_summary(info, out)
  assert ('warning: val holds 10 images, 4 requested (val_fraction 0.1 of '
          '40)') in buffer.getvalue(), buffer.getvalue()


# -- the planted-bug classes of issue 32 --------------------------------------


@pytest.mark.parametrize('value, years', [
    ('0', 0), ('000Y', 0), ('0.0', 0), ('0Y', 0), ('058Y', 58), ('57', 57),
    ('57.0', 57), (' 3 ', 3), ('', -1), (None, -1), ('abc', -1), ('-1', -1),
    ('200', -1), ('199', 199)])
def test_ages_parse_to_whole_years_an_infant_is_0_not_unknown(value, years):
  assert tables.parse_age(value) == years


def test_an_infants_age_survives_planning_in_every_layout(tmp_path):
  src = make_nih(str(tmp_path / 'nih'))
  table = os.path.join(src, 'Data_Entry_2017_v2020.csv')
  _rewrite(table, lambda d: d.replace(b',2,42,', b',2,000Y,'))
  files = {os.path.basename(f.path): f
           for fs in _plan(src, 'nih').splits.values() for f in fs}
  assert files['00000002_000.png'].age_years == 0
  assert files['00000001_001.png'].age_years == 41
  chexpert = _plan(make_chexpert(str(tmp_path / 'CheXpert-v1.0-small')),
                     'chexpert')
  files = {f.path: f for fs in chexpert.splits.values() for f in fs}
  assert files['train/patient00005/study1/view1_frontal.jpg'].age_years == 0


def test_a_chexpert_lateral_keeps_the_view_its_ap_pa_cell_holds(tmp_path):
  rows = CHEXPERT_ROWS + [
      ('train', 'train/patient00008/study1/view2_lateral.jpg', 'Male', '60',
       'Lateral', 'LL', {'Edema': '1.0'}),
      ('train', 'train/patient00008/study1/view3_lateral.jpg', 'Male', '60',
       'Lateral', 'RL', {'Edema': '1.0'}),
      ('train', 'train/patient00008/study1/view1_frontal.jpg', 'Male', '60',
       'Frontal', 'PA', {'Edema': '1.0'})]
  plan = _plan(make_chexpert(str(tmp_path / 'CheXpert-v1.0-small'), rows),
                 'chexpert')
  views = {f.path: f.view for fs in plan.splits.values() for f in fs}
  assert views['train/patient00008/study1/view2_lateral.jpg'] == 'LL'
  assert views['train/patient00008/study1/view3_lateral.jpg'] == 'RL'
  assert views['train/patient00008/study1/view1_frontal.jpg'] == 'PA'
  assert views['train/patient00001/study1/view2_lateral.jpg'] == 'LATERAL'
  assert views['train/patient00001/study1/view1_frontal.jpg'] == 'AP'
  assert views['train/patient00005/study1/view1_frontal.jpg'] == 'LL'


def test_mimic_first_label_row_is_never_replaced_by_a_later_one(tmp_path):
  """A repeated label row that disagrees never wins silently (last wins
  and first wins are both wrong: neither is used); one that repeats it
  changes nothing."""
  src = make_mimic(str(tmp_path / 'mimic'))
  plain = {os.path.basename(f.path): f.labels
           for fs in _plan(src, 'mimic').splits.values() for f in fs}
  first = '10000980,51967283'
  def repeat(data, change):
    line = next(l for l in data.decode().split('\n') if l.startswith(first))
    return data + (line.replace('1.0', '0.0') if change else line).encode() \
        + b'\n'
  _rewrite(os.path.join(src, sources.mimic.LABELS_FILE),
           lambda d: repeat(d, False))
  again = {os.path.basename(f.path): f.labels
           for fs in _plan(src, 'mimic').splits.values() for f in fs}
  assert again == plain
  _rewrite(os.path.join(src, sources.mimic.LABELS_FILE),
           lambda d: repeat(d, True))
  plan = _plan(src, 'mimic', 'resplit', 0.2, 0.2)
  labels = {os.path.basename(f.path): f.labels
            for fs in plan.splits.values() for f in fs}
  assert 'd6.jpg' not in labels
  assert 'label rows that disagree' in next(
      s['reason'] for s in plan.skipped if s['path'].endswith('d6.jpg'))


@pytest.mark.parametrize('val, test', [(0.5, 0.5), (0.7, 0.3), (0.9, 0.1),
                                       (0.6, 0.4), (0.8, 0.25)])
def test_fractions_adding_up_to_1_leave_nothing_and_are_refused(
    tmp_path, val, test):
  with pytest.raises(sources.SourceError, match='leave nothing'):
    _check_fractions('nih', 'resplit', val, test)
  with pytest.raises(sources.SourceError, match='leave nothing'):
    sources.splits.check_counts(resplit=True, val_fraction=val,
                                  test_fraction=test)
  src = make_nih(str(tmp_path / 'nih'))
  out = str(tmp_path / 'out')
  with pytest.raises(sources.SourceError, match='leave nothing'):
    _convert(src, out, resplit=True, val_fraction=val, test_fraction=test)
  assert not os.path.exists(out) and not os.path.exists(
      out + writer.PARTIAL_SUFFIX)
  assert _check_fractions('nih', 'resplit', 0.45, 0.45) == (0.45,
                                                                    0.45)


def _file(path, patient):
  return sources.SourceFile(path, None, '', -1, patient, 1, labels=(1,))


def test_patient_overlap_counts_each_patient_in_two_or_more_splits():
  splits = {'train': [_file('a', 'P1'), _file('b', 'P2'), _file('b2', 'P2')],
            'val': [_file('c', 'P1'), _file('d', 'P3')],
            'test': [_file('e', 'P4'), _file('f', 'P4')]}
  assert sources.splits.check_patient_overlap(splits) == {
      'checked': True, 'patients_in_more_than_one_split': 1}
  splits['test'].append(_file('g', 'P1'))  # P1 in three: still one patient
  splits['test'].append(_file('h', 'P3'))
  assert sources.splits.check_patient_overlap(splits)[
      'patients_in_more_than_one_split'] == 2
  assert sources.splits.check_patient_overlap({'train': splits['train']})[
      'patients_in_more_than_one_split'] == 0


def test_a_plan_with_a_patient_in_two_splits_is_refused(tmp_path,
                                                        monkeypatch):
  """The safety check itself: a split planner that puts a patient in two
  splits (a bug) stops the conversion in one line, before anything is
  written."""
  src = make_own(str(tmp_path / 'own'), OWN_ROWS)

  def leaky(files, targets, seed=0, class_names=None, num_labels=None,
            progress=None):
    # One patient in two splits: scans/a1.png in val, a2.png (patient A
    # too) in train.
    del targets, seed, class_names, num_labels, progress
    ordered = sorted(files, key=lambda f: f.path)
    assert [f.patient_id for f in ordered[:2]] == ['A', 'A']
    return {'train': ordered[1:], 'val': ordered[:1], 'test': []}, None
  monkeypatch.setattr(sources.splits, 'draw_splits', leaky)
  out = str(tmp_path / 'out')
  with pytest.raises(sources.SourceError) as raised:
    _convert(src, out, resplit=True, labels_csv=os.path.join(src, 'labels.csv'),
             label_columns='Effusion,Nodule')
  assert '1 patient(s) would be in two splits' in str(raised.value)
  assert '\n' not in str(raised.value)
  assert not os.path.exists(out) and not os.path.exists(
      out + writer.PARTIAL_SUFFIX)


def test_the_writer_counts_the_overlap_again_before_finishing():
  splits = {'train': [_file('a', 'P1'), _file('b', 'P2')],
            'val': [_file('c', 'P1')], 'test': [_file('d', 'P3')]}
  plan = sources.Plan('src', 'csv', ('A',), splits, [], [], 4,
                      label_names=('A',), split_info={'method': 'resplit'})
  with pytest.raises(sources.SourceError, match='a patient is in two splits'):
    writer._written_split_info(plan, {})  # pylint: disable=protected-access
  splits['val'] = [_file('c', 'P4')]
  assert writer._written_split_info(plan, {})['patient_overlap'] == {  # pylint: disable=protected-access
      'checked': True, 'patients_in_more_than_one_split': 0}


def test_planning_reports_its_progress_with_counts_that_add_up(tmp_path):
  src = make_nih(str(tmp_path / 'nih'))
  stream = io.StringIO()
  plan = _plan(src, 'nih', 'resplit', progress=sources.Progress(
      interval=0, stream=stream))
  lines = stream.getvalue().splitlines()
  last = {line.split(':')[0]: line for line in lines if line.endswith('done')}
  # Each stage's last line counts what it went through, recounted here.
  files = sum(len(fs) for folder in ('images_001', 'images_002')
              for _, _, fs in os.walk(os.path.join(src, folder)))
  assert last['scanning 2 image folders'].startswith(
      f'scanning 2 image folders: {files} files (')
  assert last['reading Data_Entry_2017_v2020.csv'].startswith(
      f'reading Data_Entry_2017_v2020.csv: {len(NIH_ROWS)} of '
      f'{len(NIH_ROWS)} rows (')
  planned = sum(len(fs) for fs in plan.splits.values())
  patients = len({f.patient_id for fs in plan.splits.values() for f in fs})
  assert last['drawing splits by patient'].startswith(
      f'drawing splits by patient: {patients} of {patients} patients (')
  assert 'looking for DICOM files (their pixels are hashed)' in last
  assert 'hashing files of equal size for duplicates' in last
  assert planned and len(lines) > len(last)
  # The default interval keeps a small conversion quiet.
  quiet = io.StringIO()
  _plan(src, 'nih', 'resplit', progress=sources.Progress(stream=quiet))
  assert quiet.getvalue() == ''
