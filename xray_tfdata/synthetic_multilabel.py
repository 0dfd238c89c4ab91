"""Synthetic NIH ChestX-ray14, CheXpert and MIMIC-CXR-JPG source trees.

The real sets need a data-use agreement and cannot be downloaded here, so
this writes small stand-ins in their real file layouts and label-file
formats, for the converter's tests and the multi-label demo:

  nih       Data_Entry_2017_v2020.csv (NIH's 11 header names: the commas
            inside `OriginalImage[Width,Height]` split it), findings
            `|`-separated in NIH's spelling or `No Finding`, PNGs
            `images_001/images/00000001_000.png` over several `images_00N`
            folders, train_val_list.txt and test_list.txt by patient,
            View Position PA or AP.
  chexpert  CheXpert-v1.0-small/{train,valid}.csv and JPEGs under
            `train|valid/patient00001/study1/view1_frontal.jpg`; labels
            `1.0`, `0.0`, `-1.0` (uncertain) or blank (not mentioned) in
            train.csv, only `1.0`/`0.0` in valid.csv (as the real ones);
            laterals with a blank AP/PA; valid's patients are not train's.
  mimic     mimic-cxr-2.0.0-{chexpert,metadata,split}.csv.gz (labels per
            study, CheXpert's coding, columns in the real files' order),
            JPEGs `files/p10/p10000032/s50414267/<dicom_id>.jpg`, several
            studies per subject and PA + LATERAL (or LL) or portable AP
            images per study, train/validate/test by subject, and
            IMAGE_FILENAMES.

The label frequencies follow the real label files (NIH's
Data_Entry_2017_v2020.csv, CheXpert's train.csv), except that Effusion
(Pleural Effusion) and Cardiomegaly are made common enough for every split
of a small tree to hold positives. Those two show in the pixels, drawn on
`synthetic.draw_chest`'s chest: an effusion is a bright basal opacity with a
meniscus at the bottom of a lung field, cardiomegaly a wider heart shadow
(on laterals: a bright posterior base, a larger anterior heart). A small CNN
can learn them at 32-64 px; the other labels are random and carry no pixel
signal, so a model should score them near chance. A study has a hidden
truth per label; its report codes come from it (a present finding is now
and then `-1.0`, an absent one mostly blank, sometimes `0.0` or `-1.0`), so
the label policies differ as they do on the real sets.

Images are small (128-256 px by default; `size_scale` multiplies the real
sizes: NIH 1024 px, CheXpert-small about 320 px high, MIMIC about
3056x2544), and everything is a function of the seed: the same seed gives
the same bytes. Only numpy and PIL: no TensorFlow.
"""

import csv
import gzip
import io
import json
import os
import shutil
import time

import numpy as np
from PIL import Image

from xray_tfdata import atomic
from xray_tfdata import synthetic
from xray_tfdata import runtime

LAYOUTS = ('nih', 'chexpert', 'mimic')
DEFAULT_NUM_IMAGES = 200
MIN_IMAGES = 20  # a few patients for every official split
# size_scale multiplies the real image sizes; these give 128-256 px.
DEFAULT_SIZE_SCALE = {'nih': 0.125, 'chexpert': 0.5, 'mimic': 0.06}
# In each tree: its claim on the folder (a rerun may replace the tree).
MARKER = '.xray_tfdata_synthetic'

NIH_LABELS = ('Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltration',
              'Mass', 'Nodule', 'Pneumonia', 'Pneumothorax', 'Consolidation',
              'Edema', 'Emphysema', 'Fibrosis', 'Pleural_Thickening',
              'Hernia')
NIH_NO_FINDING = 'No Finding'
NIH_CSV = 'Data_Entry_2017_v2020.csv'
NIH_HEADER = ('Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,'
              'Patient Gender,View Position,OriginalImage[Width,Height],'
              'OriginalImagePixelSpacing[x,y]')
NIH_LISTS = {'train_val': 'train_val_list.txt', 'test': 'test_list.txt'}

CHEXPERT_LABELS = ('No Finding', 'Enlarged Cardiomediastinum', 'Cardiomegaly',
                   'Lung Opacity', 'Lung Lesion', 'Edema', 'Consolidation',
                   'Pneumonia', 'Atelectasis', 'Pneumothorax',
                   'Pleural Effusion', 'Pleural Other', 'Fracture',
                   'Support Devices')
CHEXPERT_ROOT = 'CheXpert-v1.0-small'
CHEXPERT_HEADER = 'Path,Sex,Age,Frontal/Lateral,AP/PA,' + ','.join(
    CHEXPERT_LABELS)

# MIMIC-CXR-JPG's chexpert.csv holds the same 14 labels, alphabetically.
MIMIC_LABELS = tuple(sorted(CHEXPERT_LABELS))
MIMIC_FILES = {
    'chexpert': 'mimic-cxr-2.0.0-chexpert.csv.gz',
    'metadata': 'mimic-cxr-2.0.0-metadata.csv.gz',
    'split': 'mimic-cxr-2.0.0-split.csv.gz',
}
MIMIC_HEADERS = {
    'chexpert': 'subject_id,study_id,' + ','.join(MIMIC_LABELS),
    'metadata': ('dicom_id,subject_id,study_id,'
                 'PerformedProcedureStepDescription,ViewPosition,Rows,'
                 'Columns,StudyDate,StudyTime,'
                 'ProcedureCodeSequence_CodeMeaning,'
                 'ViewCodeSequence_CodeMeaning,'
                 'PatientOrientationCodeSequence_CodeMeaning'),
    'split': 'dicom_id,study_id,subject_id,split',
}

# The labels drawn into the pixels, per layout: (effusion, cardiomegaly).
VISIBLE_LABELS = {
    'nih': ('Effusion', 'Cardiomegaly'),
    'chexpert': ('Pleural Effusion', 'Cardiomegaly'),
    'mimic': ('Pleural Effusion', 'Cardiomegaly'),
}

# Fraction of NIH images with each finding (Data_Entry_2017_v2020.csv),
# Effusion and Cardiomegaly raised from 11.9% and 2.5%.
_NIH_PREVALENCE = {
    'Atelectasis': 0.103, 'Cardiomegaly': 0.20, 'Effusion': 0.25,
    'Infiltration': 0.177, 'Mass': 0.052, 'Nodule': 0.057, 'Pneumonia': 0.013,
    'Pneumothorax': 0.047, 'Consolidation': 0.042, 'Edema': 0.021,
    'Emphysema': 0.022, 'Fibrosis': 0.015, 'Pleural_Thickening': 0.030,
    'Hernia': 0.002,
}
_NIH_NO_FINDING = 0.45  # 53.8% in the real file, less with the raised two
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
_POSITIVE, _NEGATIVE, _UNCERTAIN, _BLANK = '1.0', '0.0', '-1.0', ''
# Share of subjects in MIMIC's validate and test splits: the real ones are
# about 0.8% and 1.4% of the images; larger here so that a small tree's
# splits hold positives.
_MIMIC_HELD_OUT = {'validate': 0.1, 'test': 0.1}
_NIH_TEST_PATIENTS = 0.22
_CHEXPERT_VALID = 0.1  # of the images (the real valid.csv: 234)
_NIH_PIXEL_SPACINGS = ('0.14300000000000002', '0.168', '0.139', '0.171',
                       '0.19431099999999998')
_DRAW_MAX = 256  # drawn at most this wide, then resized up
_JPEG_QUALITY = 90


class SyntheticMultilabelError(synthetic.SyntheticError):
  """Bad arguments to `make_synthetic_multilabel` (a user error)."""


def make_synthetic_nih(out_dir, num_images=DEFAULT_NUM_IMAGES, seed=0,
                       **kwargs):
  """An NIH ChestX-ray14 tree; see `make_synthetic_multilabel`."""
  return make_synthetic_multilabel(out_dir, 'nih', num_images, seed, **kwargs)


def make_synthetic_chexpert(out_dir, num_images=DEFAULT_NUM_IMAGES, seed=0,
                            **kwargs):
  """A CheXpert-v1.0-small tree; see `make_synthetic_multilabel`."""
  return make_synthetic_multilabel(out_dir, 'chexpert', num_images, seed,
                                   **kwargs)


def make_synthetic_mimic(out_dir, num_images=DEFAULT_NUM_IMAGES, seed=0,
                         **kwargs):
  """A MIMIC-CXR-JPG 2.0.0 tree; see `make_synthetic_multilabel`."""
  return make_synthetic_multilabel(out_dir, 'mimic', num_images, seed,
                                   **kwargs)


def make_synthetic_multilabel(out_dir, layout, num_images=DEFAULT_NUM_IMAGES,
                              seed=0, size_scale=None, num_workers=None,
                              progress=False):
  """Writes a synthetic multi-label source tree into `out_dir`.

  Args:
    out_dir: folder to create; must not exist, be empty, or hold a tree
      this function wrote (it holds MARKER), which is replaced.
    layout: 'nih', 'chexpert' or 'mimic' (see the module docstring).
    num_images: image files written, at least MIN_IMAGES.
    seed: names, labels and pixels are a function of it.
    size_scale: multiplies the real image sizes; default
      DEFAULT_SIZE_SCALE[layout] (128-256 px images). Sizes stay >= 16 px.
    num_workers: processes drawing images; default all cores. Small trees
      are drawn in this process.
    progress: print one line when done.

  Returns:
    A summary dict: out_dir, layout, seed, num_images, num_patients,
    num_studies, num_lateral, splits {official split: {'images': n,
    'patients': n}}, positives {visible label: images whose label file says
    1.0 (nih: lists it)}, elapsed_seconds.

  Raises:
    SyntheticMultilabelError: bad arguments, or out_dir is a file or holds
      files this function did not write.
  """
  start = time.perf_counter()
  if layout not in LAYOUTS:
    raise SyntheticMultilabelError(
        f'layout must be one of {", ".join(LAYOUTS)}, got {layout!r}')
  if not isinstance(num_images, int) or num_images < MIN_IMAGES:
    raise SyntheticMultilabelError(
        f'num_images must be at least {MIN_IMAGES} (a few patients for '
        f'every split), got {num_images}')
  if size_scale is None:
    size_scale = DEFAULT_SIZE_SCALE[layout]
  if not size_scale > 0:
    raise SyntheticMultilabelError(
        f'size_scale must be positive, got {size_scale}')
  _claim(out_dir)

  rng = np.random.default_rng([seed, LAYOUTS.index(layout), 0])
  planner = {'nih': _plan_nih, 'chexpert': _plan_chexpert,
             'mimic': _plan_mimic}[layout]
  images, label_files = planner(rng, num_images, size_scale)

  _write_marker(out_dir, {'state': 'drawing'})
  for folder in sorted({os.path.dirname(image['path']) for image in images}):
    os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
  jobs = [(os.path.join(out_dir, image['path']), image['width'],
           image['height'], image['lateral'], image['effusion'],
           image['cardiomegaly'], (seed, LAYOUTS.index(layout), index))
          for index, image in enumerate(images)]
  _render_all(jobs, num_workers)
  for name, data in label_files.items():
    with open(os.path.join(out_dir, name), 'wb') as f:
      f.write(data)

  splits = {}
  for image in images:
    cell = splits.setdefault(image['split'], {'images': 0, 'patients': set()})
    cell['images'] += 1
    cell['patients'].add(image['patient'])
  summary = {
      'out_dir': out_dir,
      'layout': layout,
      'seed': seed,
      'num_images': len(images),
      'num_patients': len({image['patient'] for image in images}),
      'num_studies': len({image['study'] for image in images}),
      'num_lateral': sum(image['lateral'] for image in images),
      'splits': {split: {'images': cell['images'],
                         'patients': len(cell['patients'])}
                 for split, cell in sorted(splits.items())},
      'positives': {label: sum(image['codes'][label] == _POSITIVE
                               for image in images)
                    for label in VISIBLE_LABELS[layout]},
      'elapsed_seconds': round(time.perf_counter() - start, 2),
  }
  _write_marker(out_dir, {'state': 'drawn', 'layout': layout, 'seed': seed,
                          'num_images': len(images)})
  if progress:
    print(f'wrote {len(images)} images ({layout} layout, '
          f'{summary["num_patients"]} patients, {summary["num_lateral"]} '
          f'lateral) to {out_dir} in {summary["elapsed_seconds"]:.1f} s')
  return summary


def _claim(out_dir):
  """Checks that out_dir is new, empty or ours; empties it if ours."""
  if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
    raise SyntheticMultilabelError(
        f'out_dir {out_dir} is a file; choose a folder')
  if not os.path.isdir(out_dir):
    return
  entries = os.listdir(out_dir)
  if not entries:
    return
  if MARKER not in entries:
    raise SyntheticMultilabelError(
        f'out_dir {out_dir} exists and is not empty (and not a synthetic '
        'tree); choose a new folder or remove it')
  # A tree this module wrote (finished or not): ours to replace.
  for name in entries:
    path = os.path.join(out_dir, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    else:
      os.unlink(path)


def _write_marker(out_dir, state):
  os.makedirs(out_dir, exist_ok=True)
  atomic.write_json(os.path.join(out_dir, MARKER), state, sort_keys=True)


# ---------------------------------------------------------------- labels


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
      codes[label] = (_POSITIVE if rng.random() < positive / present else
                      _UNCERTAIN)
    else:
      absent = 1 - present
      draw = rng.random() * absent
      if healthy:  # a normal report mentions nothing uncertain
        codes[label] = _NEGATIVE if draw < negative else _BLANK
      elif draw < uncertain / 2:
        codes[label] = _UNCERTAIN
      elif draw < uncertain / 2 + negative:
        codes[label] = _NEGATIVE
      else:
        codes[label] = _BLANK
  codes['No Finding'] = _POSITIVE if healthy else _BLANK
  return codes


def _chexpert_study(rng, expert=False):
  """(truth, codes) of one CheXpert or MIMIC study; expert=True gives
  valid.csv's codes (1.0 or 0.0 only, No Finding included)."""
  healthy = bool(rng.random() < _CHEXPERT_NO_FINDING)
  truth = _hidden_truth(rng, _CHEXPERT_CODES, healthy)
  if expert:
    codes = {label: _POSITIVE if present else _NEGATIVE
             for label, present in truth.items()}
    findings = [present for label, present in truth.items()
                if label != 'Support Devices']
    codes['No Finding'] = _NEGATIVE if any(findings) else _POSITIVE
  else:
    codes = _report_codes(rng, truth, _CHEXPERT_CODES, healthy)
  return truth, codes


def _sign_strength(rng, present):
  """How strongly a present finding shows: mostly clear, one in ten faint."""
  if not present:
    return 0.0
  return float(rng.uniform(0.5, 1.0) if rng.random() < 0.9 else
               rng.uniform(0.15, 0.35))


def _image(rng, path, width, height, lateral, truth, visible, **fields):
  effusion_label, cardiomegaly_label = visible
  return dict(path=path, width=width, height=height, lateral=lateral,
              effusion=_sign_strength(rng, truth[effusion_label]),
              cardiomegaly=_sign_strength(rng, truth[cardiomegaly_label]),
              **fields)


def _scaled(size, size_scale):
  return max(16, int(round(size * size_scale)))


# ---------------------------------------------------------------- NIH


def _plan_nih(rng, num_images, size_scale):
  """NIH's images, Data_Entry_2017_v2020.csv and the two patient lists."""
  side = _scaled(1024, size_scale)  # every NIH PNG is 1024 x 1024
  images = []
  patient = 0
  while len(images) < num_images:
    patient += 1
    count = min(int(rng.geometric(0.35)), 20, num_images - len(images),
                _patient_budget(num_images))
    age = int(np.clip(rng.normal(47, 17), 1, 90))
    sex = 'M' if rng.random() < 0.565 else 'F'
    for follow_up in range(count):
      truth = _nih_findings(rng)
      findings = [name for name in NIH_LABELS if truth[name]]
      image = _image(
          rng, '', side, side, False, truth, VISIBLE_LABELS['nih'],
          name=f'{patient:08d}_{follow_up:03d}.png', patient=patient,
          study=(patient, follow_up), follow_up=follow_up,
          age=min(95, age + follow_up // 3), sex=sex,
          view='PA' if rng.random() < 0.6 else 'AP',
          original=(int(np.clip(rng.normal(2646, 350), 1143, 3827)),
                    int(np.clip(rng.normal(2486, 350), 966, 4715))),
          spacing=_NIH_PIXEL_SPACINGS[int(rng.integers(
              len(_NIH_PIXEL_SPACINGS)))],
          findings='|'.join(findings) or NIH_NO_FINDING,
          codes={name: _POSITIVE if truth[name] else _NEGATIVE
                 for name in NIH_LABELS})
      images.append(image)

  # Patients, not images, go to the test list, as in the real lists.
  patients = np.arange(1, patient + 1)
  num_test = max(2, round(_NIH_TEST_PATIENTS * patient))
  test = set(rng.permutation(patients)[:num_test].tolist())
  # The first images_00N folder holds half as many as the others, as the
  # real images_001 (4,999 of 112,120 in 12 folders).
  num_folders = min(12, max(2, num_images // 10))
  per_folder = -(-2 * num_images // (2 * num_folders - 1))
  for index, image in enumerate(images):
    folder = 1 + (index + per_folder // 2) // per_folder
    image['path'] = f'images_{folder:03d}/images/{image["name"]}'
    image['split'] = 'test' if image['patient'] in test else 'train_val'

  rows = [NIH_HEADER.split(',')]
  for image in images:
    rows.append([image['name'], image['findings'], image['follow_up'],
                 image['patient'], image['age'], image['sex'], image['view'],
                 *image['original'], image['spacing'], image['spacing']])
  files = {NIH_CSV: _csv_bytes(rows)}
  for split, name in NIH_LISTS.items():
    files[name] = ''.join(f'{image["name"]}\n' for image in images
                          if image['split'] == split).encode()
  return images, files


def _nih_findings(rng):
  """{finding: present} of one NIH image; `No Finding` when none."""
  if rng.random() < _NIH_NO_FINDING:
    return {name: False for name in NIH_LABELS}
  scale = 1 / (1 - _NIH_NO_FINDING)
  truth = {name: bool(rng.random() < min(0.9, p * scale))
           for name, p in _NIH_PREVALENCE.items()}
  if not any(truth.values()):  # not 'No Finding': at least one finding
    names = list(_NIH_PREVALENCE)
    weights = np.array([_NIH_PREVALENCE[n] for n in names])
    truth[names[int(rng.choice(len(names), p=weights / weights.sum()))]] = True
  return truth


# ---------------------------------------------------------------- CheXpert


def _plan_chexpert(rng, num_images, size_scale):
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
    files[f'{CHEXPERT_ROOT}/{split}.csv'] = _csv_bytes(rows)
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
      truth, codes = _chexpert_study(rng, expert)
      views = ['frontal'] + (['frontal'] if rng.random() < 0.02 else [])
      if rng.random() < 0.2:
        views.append('lateral')
      height = _scaled(320, size_scale)
      for number, kind in enumerate(views, 1):
        lateral = kind == 'lateral'
        width = max(16, int(round(height * rng.uniform(1.0, 1.25))))
        patient_images.append(_image(
            rng, '', width, height, lateral, truth,
            VISIBLE_LABELS['chexpert'], name=f'view{number}_{kind}.jpg',
            patient=patient, study=(patient, study), sex=sex,
            age=min(90, age + (study - 1) // 2), codes=codes,
            view='' if lateral else ('AP' if rng.random() < 0.85 else 'PA')))
    images += patient_images[:min(count - len(images),
                                  _patient_budget(count))]
  return images


def _patient_budget(num_images):
  """The most images one patient may have: a small tree still has enough
  patients for every split."""
  return max(2, num_images // 6)


# ---------------------------------------------------------------- MIMIC


def _plan_mimic(rng, num_images, size_scale):
  """MIMIC-CXR-JPG: the three gzipped label files, IMAGE_FILENAMES and the
  JPEG paths."""
  images = []
  subject_ids = _unique_ids(rng, 10_000_000, 20_000_000, num_images)
  study_ids = iter(_unique_ids(rng, 50_000_000, 60_000_000, num_images))
  study_rows = []
  for subject in subject_ids:
    if len(images) >= num_images:
      break
    day = int(rng.integers(0, 365 * 100))  # dates are shifted to 2100-2200
    budget = min(num_images - len(images), _patient_budget(num_images))
    for _ in range(min(int(rng.geometric(0.35)), 10)):
      study = next(study_ids)
      truth, codes = _chexpert_study(rng)
      day += int(rng.integers(1, 400))
      date = np.datetime64('2110-01-01') + np.timedelta64(day, 'D')
      hour, minute, second = (int(v) for v in rng.integers(0, (24, 60, 60)))
      # StudyTime as the real file writes it: HHMMSS.fff as a float.
      when = (date.astype(object).strftime('%Y%m%d'),
              f'{hour * 10000 + minute * 100 + second}.'
              f'{int(rng.integers(0, 1000))}')
      study_images = []
      for view in _mimic_views(rng):
        rows, columns = ((3056, 2544) if view != 'AP' or rng.random() < 0.5
                         else (2544, 3056))
        rows += int(rng.integers(-20, 1))
        columns += int(rng.integers(-20, 1))
        height, width = _scaled(rows, size_scale), _scaled(columns, size_scale)
        dicom_id = '-'.join(rng.bytes(4).hex() for _ in range(5))
        study_images.append(_image(
            rng, f'files/p{str(subject)[:2]}/p{subject}/s{study}/'
            f'{dicom_id}.jpg', width, height, view in ('LATERAL', 'LL'),
            truth, VISIBLE_LABELS['mimic'], dicom_id=dicom_id,
            patient=subject, study=study, view=view, codes=codes,
            when=when))
      study_images = study_images[:budget]
      if not study_images:
        break
      budget -= len(study_images)
      images += study_images
      study_rows.append([subject, study] +
                        [codes[label] for label in MIMIC_LABELS])

  subjects = sorted({image['patient'] for image in images})
  order = rng.permutation(len(subjects))
  held = {}
  start = 0
  for split, share in _MIMIC_HELD_OUT.items():
    size = max(1, round(share * len(subjects)))
    held.update({subjects[i]: split for i in order[start:start + size]})
    start += size
  metadata = [MIMIC_HEADERS['metadata'].split(',')]
  splits = [MIMIC_HEADERS['split'].split(',')]
  for image in images:
    image['split'] = held.get(image['patient'], 'train')
    description, meaning, orientation = _MIMIC_VIEW_META[image['view']]
    metadata.append([image['dicom_id'], image['patient'], image['study'],
                     description, image['view'], image['height'],
                     image['width'], *image['when'], description,
                     meaning, orientation])
    splits.append([image['dicom_id'], image['study'], image['patient'],
                   image['split']])
  files = {
      MIMIC_FILES['chexpert']: _gzip(_csv_bytes(
          [MIMIC_HEADERS['chexpert'].split(',')] + sorted(study_rows))),
      MIMIC_FILES['metadata']: _gzip(_csv_bytes(metadata)),
      MIMIC_FILES['split']: _gzip(_csv_bytes(splits)),
      'IMAGE_FILENAMES': ''.join(f'{image["path"]}\n'
                                 for image in images).encode(),
  }
  return images, files


# view -> (PerformedProcedureStepDescription, ViewCodeSequence_CodeMeaning,
# PatientOrientationCodeSequence_CodeMeaning)
_MIMIC_VIEW_META = {
    'PA': ('CHEST (PA AND LAT)', 'postero-anterior', 'Erect'),
    'LATERAL': ('CHEST (PA AND LAT)', 'lateral', 'Erect'),
    'LL': ('CHEST (PA AND LAT)', 'left lateral', 'Erect'),
    'AP': ('CHEST (PORTABLE AP)', 'antero-posterior', 'Recumbent'),
}


def _mimic_views(rng):
  """The ViewPositions of one study: PA and a lateral, or portable AP."""
  if rng.random() < 0.55:
    lateral = 'LATERAL' if rng.random() < 0.7 else 'LL'
    return ['PA', lateral] if rng.random() < 0.9 else ['PA']
  return ['AP'] if rng.random() < 0.9 else ['AP', 'AP']


def _unique_ids(rng, low, high, count):
  """`count` distinct sorted integers in [low, high)."""
  ids = set()
  while len(ids) < count:
    ids.update(int(i) for i in rng.integers(low, high, count - len(ids)))
  return sorted(ids)


def _csv_bytes(rows):
  out = io.StringIO()
  csv.writer(out, lineterminator='\n').writerows(rows)
  return out.getvalue().encode('utf-8')


def _gzip(data):
  return gzip.compress(data, mtime=0)  # mtime 0: the same bytes every run


# ---------------------------------------------------------------- pixels


def _render_all(jobs, num_workers):
  # pylint: disable-next=protected-access
  num_workers = num_workers or runtime.cpu_count()
  if num_workers > 1 and len(jobs) >= 256:
    import multiprocessing  # pylint: disable=g-import-not-at-top
    # spawn, not fork: the caller may have imported TensorFlow.
    with multiprocessing.get_context('spawn').Pool(num_workers) as pool:
      for _ in pool.imap_unordered(render_image, jobs, chunksize=16):
        pass
  else:
    for job in jobs:
      render_image(job)


def render_image(job):
  """Draws one image and saves it as PNG or JPEG by its extension."""
  path, width, height, lateral, effusion, cardiomegaly, pixel_seed = job
  rng = np.random.default_rng(list(pixel_seed))
  draw_width = min(_DRAW_MAX, width)
  draw_height = max(16, round(draw_width * height / width))
  small = draw_findings(rng, draw_height, draw_width, effusion=effusion,
                        cardiomegaly=cardiomegaly, lateral=lateral)
  image = Image.fromarray(small)
  if (draw_width, draw_height) != (width, height):
    image = image.resize((width, height), Image.Resampling.BICUBIC)
  # The Kermany trees' fine grain, as film and detector noise give.
  grain = synthetic._grain(rng, height, width)  # pylint: disable=protected-access
  pixels = np.asarray(image, np.int16) + grain
  image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
  if path.endswith('.png'):
    image.save(path, 'PNG')
  else:
    image.save(path, 'JPEG', quality=_JPEG_QUALITY)


def draw_findings(rng, height, width, effusion=0.0, cardiomegaly=0.0,
                  lateral=False):
  """A chest uint8 [height, width] showing the two pixel-visible findings.

  Args:
    rng: a numpy Generator; the drawing is a function of its state.
    height, width: pixels.
    effusion: 0 (none) to 1: a bright basal opacity with a meniscus.
    cardiomegaly: 0 (a normal heart) to 1: a wider heart shadow.
    lateral: a lateral view instead of a frontal one.

  Returns:
    uint8 array [height, width].
  """
  if lateral:
    return _draw_lateral(rng, height, width, effusion, cardiomegaly)
  image = synthetic.draw_chest(rng, 0, height, width).astype(np.float32)
  y, x = _grid(height, width)
  # The heart: soft tissue over the lower medial lungs, left of the middle
  # of the patient (right of the image); a cardiothoracic ratio about 0.35
  # normally, about 0.55 when enlarged.
  half_width = rng.uniform(0.13, 0.17) + cardiomegaly * rng.uniform(0.08, 0.12)
  heart = _ellipse(x, y, 0.53 + rng.normal(0, 0.01),
                   0.64 + rng.normal(0, 0.01), half_width, 0.11, 0.06)
  image += rng.uniform(40, 55) * heart
  if effusion:
    sides = [-1, 1] if rng.random() < 0.4 else [int(rng.choice([-1, 1]))]
    for side in sides:
      center = 0.5 + side * rng.uniform(0.19, 0.21)
      level = rng.uniform(0.66, 0.70) - 0.06 * effusion
      # The meniscus: the fluid climbs along the chest wall.
      top = level - 0.5 * np.maximum(0, side * (x - center))
      fluid = (_sigmoid((y - top) / 0.015) * _sigmoid((0.9 - y) / 0.03) *
               np.exp(-((x - center) / 0.14) ** 4))
      image += effusion * rng.uniform(55, 75) * fluid
  return np.clip(image, 0, 255).astype(np.uint8)


def _draw_lateral(rng, height, width, effusion, cardiomegaly):
  """A lateral chest: one lung field, the spine behind, the heart in front
  (patient facing left); an effusion fills the posterior base."""
  y, x = _grid(height, width)
  shift_x, shift_y = rng.normal(0, 0.02, 2)
  image = rng.uniform(8, 30) + rng.uniform(80, 120) * _ellipse(
      x, y, 0.5 + shift_x, 0.6 + shift_y, rng.uniform(0.38, 0.45), 0.62, 0.05)
  lung = _ellipse(x, y, 0.52 + shift_x, 0.47 + shift_y, rng.uniform(0.25, 0.3),
                  rng.uniform(0.27, 0.32), 0.08)
  image -= rng.uniform(35, 60) * lung
  spine_x = 0.8 + shift_x
  spine = np.exp(-((x - spine_x) / 0.05) ** 2) * (y > 0.1)
  image += rng.uniform(50, 80) * spine
  radius = rng.uniform(0.12, 0.15) + cardiomegaly * rng.uniform(0.06, 0.09)
  image += rng.uniform(30, 42) * _ellipse(
      x, y, 0.38 + shift_x, 0.62 + shift_y, radius, radius * 1.1, 0.06)
  if effusion:
    top = rng.uniform(0.68, 0.72) - 0.06 * effusion + 0.4 * np.maximum(
        0, 0.6 - x)
    fluid = (_sigmoid((y - top) / 0.015) * _sigmoid((0.9 - y) / 0.03) *
             np.exp(-((x - 0.62 - shift_x) / 0.16) ** 4))
    image += effusion * rng.uniform(55, 75) * fluid
  image = rng.uniform(0.85, 1.15) * image + rng.normal(0, 8, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def _grid(height, width):
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  return (y + 0.5) / height, (x + 0.5) / width


def _ellipse(x, y, cx, cy, rx, ry, softness):
  r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
  return _sigmoid((1 - r) / softness)


def _sigmoid(z):
  # Clipped: far from the edge, exp would overflow float32.
  return 1 / (1 + np.exp(-np.clip(z, -50, 50)))
