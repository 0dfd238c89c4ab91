"""Helpers for the synthetic trees' tests (tests/test_synthetic*.py): read
back what a tree wrote, independently of the module that wrote it."""

import csv
import gzip
import hashlib
import os

import numpy as np
from PIL import Image

from xray_tfdata.synthetic import tree

CODES = {'1.0', '0.0', '-1.0', ''}


def read_csv(path):
  """(header, rows as dicts, rows as lists) of a CSV or CSV.gz file."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rt', newline='', encoding='utf-8') as f:
    rows = list(csv.reader(f))
  return rows[0], [dict(zip(rows[0], row)) for row in rows[1:]], rows[1:]


def files(root):
  """Every file under root (relative paths, sorted), the marker left out."""
  found = []
  for folder, _, names in os.walk(root):
    found += [os.path.relpath(os.path.join(folder, n), root) for n in names]
  return sorted(f for f in found if f != tree.MARKER)


def tree_hashes(out):
  """{relative path: sha256} of every file of a tree."""
  hashes = {}
  for f in files(out):
    with open(os.path.join(out, f), 'rb') as handle:
      hashes[f] = hashlib.sha256(handle.read()).hexdigest()
  return hashes


def display(path):
  """An image file's pixels as displayed, float [height, width]: 8-bit
  files as they are; 16-bit PNGs and DICOMs (MONOCHROME1 inverted) scaled
  from their own minimum and maximum to 0..255."""
  if path.endswith(('.dcm', '.dicom')):
    import pydicom  # pylint: disable=g-import-not-at-top
    dataset = pydicom.dcmread(path)
    pixels = dataset.pixel_array.astype(np.float64)
    if dataset.PhotometricInterpretation == 'MONOCHROME1':
      pixels = pixels.max() - pixels
  else:
    with Image.open(path) as image:
      if image.mode in ('L', 'RGB'):
        return np.asarray(image.convert('L'), np.float64)
      pixels = np.asarray(image, np.float64)
  low, high = pixels.min(), pixels.max()
  return 255 * (pixels - low) / max(high - low, 1)


def region_means(path, regions):
  """Mean intensity of each (y0, y1, x0, x1) fraction box, at 64 px."""
  image = Image.fromarray(np.clip(display(path), 0, 255).astype(np.uint8))
  pixels = np.asarray(image.resize((64, 64)), np.float64)
  means = []
  for boxes in regions:
    values = [pixels[int(y0 * 64):int(y1 * 64), int(x0 * 64):int(x1 * 64)]
              for y0, y1, x0, x1 in boxes]
    means.append(np.mean(np.concatenate([v.ravel() for v in values])))
  return means


def auc(positives, negatives):
  """The Mann-Whitney AUC, ties counted half."""
  positives, negatives = np.asarray(positives), np.asarray(negatives)
  return ((positives[:, None] > negatives[None, :]).mean() +
          0.5 * (positives[:, None] == negatives[None, :]).mean())


# Lung bases (effusion), relative to the upper lungs; the heart's borders
# beside the spine (an enlarged heart reaches them), relative to the middle.
BASES = [(0.7, 0.85, 0.2, 0.4), (0.7, 0.85, 0.6, 0.8)]
UPPER = [(0.3, 0.45, 0.2, 0.4), (0.3, 0.45, 0.6, 0.8)]
HEART_SIDES = [(0.58, 0.68, 0.31, 0.38), (0.58, 0.68, 0.7, 0.77)]


def assert_findings_show(frontal):
  """Images whose label file says 1.0 differ from those saying 0.0 or
  nothing, in the region the finding occupies; on the written files.

  Args:
    frontal: [(path, effusion code, cardiomegaly code)] of frontal images.
  """
  effusion = {True: [], False: []}
  heart = {True: [], False: []}
  for path, effusion_code, cardiomegaly_code in frontal:
    if effusion_code == '-1.0' or cardiomegaly_code == '-1.0':
      continue  # uncertain: either
    bases, upper, sides = region_means(path, [BASES, UPPER, HEART_SIDES])
    effusion[effusion_code == '1.0'].append(bases - upper)
    if effusion_code != '1.0':  # an effusion brightens the heart's sides too
      heart[cardiomegaly_code == '1.0'].append(sides - upper)
  for name, values in (('effusion', effusion), ('cardiomegaly', heart)):
    assert len(values[True]) >= 5 and len(values[False]) >= 5, name
    assert auc(values[True], values[False]) > 0.85, name



def cross_validated_auc(paths, labels, size=16):
  """The AUC of a model fitted on the files' displayed pixels at size x
  size (scikit-learn's random forest, 100 trees), each image scored by a
  model fitted on the other folds (5-fold, stratified): well above 0.5 when
  a model can learn the label from the pixels. (A linear model on 300 tiny
  images reaches about 0.81 on siim and nlm_tb; their signs move around.)"""
  from sklearn import ensemble  # pylint: disable=g-import-not-at-top
  from sklearn import metrics  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  features = []
  for path in paths:
    image = Image.fromarray(np.clip(display(path), 0, 255).astype(np.uint8))
    features.append(np.asarray(image.resize((size, size)), np.float64) / 255)
  features = np.stack(features).reshape(len(paths), -1)
  labels = np.asarray(labels, int)
  folds = model_selection.StratifiedKFold(5, shuffle=True, random_state=0)
  scores = model_selection.cross_val_predict(
      ensemble.RandomForestClassifier(100, random_state=0), features, labels,
      cv=folds, method='predict_proba')[:, 1]
  return metrics.roc_auc_score(labels, scores)
