"""The RSNA Pneumonia Detection Challenge's file formats, for the rsna
layout of `kermany.make_synthetic_kermany`.

`stage_2_train_images/<patientId>.dcm` (anonymized UUIDs, one image each;
1024 px, uncompressed 8-bit CR, a fifth of them MONOCHROME1 with inverted
stored values, so a reader that ignores the photometric interpretation sees
negatives), `stage_2_train_labels.csv` (one row per box, blank boxes for
Target 0) and `stage_2_detailed_class_info.csv` (repeated per box, as
RSNA's). A duplicate is the same pixels re-encoded as RLE Lossless, as a
re-exported film is. The images, their classes and their planning are
Kermany-like (`kermany`); needs pydicom.
"""

import os

import numpy as np

from xray_tfdata.synthetic import tree

IMAGE_SIZE = 1024  # RSNA's images are 1024 x 1024
_MONOCHROME1_EVERY = 5


def image_path(rng):
  """stage_2_train_images/<patientId>.dcm: RSNA's patientIds are UUIDs."""
  name = f'{rng.bytes(16).hex()}.dcm'
  name = f'{name[:8]}-{name[8:12]}-{name[12:16]}-{name[16:20]}-{name[20:]}'
  return f'stage_2_train_images/{name}'


def save_dicom(path, pixels, pixel_seed):
  """An uncompressed 8-bit CR DICOM of pixels as displayed; every fifth one
  MONOCHROME1, whose stored values are inverted (white is low there)."""
  monochrome1 = pixel_seed[-1] % _MONOCHROME1_EVERY == 0
  tree.write_dicom(path, 255 - pixels if monochrome1 else pixels, pixel_seed,
                   photometric='MONOCHROME1' if monochrome1 else
                   'MONOCHROME2')


def reencode_dicom(source, target):
  """Copies a DICOM as another file of the same film: RLE Lossless instead
  of uncompressed, under the target's patientId, so that only its decoded
  pixels match (as with a film re-exported from another archive)."""
  pydicom = tree.pydicom()
  dataset = pydicom.dcmread(source)
  dataset.PatientID = os.path.splitext(os.path.basename(target))[0]
  # A new instance UID, as a re-export gets, but drawn from the copy's name:
  # pydicom's default is random, which made the copy's bytes differ from run
  # to run.
  dataset.compress(pydicom.uid.RLELossless, generate_instance_uid=False)
  instance = pydicom.uid.generate_uid(entropy_srcs=['copy', dataset.PatientID])
  dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = (
      instance)
  dataset.save_as(target, enforce_file_format=True)


def write_labels(out_dir, specs, seed):
  """stage_2_train_labels.csv (one row per box; blank for Target 0) and
  stage_2_detailed_class_info.csv (repeated per box, as RSNA's)."""
  rng = np.random.default_rng([seed, 2])
  labels = ['patientId,x,y,width,height,Target']
  classes = ['patientId,class']
  for spec in specs:
    patient = os.path.splitext(os.path.basename(spec['path']))[0]
    if spec['label'] == 0:
      labels.append(f'{patient},,,,,0')
      classes.append(f'{patient},' + ('Normal' if rng.random() < 0.5 else
                                       'No Lung Opacity / Not Normal'))
      continue
    for _ in range(1 + int(rng.integers(0, 2))):  # one or two boxes
      side = spec['width']
      x, y = rng.uniform(0.15, 0.55, 2) * side
      w, h = rng.uniform(0.1, 0.3, 2) * side
      labels.append(f'{patient},{x:.1f},{y:.1f},{w:.1f},{h:.1f},1')
      classes.append(f'{patient},Lung Opacity')
  for name, lines in (('stage_2_train_labels.csv', labels),
                      ('stage_2_detailed_class_info.csv', classes)):
    with open(os.path.join(out_dir, name), 'w') as f:
      f.write('\n'.join(lines) + '\n')
