"""The synthetic SIIM-ACR Pneumothorax tree and its run-length encoder
(xray_tfdata/synthetic/siim.py), checked against a decoder written here from
the competition's description: pairs (start, length) over the image in
column-major order, each start counted from the end of the previous run."""

import collections
import os

import numpy as np
import pytest

from synthetic_checks import auc
from synthetic_checks import cross_validated_auc
from synthetic_checks import files
from xray_tfdata.synthetic import siim

pydicom = pytest.importorskip('pydicom')

NUM_IMAGES = 40


def decode_rle(code, height, width):
  """The competition's decoding: a bool mask [height, width]."""
  flat = np.zeros(height * width, bool)
  if code.strip() == '-1':
    return flat.reshape(height, width)
  numbers = [int(n) for n in code.split()]
  position = 0
  for start, length in zip(numbers[0::2], numbers[1::2]):
    position += start
    flat[position:position + length] = True
    position += length
  return flat.reshape(width, height).T  # column by column


def test_encoder_on_a_hand_computed_mask():
  # Columns (top to bottom): (0,0,0), (1,1,0), (0,0,1): pixels 3-4 and 8.
  mask = np.array([[0, 1, 0], [0, 1, 0], [0, 0, 1]], bool)
  assert siim.encode_rle(mask) == '3 2 3 1'
  assert siim.encode_rle(np.zeros((4, 3), bool)) == '-1'
  assert siim.encode_rle(np.ones((2, 3), bool)) == '0 6'


def test_encoder_round_trips_through_an_independent_decoder():
  rng = np.random.default_rng(0)
  for height, width in [(1, 1), (5, 7), (7, 5), (16, 16), (33, 20)]:
    for density in (0.0, 0.05, 0.5, 0.95, 1.0):
      mask = rng.random((height, width)) < density
      mask[0, 0] = mask[-1, -1] = density > 0.5  # the corners both ways
      code = siim.encode_rle(mask)
      np.testing.assert_array_equal(decode_rle(code, height, width), mask)


@pytest.fixture(scope='module')
def siim_tree(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('siim') / 'siim')
  summary = siim.make_synthetic_siim(out, num_images=NUM_IMAGES, seed=3,
                                     size_scale=0.06, num_workers=1)
  return out, summary


def _rows(out):
  with open(os.path.join(out, 'train-rle.csv'), encoding='utf-8') as f:
    lines = f.read().splitlines()
  return lines[0], [line.split(',') for line in lines[1:]]


def test_label_file_and_dicom_layout(siim_tree):
  out, summary = siim_tree
  header, rows = _rows(out)
  assert header == 'ImageId, EncodedPixels'  # the real file's leading space
  per_image = collections.Counter(image_id for image_id, _ in rows)
  assert len(per_image) == NUM_IMAGES
  assert summary['rows'] == len(rows)
  assert dict(collections.Counter(per_image.values())) == summary[
      'rows_per_image']
  assert max(per_image.values()) >= 2  # several regions on some images
  for image_id, code in rows:
    if code == '-1':
      assert per_image[image_id] == 1  # -1 is alone
  negatives = {i for i, code in rows if code == '-1'}
  assert summary['negative_images'] == len(negatives)
  assert summary['positive_images'] == NUM_IMAGES - len(negatives) > 5
  dicoms = [f for f in files(out) if f.endswith('.dcm')]
  assert len(dicoms) == NUM_IMAGES
  for path in dicoms:
    folder, study, series, name = path.split('/')
    assert folder == 'dicom-images-train'
    dataset = pydicom.dcmread(os.path.join(out, path))
    assert name == f'{dataset.SOPInstanceUID}.dcm'
    assert (dataset.StudyInstanceUID, dataset.SeriesInstanceUID) == (
        study, series)
    assert dataset.SOPInstanceUID in per_image


def test_masks_are_the_darkened_pixels(siim_tree):
  """Each image's union of decoded masks is exactly where the drawing put
  the pneumothorax (flat value 12), and a model can see it."""
  out, summary = siim_tree
  _, rows = _rows(out)
  codes = collections.defaultdict(list)
  for image_id, code in rows:
    codes[image_id].append(code)
  scores = {True: [], False: []}
  for path in files(out):
    if not path.endswith('.dcm'):
      continue
    dataset = pydicom.dcmread(os.path.join(out, path))
    pixels = dataset.pixel_array
    union = np.zeros(pixels.shape, bool)
    for code in codes[dataset.SOPInstanceUID]:
      union |= decode_rle(code, *pixels.shape)
    positive = codes[dataset.SOPInstanceUID] != ['-1']
    assert union.any() == positive
    if positive:
      assert (pixels[union] == 12).all()
      assert int(union.sum()) == summary['mask_pixels'][
          dataset.SOPInstanceUID]
      assert pixels[~union].mean() > 40  # the rest is the drawn chest
    scores[positive].append((pixels == 12).mean())
  assert auc(scores[True], scores[False]) > 0.95


@pytest.mark.slow  # fits a model
def test_a_model_learns_pneumothorax_from_the_pixels(tmp_path):
  out = str(tmp_path / 'siim')
  siim.make_synthetic_siim(out, num_images=300, seed=3, size_scale=0.03,
                           num_workers=1)
  _, rows = _rows(out)
  positive = {image_id for image_id, code in rows if code != '-1'}
  paths = [os.path.join(out, f) for f in files(out) if f.endswith('.dcm')]
  labels = [os.path.basename(p)[:-len('.dcm')] in positive for p in paths]
  assert cross_validated_auc(paths, labels) > 0.9
