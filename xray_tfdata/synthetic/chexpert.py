"""A synthetic CheXpert-v1.0-small tree, in the real file layout.

CheXpert-v1.0-small/{train,valid}.csv and JPEGs under
`train|valid/patient00001/study1/view1_frontal.jpg`; labels `1.0`, `0.0`,
`-1.0` (uncertain) or blank (not mentioned) in train.csv, only `1.0`/`0.0`
in valid.csv (as the real ones); laterals with a blank AP/PA; valid's
patients are not train's.

A study has a hidden truth per label; its report codes come from it (a
present finding is now and then `-1.0`, an absent one mostly blank,
sometimes `0.0` or `-1.0`), so that the label policies differ as they do on
the real set. The code frequencies follow CheXpert's train.csv, Cardiomegaly
raised; Pleural Effusion and Cardiomegaly show in the pixels. MIMIC-CXR's
labels come from the same labeler: `mimic` draws its studies with
`study_codes`.
"""

import numpy as np

from xray_tfdata.synthetic import tree

LAYOUT = 'chexpert'
_STREAM = 1  # the random stream of this layout (tree.write_planned)
DEFAULT_SIZE_SCALE = 0.5  # of 320 px high: 160 px images
CHEXPERT_LABELS = ('No Finding', 'Enlarged Cardiomediastinum', 'Cardiomegaly',
                   'Lung Opacity', 'Lung Lesion', 'Edema', 'Consolidation',
                   'Pneumonia', 'Atelectasis', 'Pneumothorax',
                   'Pleural Effusion', 'Pleural Other', 'Fracture',
                   'Support Devices')
CHEXPERT_ROOT = 'CheXpert-v1.0-small'
CHEXPERT_HEADER = 'Path,Sex,Age,Frontal/Lateral,AP/PA,' + ','.join(
    CHEXPERT_LABELS)

# The labels drawn into the pixels: (effusion, cardiomegaly).
VISIBLE_LABELS = ('Pleural Effusion', 'Cardiomegaly')

# (fraction coded 1.0, 0.0, -1.0; the rest blank) per label in CheXpert's
# train.csv, Cardiomegaly raised from (0.121, 0.050, 0.036).
_CHEXPERT_CODES = {
    'Enlarged Cardiomediastinum': (0.048, 0.097, 0.056),
    'Cardiomegaly': (0.22, 0.08, 0.05),
    'Lung Opacity': (0.473, 0.030, 0.025),
    'Lung Lesion': (0.041, 0.006, 0.007),
    'Edema': (0.234, 0.093, 0.058),
    'Consolidation': (0.066, 0.126, 0.124),
    'Pneumonia': (0.027, 0.013, 0.084),
    'Atelectasis': (0.149, 0.006, 0.151),
    'Pneumothorax': (0.087, 0.252, 0.014),
    'Pleural Effusion': (0.386, 0.158, 0.052),
    'Pleural Other': (0.016, 0.001, 0.012),
    'Fracture': (0.040, 0.011, 0.003),
    'Support Devices': (0.519, 0.027, 0.005),
}
_CHEXPERT_NO_FINDING = 0.10  # studies with no finding (No Finding = 1.0)
# Codes as the files spell them.
POSITIVE, NEGATIVE, UNCERTAIN, BLANK = '1.0', '0.0', '-1.0', ''
_CHEXPERT_VALID = 0.1  # of the images (the real valid.csv: 234)


def make_synthetic_chexpert(out_dir, num_images=tree.DEFAULT_NUM_IMAGES,
                            seed=0, size_scale=None, num_workers=None,
                            progress=False, source_style=False):
  """Writes a CheXpert-v1.0-small tree into `out_dir`; images about 320 px
  high times size_scale (default DEFAULT_SIZE_SCALE).

  Args and raises: as tree.write_planned.

  Returns:
    tree.write_planned's summary plus positives {visible label: images
    whose label file says 1.0}.
  """
  return tree.write_planned(
      out_dir, LAYOUT, _STREAM, _plan, num_images, seed, size_scale,
      DEFAULT_SIZE_SCALE, num_workers, progress, positives(VISIBLE_LABELS),
      source_style)


def positives(visible):
  """fn(images) -> {'positives': {label: images coded 1.0}}."""
  return lambda images: {'positives': {
      label: sum(image['codes'][label] == POSITIVE for image in images)
      for label in visible}}


def _hidden_truth(rng, codes_table, healthy):
  """{label: present} for one study from CheXpert-style code frequencies:
  a label is present with probability P(1.0) + P(-1.0)/2."""
  truth = {}
  for label, (positive, _, uncertain) in codes_table.items():
    present = positive + uncertain / 2
    if healthy and label != 'Support Devices':
      truth[label] = False
    else:
      scale = 1 / (1 - _CHEXPERT_NO_FINDING)
      truth[label] = bool(rng.random() < min(0.95, present * scale))
  return truth


def _report_codes(rng, truth, codes_table, healthy):
  """The train.csv codes of one study's hidden truth: a present finding is
  uncertain now and then, an absent one mostly not mentioned (blank), so
  that the marginals follow `codes_table`."""
  codes = {}
  for label, (positive, negative, uncertain) in codes_table.items():
    present = positive + uncertain / 2
    if truth[label]:
      codes[label] = (POSITIVE if rng.random() < positive / present else
                      UNCERTAIN)
    else:
      absent = 1 - present
      draw = rng.random() * absent
      if healthy:  # a normal report mentions nothing uncertain
        codes[label] = NEGATIVE if draw < negative else BLANK
      elif draw < uncertain / 2:
        codes[label] = UNCERTAIN
      elif draw < uncertain / 2 + negative:
        codes[label] = NEGATIVE
      else:
        codes[label] = BLANK
  codes['No Finding'] = POSITIVE if healthy else BLANK
  return codes


def study_codes(rng, expert=False):
  """(truth, codes) of one CheXpert or MIMIC study; expert=True gives
  valid.csv's codes (1.0 or 0.0 only, No Finding included)."""
  healthy = bool(rng.random() < _CHEXPERT_NO_FINDING)
  truth = _hidden_truth(rng, _CHEXPERT_CODES, healthy)
  if expert:
    codes = {label: POSITIVE if present else NEGATIVE
             for label, present in truth.items()}
    findings = [present for label, present in truth.items()
                if label != 'Support Devices']
    codes['No Finding'] = NEGATIVE if any(findings) else POSITIVE
  else:
    codes = _report_codes(rng, truth, _CHEXPERT_CODES, healthy)
  return truth, codes



def _plan(rng, num_images, size_scale):
  """CheXpert-v1.0-small: train.csv, valid.csv and the JPEG paths."""
  num_valid = max(6, round(_CHEXPERT_VALID * num_images))
  train = _chexpert_patients(rng, num_images - num_valid, size_scale, 1,
                             expert=False)
  first_valid = max(image['patient'] for image in train) + 1
  valid = _chexpert_patients(rng, num_valid, size_scale, first_valid,
                             expert=True)
  files = {}
  for split, images in (('train', train), ('valid', valid)):
    rows = [CHEXPERT_HEADER.split(',')]
    for image in images:
      image['split'] = split
      image['path'] = (f'{CHEXPERT_ROOT}/{split}/patient{image["patient"]:05d}'
                       f'/study{image["study"][1]}/{image["name"]}')
      rows.append([image['path'], image['sex'], image['age'],
                   'Lateral' if image['lateral'] else 'Frontal',
                   image['view']] +
                  [image['codes'][label] for label in CHEXPERT_LABELS])
    files[f'{CHEXPERT_ROOT}/{split}.csv'] = tree.csv_bytes(rows)
  return train + valid, files


def _chexpert_patients(rng, count, size_scale, first_patient, expert):
  """`count` images of patients numbered from first_patient; valid's
  (expert) patients have one study each, as the real valid set."""
  images = []
  patient = first_patient - 1
  while len(images) < count:
    patient += 1
    sex = ('Male' if rng.random() < 0.594 else 'Female')
    age = int(np.clip(rng.normal(60, 18), 18, 90))  # CheXpert caps at 90
    num_studies = 1 if expert else min(int(rng.geometric(0.4)), 8)
    patient_images = []
    # Listed latest study first, as in the real train.csv.
    for study in range(num_studies, 0, -1):
      truth, codes = study_codes(rng, expert)
      views = ['frontal'] + (['frontal'] if rng.random() < 0.02 else [])
      if rng.random() < 0.2:
        views.append('lateral')
      height = tree.scaled(320, size_scale)
      for number, kind in enumerate(views, 1):
        lateral = kind == 'lateral'
        width = max(16, int(round(height * rng.uniform(1.0, 1.25))))
        patient_images.append(tree.image_record(
            rng, '', width, height, lateral, truth,
            VISIBLE_LABELS, name=f'view{number}_{kind}.jpg',
            patient=patient, study=(patient, study), sex=sex,
            age=min(90, age + (study - 1) // 2), codes=codes,
            view='' if lateral else ('AP' if rng.random() < 0.85 else 'PA')))
    images += patient_images[:min(count - len(images),
                                  tree.patient_budget(count))]
  return images

