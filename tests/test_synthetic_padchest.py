"""The synthetic PadChest tree (xray_tfdata/synthetic/padchest.py).

The header below is the real file's first line (torchxrayvision's copy of
PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz), written out here,
so that a changed constant fails. Labels are parsed as Python literals,
independently of the module, and recounted.
"""

import ast
import collections
import gzip
import os
import struct

import numpy as np
import pytest
from PIL import Image

from synthetic_checks import assert_findings_show
from synthetic_checks import cross_validated_auc
from synthetic_checks import files
from synthetic_checks import read_csv
from xray_tfdata.synthetic import padchest

REAL_HEADER = (
    ',ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,PatientBirth,'
    'PatientSex_DICOM,ViewPosition_DICOM,Projection,MethodProjection,'
    'Pediatric,Modality_DICOM,Manufacturer_DICOM,'
    'PhotometricInterpretation_DICOM,PixelRepresentation_DICOM,'
    'PixelAspectRatio_DICOM,SpatialResolution_DICOM,BitsStored_DICOM,'
    'WindowCenter_DICOM,WindowWidth_DICOM,Rows_DICOM,Columns_DICOM,'
    'XRayTubeCurrent_DICOM,Exposure_DICOM,ExposureInuAs_DICOM,ExposureTime,'
    'RelativeXRayExposure_DICOM,ReportID,Report,MethodLabel,Labels,'
    'Localizations,LabelsLocalizationsBySentence,labelCUIS,'
    'LocalizationsCUIS')
CSV = 'PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv'
NUM_IMAGES = 120


@pytest.fixture(scope='module')
def padchest_tree(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('padchest') / 'padchest')
  summary = padchest.make_synthetic_padchest(
      out, num_images=NUM_IMAGES, seed=4, size_scale=0.025, num_workers=1)
  return out, summary


def _png_header(path):
  """(bit depth, colour type) from the PNG's IHDR chunk."""
  with open(path, 'rb') as f:
    data = f.read(33)
  assert data[:8] == b'\x89PNG\r\n\x1a\n' and data[12:16] == b'IHDR'
  width, height, depth, colour = struct.unpack('>IIBB', data[16:26])
  return depth, colour


def test_csv_and_image_layout(padchest_tree):
  out, summary = padchest_tree
  with open(os.path.join(out, CSV), encoding='utf-8') as f:
    assert f.readline().rstrip('\n') == REAL_HEADER
  header, rows, _ = read_csv(os.path.join(out, CSV))
  assert header[0] == ''  # the unnamed index column
  assert [int(row['']) for row in rows] == list(range(NUM_IMAGES))
  images = files(out)
  assert sorted(f'{row["ImageDir"]}/{row["ImageID"]}' for row in rows) == [
      f for f in images if f.endswith('.png')]
  assert len({row['ImageDir'] for row in rows}) >= 2
  for row in rows[:20]:
    path = os.path.join(out, row['ImageDir'], row['ImageID'])
    assert _png_header(path) == (16, 0)  # 16-bit grayscale
    with Image.open(path) as image:
      assert image.size == (int(row['Columns_DICOM']), int(row['Rows_DICOM']))
  assert summary['rows'] == summary['num_images'] == NUM_IMAGES
  patients = {row['PatientID'] for row in rows}
  assert summary['num_patients'] == len(patients) < NUM_IMAGES


def test_labels_recount(padchest_tree):
  """Labels parsed as literals (never by substring) give the summary's
  counts; ['']  and empty cells are there and counted apart."""
  out, summary = padchest_tree
  _, rows, _ = read_csv(os.path.join(out, CSV))
  terms = collections.Counter()
  empty_list = missing = 0
  for row in rows:
    if not row['Labels']:
      missing += 1
      continue
    labels = ast.literal_eval(row['Labels'])
    assert isinstance(labels, list)
    if labels == ['']:
      empty_list += 1
      continue
    terms.update(labels)
    assert labels == ['normal'] or 'normal' not in labels
  assert empty_list >= 1 and missing >= 1
  assert (empty_list, missing) == (summary['empty_list'], summary['missing'])
  assert dict(terms) == summary['labels']
  assert terms['normal'] == summary['normal'] > 0
  assert terms['pleural effusion'] >= 10 and terms['cardiomegaly'] >= 10
  for column, key in (('Projection', 'projections'),
                      ('MethodLabel', 'methods')):
    assert dict(collections.Counter(row[column] for row in rows)) == summary[
        key]
  assert {'PA', 'L'} <= set(summary['projections'])
  assert set(summary['methods']) == {'Physician', 'RNN_model'}
  children = sum(int(row['StudyDate_DICOM'][:4]) -
                 int(float(row['PatientBirth'])) <= 10 for row in rows)
  assert children == summary['children'] >= 1


def test_bits_stored_and_window_describe_the_pixels(padchest_tree):
  out, summary = padchest_tree
  _, rows, _ = read_csv(os.path.join(out, CSV))
  seen = collections.Counter()
  for row in rows:
    with Image.open(os.path.join(out, row['ImageDir'], row['ImageID'])) as im:
      pixels = np.asarray(im, np.int64)
    bits = int(row['BitsStored_DICOM'])
    seen[bits] += 1
    assert pixels.max() < 2 ** bits
    if bits == 16:
      assert pixels.max() > 4095  # content beyond 12 bits
    if row['WindowCenter_DICOM'] != 'None':
      center = float(row['WindowCenter_DICOM'])
      width = float(row['WindowWidth_DICOM'])
      assert center - width / 2 - 1 <= pixels.min()
      assert pixels.max() <= center + width / 2 + 1
  assert set(seen) == {10, 12, 16}
  assert {int(k): v for k, v in summary['bits_stored'].items()} == dict(seen)
  assert any(row['WindowCenter_DICOM'] == 'None' and
             row['BitsStored_DICOM'] == '12' for row in rows)


def test_effusion_and_cardiomegaly_show_in_the_pixels(padchest_tree):
  out, _ = padchest_tree
  _, rows, _ = read_csv(os.path.join(out, CSV))
  frontal = []
  for row in rows:
    if row['Projection'] == 'L' or row['Labels'] in ('', "['']"):
      continue
    labels = ast.literal_eval(row['Labels'])
    frontal.append((os.path.join(out, row['ImageDir'], row['ImageID']),
                    '1.0' if 'pleural effusion' in labels else '0.0',
                    '1.0' if 'cardiomegaly' in labels else '0.0'))
  assert_findings_show(frontal)


def test_gzipped_label_file(tmp_path):
  out = str(tmp_path / 'gz')
  padchest.make_synthetic_padchest(out, num_images=20, seed=1,
                                   size_scale=0.01, num_workers=1,
                                   gzip_csv=True)
  assert not os.path.exists(os.path.join(out, CSV))
  with gzip.open(os.path.join(out, CSV + '.gz'), 'rt') as f:
    assert f.readline().rstrip('\n') == REAL_HEADER


@pytest.mark.slow  # fits a model
def test_a_model_learns_pleural_effusion_from_the_16_bit_pixels(tmp_path):
  out = str(tmp_path / 'padchest')
  padchest.make_synthetic_padchest(out, num_images=300, seed=5,
                                   size_scale=0.01, num_workers=1)
  _, rows, _ = read_csv(os.path.join(out, CSV))
  rows = [row for row in rows
          if row['Projection'] != 'L' and row['Labels'] not in ('', "['']")]
  paths = [os.path.join(out, row['ImageDir'], row['ImageID']) for row in rows]
  labels = ['pleural effusion' in ast.literal_eval(row['Labels'])
            for row in rows]
  assert cross_validated_auc(paths, labels) > 0.85
