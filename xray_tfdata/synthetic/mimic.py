"""A synthetic MIMIC-CXR-JPG 2.0.0 tree, in the real file layout.

mimic-cxr-2.0.0-{chexpert,metadata,split}.csv.gz (labels per study,
CheXpert's coding, columns in the real files' order), JPEGs
`files/p10/p10000032/s50414267/<dicom_id>.jpg`, several studies per subject
and PA + LATERAL (or LL) or portable AP images per study, train/validate/
test by subject, and IMAGE_FILENAMES. Studies are drawn as CheXpert's
(`chexpert.study_codes`): the same labeler made both label files.
"""

import numpy as np

from xray_tfdata.synthetic import chexpert
from xray_tfdata.synthetic import tree

LAYOUT = 'mimic'
_STREAM = 2  # the random stream of this layout (tree.write_planned)
DEFAULT_SIZE_SCALE = 0.06  # of about 3056 x 2544 px: 150-190 px images

# MIMIC-CXR-JPG's chexpert.csv holds the same 14 labels, alphabetically.
MIMIC_LABELS = tuple(sorted(chexpert.CHEXPERT_LABELS))
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

# The labels drawn into the pixels: (effusion, cardiomegaly).
VISIBLE_LABELS = ('Pleural Effusion', 'Cardiomegaly')
# Share of subjects in MIMIC's validate and test splits: the real ones are
# about 0.8% and 1.4% of the images; larger here so that a small tree's
# splits hold positives.
_MIMIC_HELD_OUT = {'validate': 0.1, 'test': 0.1}


def make_synthetic_mimic(out_dir, num_images=tree.DEFAULT_NUM_IMAGES, seed=0,
                         size_scale=None, num_workers=None, progress=False,
                         source_style=False):
  """Writes a MIMIC-CXR-JPG 2.0.0 tree into `out_dir`; images about
  3056 x 2544 px times size_scale (default DEFAULT_SIZE_SCALE).

  Args and raises: as tree.write_planned.

  Returns:
    tree.write_planned's summary plus positives {visible label: images
    whose study is coded 1.0}.
  """
  return tree.write_planned(
      out_dir, LAYOUT, _STREAM, _plan, num_images, seed, size_scale,
      DEFAULT_SIZE_SCALE, num_workers, progress,
      chexpert.positives(VISIBLE_LABELS), source_style)


def _plan(rng, num_images, size_scale):
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
    budget = min(num_images - len(images), tree.patient_budget(num_images))
    for _ in range(min(int(rng.geometric(0.35)), 10)):
      study = next(study_ids)
      truth, codes = chexpert.study_codes(rng)
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
        height = tree.scaled(rows, size_scale)
        width = tree.scaled(columns, size_scale)
        dicom_id = '-'.join(rng.bytes(4).hex() for _ in range(5))
        study_images.append(tree.image_record(
            rng, f'files/p{str(subject)[:2]}/p{subject}/s{study}/'
            f'{dicom_id}.jpg', width, height, view in ('LATERAL', 'LL'),
            truth, VISIBLE_LABELS, dicom_id=dicom_id,
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
      MIMIC_FILES['chexpert']: tree.gzip_bytes(tree.csv_bytes(
          [MIMIC_HEADERS['chexpert'].split(',')] + sorted(study_rows))),
      MIMIC_FILES['metadata']: tree.gzip_bytes(tree.csv_bytes(metadata)),
      MIMIC_FILES['split']: tree.gzip_bytes(tree.csv_bytes(splits)),
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
