"""The labelled sources' stand-in trees (NIH, CheXpert, MIMIC, a labels
CSV) and the helpers their tests share: planning and converting them, reading
and recounting what was written."""

import collections
import csv
import gzip
import hmac
import io
import os
import zlib

import numpy as np
from PIL import Image

from xray_tfdata import schema
from xray_tfdata import sources
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


def _planned(plan):
  return {f.path: split for split, files in plan.splits.items()
          for f in files}


def builder_verifies(out):
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.DatasetBuilder(out).verify()


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


def _file(path, patient):
  return sources.SourceFile(path, None, '', -1, patient, 1, labels=(1,))
