"""A synthetic VinDr-CXR tree, in either of its real file layouts.

release='competition' (Kaggle's VinBigData challenge): `train.csv`
(`image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max`;
three radiologists per train image, each with their own rows: a box per
finding they marked, or one `No finding` row, class 14, boxes blank) and
DICOMs `train/<image_id>.dicom`, `test/<image_id>.dicom` (test unlabelled).

release='physionet' (VinDr-CXR 1.0.0): `annotations/image_labels_train.csv`
(`image_id, rad_ID` and 0/1 per local and global label, a row per reader),
`annotations/annotations_train.csv` (`image_id, rad_id, x_min, y_min, x_max,
y_max, class_name`, `No finding` rows without boxes), and the test split's
consensus in `image_labels_test.csv` and `annotations_test.csv` (no reader
column); DICOMs under `train/` and `test/`. These two layouts are written
from the dataset's documentation; the competition's header and class ids
are checked against the real train.csv.

Readers disagree: each marks a present finding with probability 0.85 and
an absent one with 0.02, so that the reader policies (any, majority, all)
give different labels. Boxes are in the DICOM's stored pixels, around the
drawn finding. Pleural effusion and Cardiomegaly show in the pixels; the
DICOMs are 12-bit, a fifth MONOCHROME1 (stored values inverted).
"""

import numpy as np

from xray_tfdata.synthetic import draw
from xray_tfdata.synthetic import tree

LAYOUT = 'vindr'
RELEASES = ('competition', 'physionet')
_STREAM = 4  # the random stream of this layout (tree.write_planned)
DEFAULT_SIZE_SCALE = 0.06  # of about 2,800 x 2,400 px: 140-170 px images
# The competition's classes by class_id (train.csv).
CLASSES = ('Aortic enlargement', 'Atelectasis', 'Calcification',
           'Cardiomegaly', 'Consolidation', 'ILD', 'Infiltration',
           'Lung Opacity', 'Nodule/Mass', 'Other lesion', 'Pleural effusion',
           'Pleural thickening', 'Pneumothorax', 'Pulmonary fibrosis',
           'No finding')
NO_FINDING = 'No finding'
COMPETITION_HEADER = ('image_id', 'class_name', 'class_id', 'rad_id', 'x_min',
                      'y_min', 'x_max', 'y_max')
# PhysioNet's image_labels: 22 local labels, then 6 global ones.
PHYSIONET_LABELS = (
    'Aortic enlargement', 'Atelectasis', 'Calcification', 'Cardiomegaly',
    'Clavicle fracture', 'Consolidation', 'Edema', 'Emphysema', 'Enlarged PA',
    'ILD', 'Infiltration', 'Lung Opacity', 'Lung cavity', 'Lung cyst',
    'Mediastinal shift', 'Nodule/Mass', 'Pleural effusion',
    'Pleural thickening', 'Pneumothorax', 'Pulmonary fibrosis',
    'Rib fracture', 'Other lesion', 'COPD', 'Lung tumor', 'Pneumonia',
    'Tuberculosis', 'Other disease', 'No finding')
VISIBLE_LABELS = ('Pleural effusion', 'Cardiomegaly')
READERS = 3  # per train image
# The 17 radiologists; three of them read most images (R8, R9, R10).
_RADIOLOGISTS = tuple(f'R{i}' for i in range(1, 18))
_RADIOLOGIST_WEIGHTS = np.array([2 if i in (8, 9, 10) else 0.3
                                 for i in range(1, 18)])
_PREVALENCE = {label: 0.04 for label in CLASSES[:-1]}
_PREVALENCE.update({'Pleural effusion': 0.25, 'Cardiomegaly': 0.22,
                    'Aortic enlargement': 0.12, 'Pleural thickening': 0.08})
_GLOBAL_PREVALENCE = {'COPD': 0.03, 'Lung tumor': 0.04, 'Pneumonia': 0.06,
                      'Tuberculosis': 0.05, 'Other disease': 0.1}
_SENSITIVITY, _FALSE_MARK = 0.85, 0.02
_TEST = 0.2  # of images (the real sets: 15,000 train, 3,000 test)
_MONOCHROME1 = 0.2


def make_synthetic_vindr(out_dir, num_images=tree.DEFAULT_NUM_IMAGES, seed=0,
                         size_scale=None, num_workers=None, progress=False,
                         release='competition', source_style=False):
  """Writes a VinDr-CXR tree into `out_dir`: DICOMs, train and test.

  Args:
    out_dir, num_images, seed, size_scale, num_workers, progress,
      source_style: as tree.write_planned.
    release: 'competition' or 'physionet' (see the module docstring).

  Returns:
    tree.write_planned's summary plus the recount: release, rows (label
    rows written per file), readers {rad_id: train images read},
    readers_per_image {n: train images}, marked {label: {k: train images
    that k readers marked with it}} (k = 0 left out), boxes {label: box
    rows}, no_finding_rows, consensus {label: test images} (physionet).

  Raises:
    tree.SyntheticError: as tree.write_planned; an unknown release;
      pydicom missing.
  """
  if release not in RELEASES:
    raise tree.SyntheticError(
        f'release must be one of {", ".join(RELEASES)}, got {release!r}')
  tree.pydicom()  # fail here, in one line, not in every worker
  plan = lambda rng, n, scale: _plan(rng, n, scale, release)
  return tree.write_planned(
      out_dir, LAYOUT, _STREAM, plan, num_images, seed, size_scale,
      DEFAULT_SIZE_SCALE, num_workers, progress, _recount, source_style)


def _plan(rng, num_images, size_scale, release):
  images = []
  for index in range(num_images):
    truth = {label: bool(rng.random() < p) for label, p in _PREVALENCE.items()}
    height = tree.scaled(int(np.clip(rng.normal(2800, 250), 2000, 3500)),
                         size_scale)
    width = tree.scaled(int(np.clip(rng.normal(2400, 250), 1800, 3200)),
                        size_scale)
    split = 'test' if index >= num_images * (1 - _TEST) else 'train'
    image_id = rng.bytes(16).hex()
    sides = ([-1, 1] if rng.random() < 0.4 else [int(rng.choice([-1, 1]))])
    image = tree.image_record(
        rng, f'{split}/{image_id}.dicom', width, height, False, truth,
        VISIBLE_LABELS, effusion_sides=sides, image_id=image_id,
        patient=image_id, study=image_id, split=split, findings=truth,
        stored=(12, int(rng.integers(100, 600)), int(rng.integers(3200, 4096))),
        dicom={'photometric': 'MONOCHROME1' if rng.random() < _MONOCHROME1
               else 'MONOCHROME2', 'patient_id': '',
               **_sex_and_age(image_id)})
    image['global'] = {label: int(rng.random() < p)
                       for label, p in _GLOBAL_PREVALENCE.items()}
    if split == 'train':
      chosen = rng.choice(len(_RADIOLOGISTS), READERS, replace=False,
                          p=_RADIOLOGIST_WEIGHTS / _RADIOLOGIST_WEIGHTS.sum())
      image['reads'] = {_RADIOLOGISTS[i]: _read(rng, image)
                        for i in sorted(chosen)}
    else:
      # The test split's consensus: the truth itself, boxes by one reader.
      image['reads'] = {None: _read(rng, image, sensitivity=1.0,
                                    false_mark=0.0)}
    images.append(image)
  files = (_competition_files(images) if release == 'competition' else
           _physionet_files(images))
  return images, files


def _sex_and_age(image_id):
  """PatientSex and PatientAge as the release keeps them ('045Y'; 'O' and
  blank cells too), from the image id's hex digits: the random stream, and
  so every other byte of a tree, is as before they were written."""
  digits = int(image_id[:4], 16)
  return {'PatientSex': ('M', 'F', 'M', 'F', 'O', '')[digits % 6],
          'PatientAge': '' if digits % 7 == 0 else
                        f'{18 + (digits >> 3) % 70:03d}Y'}


def _read(rng, image, sensitivity=_SENSITIVITY, false_mark=_FALSE_MARK):
  """One reader's marks: {label: [boxes]}, {} for No finding."""
  marks = {}
  for label in CLASSES[:-1]:
    chance = sensitivity if image['findings'][label] else false_mark
    if rng.random() < chance:
      if label == 'Pleural effusion' and image['effusion']:
        boxes = [draw.finding_box(rng, 'effusion', image['height'],
                                  image['width'], side)
                 for side in image['effusion_sides']]
      elif label == 'Cardiomegaly' and image['cardiomegaly']:
        boxes = [draw.finding_box(rng, 'cardiomegaly', image['height'],
                                  image['width'])]
      else:
        boxes = [draw.finding_box(rng, 'other', image['height'],
                                  image['width'])]
      marks[label] = boxes
  return marks


def _competition_files(images):
  rows = [list(COMPETITION_HEADER)]
  for image in images:
    if image['split'] != 'train':
      continue  # the competition's test images are unlabelled
    for reader, marks in image['reads'].items():
      if not marks:
        rows.append([image['image_id'], NO_FINDING, CLASSES.index(NO_FINDING),
                     reader, '', '', '', ''])
      for label, boxes in marks.items():
        rows += [[image['image_id'], label, CLASSES.index(label), reader,
                  *box] for box in boxes]
  return {'train.csv': tree.csv_bytes(rows)}


def _physionet_files(images):
  files = {}
  for split in ('train', 'test'):
    reader_column = ['rad_ID'] if split == 'train' else []
    labels = [['image_id', *reader_column, *PHYSIONET_LABELS]]
    boxes = [['image_id', *(['rad_id'] if split == 'train' else []), 'x_min',
              'y_min', 'x_max', 'y_max', 'class_name']]
    for image in images:
      if image['split'] != split:
        continue
      for reader, marks in image['reads'].items():
        reader_cell = [reader] if split == 'train' else []
        values = {label: int(label in marks) for label in PHYSIONET_LABELS}
        values.update(image['global'])
        values[NO_FINDING] = int(not marks)
        labels.append([image['image_id'], *reader_cell,
                       *(values[label] for label in PHYSIONET_LABELS)])
        if not marks:
          boxes.append([image['image_id'], *reader_cell, '', '', '', '',
                        NO_FINDING])
        for label, label_boxes in marks.items():
          boxes += [[image['image_id'], *reader_cell, *box, label]
                    for box in label_boxes]
    files[f'annotations/image_labels_{split}.csv'] = tree.csv_bytes(labels)
    files[f'annotations/annotations_{split}.csv'] = tree.csv_bytes(boxes)
  return files


def _recount(images):
  train = [image for image in images if image['split'] == 'train']
  readers, per_image, marked, boxes = {}, {}, {}, {}
  no_finding = 0
  for image in train:
    per_image[len(image['reads'])] = per_image.get(len(image['reads']), 0) + 1
    for reader, marks in image['reads'].items():
      readers[reader] = readers.get(reader, 0) + 1
      no_finding += not marks
      for label, label_boxes in marks.items():
        boxes[label] = boxes.get(label, 0) + len(label_boxes)
    for label in CLASSES[:-1]:
      k = sum(label in marks for marks in image['reads'].values())
      if k:
        cell = marked.setdefault(label, {})
        cell[k] = cell.get(k, 0) + 1
    k = sum(not marks for marks in image['reads'].values())
    if k:
      cell = marked.setdefault(NO_FINDING, {})
      cell[k] = cell.get(k, 0) + 1
  consensus = {}
  for image in images:
    if image['split'] == 'test':
      for label in image['reads'][None]:
        consensus[label] = consensus.get(label, 0) + 1
  return {
      'readers': dict(sorted(readers.items())),
      'readers_per_image': per_image,
      'marked': {label: dict(sorted(cell.items()))
                 for label, cell in sorted(marked.items())},
      'boxes': dict(sorted(boxes.items())),
      'no_finding_rows': no_finding,
      'consensus': dict(sorted(consensus.items())),
  }
