"""DICOM decoding against the standard's grayscale pipeline, on files
synthesized here with pydicom (no network)."""

import io
import os

import numpy as np
from PIL import Image
import pytest

import pydicom  # the 'dicom' extra, which '.[test]' installs
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_files import write_dicom
from xray_tfdata import dicom
from xray_tfdata import imaging

ROWS, COLUMNS = 6, 8


def _stored(bits=12, seed=0):
  """A 12-bit ramp plus noise, covering 0 and the maximum."""
  rng = np.random.default_rng(seed)
  values = rng.integers(0, 2 ** bits, (ROWS, COLUMNS))
  values[0, 0], values[0, 1] = 0, 2 ** bits - 1
  return values.astype(np.uint16)


def _decoded(path):
  """The converter's stored pixels for the file, at its own size."""
  result = imaging.decode_and_resize((path, (ROWS, COLUMNS)))
  assert not isinstance(result, str), result
  png, height, width = result
  assert (height, width) == (ROWS, COLUMNS)
  return np.asarray(Image.open(io.BytesIO(png)))


def _as_8bit(intensities):
  return np.rint(np.clip(intensities, 0, 1) * 255).astype(np.uint8)


def test_monochrome2_12_bit_uses_the_stored_range(tmp_path):
  stored = _stored()
  path = write_dicom(str(tmp_path / 'm2.dcm'), stored)

  # Not a divide by 65535 (which would leave a 12-bit film at most 16 gray).
  np.testing.assert_array_equal(_decoded(path), _as_8bit(stored / 4095))
  assert _decoded(path).max() == 255


def test_monochrome1_is_inverted(tmp_path):
  stored = _stored()
  path = write_dicom(str(tmp_path / 'm1.dcm'), stored,
                     photometric='MONOCHROME1')

  np.testing.assert_array_equal(_decoded(path), _as_8bit(1 - stored / 4095))


def test_rescale_slope_and_intercept_negative_slope_inverts(tmp_path):
  stored = _stored()
  scaled = write_dicom(str(tmp_path / 'scaled.dcm'), stored, RescaleSlope=2,
                       RescaleIntercept=-1024)
  negative = write_dicom(str(tmp_path / 'negative.dcm'), stored,
                         RescaleSlope=-1, RescaleIntercept=4095)

  # Modality values 2 s - 1024 over their full range [-1024, 7166] is the
  # same ramp; with slope -1 white and black trade places.
  np.testing.assert_array_equal(_decoded(scaled), _as_8bit(stored / 4095))
  np.testing.assert_array_equal(_decoded(negative),
                                _as_8bit(1 - stored / 4095))


def test_window_center_width(tmp_path):
  stored = np.full((ROWS, COLUMNS), 2048, np.uint16)
  stored[0, :6] = [0, 1535, 1536, 2048, 2559, 2560]
  path = write_dicom(str(tmp_path / 'window.dcm'), stored, WindowCenter=2048,
                     WindowWidth=1024)

  # PS3.3 C.11.2.1.2.1: x <= c - 0.5 - (w-1)/2 -> 0; x > c - 0.5 + (w-1)/2
  # -> 1; else ((x - (c - 0.5)) / (w - 1) + 0.5).
  def reference(x, c=2048, w=1024):
    if x <= c - 0.5 - (w - 1) / 2:
      return 0.0
    if x > c - 0.5 + (w - 1) / 2:
      return 1.0
    return (x - (c - 0.5)) / (w - 1) + 0.5

  expected = np.vectorize(reference)(stored.astype(np.float64))
  np.testing.assert_array_equal(_decoded(path), _as_8bit(expected))
  assert list(_decoded(path)[0, :6]) == [0, 0, 0, 128, 255, 255]


def test_voi_lut_sequence_wins_over_the_window(tmp_path):
  stored = _stored()
  lut = np.sqrt(np.arange(4096) / 4095) * 255  # a gamma curve, 8-bit LUT
  item = Dataset()
  item.LUTDescriptor = [4096, 0, 8]
  item.add_new('LUTData', 'US', [int(v) for v in np.rint(lut)])
  path = write_dicom(str(tmp_path / 'lut.dcm'), stored,
                     VOILUTSequence=Sequence([item]), WindowCenter=100,
                     WindowWidth=10)

  np.testing.assert_array_equal(_decoded(path),
                                np.rint(lut)[stored].astype(np.uint8))
  intensities, source = dicom.decode(path, voi='window')
  assert source == 'window' and intensities.max() == 1.0  # override
  intensities, source = dicom.decode(path, voi='full')
  assert source == 'full'
  np.testing.assert_allclose(intensities, stored / 4095)


def test_rle_compressed_equals_uncompressed(tmp_path):
  stored = _stored(seed=3)
  plain = write_dicom(str(tmp_path / 'plain.dcm'), stored)
  rle = write_dicom(str(tmp_path / 'rle.dcm'), stored, syntax=uid.RLELossless)

  assert pydicom.dcmread(rle).file_meta.TransferSyntaxUID == uid.RLELossless
  np.testing.assert_array_equal(_decoded(rle), _decoded(plain))


def test_resized_in_float_then_quantized_once(tmp_path):
  stored = _stored(seed=4)
  path = write_dicom(str(tmp_path / 'big.dcm'), stored)

  png, _, _ = imaging.decode_and_resize((path, (3, 4)))
  expected = Image.fromarray((stored / 4095).astype(np.float32), 'F').resize(
      (4, 3), Image.Resampling.BILINEAR)
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))),
                                _as_8bit(np.asarray(expected)))


@pytest.mark.parametrize('kind, reason', [
    ('rgb', 'not a grayscale image'),
    ('multi_frame', 'multi-frame DICOM (2 frames)'),
    ('no_pixels', 'without pixel data'),
    ('truncated', 'cannot decode pixels'),
    ('no_transfer_syntax', 'transfer syntax'),
])
def test_unusable_files_are_skipped_with_a_reason(tmp_path, kind, reason):
  path = str(tmp_path / f'{kind}.dcm')
  if kind == 'rgb':
    write_dicom(path, np.zeros((ROWS, COLUMNS, 3), np.uint8),
                photometric='RGB', samples=3)
  elif kind == 'multi_frame':
    write_dicom(path, np.stack([_stored(), _stored(seed=1)]), frames=2)
  elif kind == 'no_pixels':
    write_dicom(path, _stored(), with_pixels=False)
  elif kind == 'truncated':  # cut short inside the pixel data
    with open(write_dicom(path, _stored()), 'rb') as f:
      data = f.read()
    with open(path, 'wb') as f:
      f.write(data[:-50])
  else:
    write_dicom(path, _stored())
    dataset = pydicom.dcmread(path)
    del dataset.file_meta.TransferSyntaxUID
    dataset.save_as(path)

  result = imaging.decode_and_resize((path, (ROWS, COLUMNS)))

  assert isinstance(result, str) and reason in result, result


def test_undecodable_compression_names_the_syntax_and_the_extra(
    tmp_path, monkeypatch):
  path = write_dicom(str(tmp_path / 'rle.dcm'), _stored(),
                     syntax=uid.RLELossless)

  def no_handler(self):
    raise RuntimeError('no pixel data handler available')

  monkeypatch.setattr(pydicom.dataset.Dataset, 'pixel_array',
                      property(no_handler))
  result = imaging.decode_and_resize((path, (ROWS, COLUMNS)))

  assert 'RLE Lossless' in result and 'dicom-full' in result, result


def test_dicom_is_recognized_by_its_magic_without_an_extension(tmp_path):
  path = write_dicom(str(tmp_path / 'image'), _stored())
  assert dicom.is_dicom(path)
  assert not dicom.is_dicom(str(tmp_path))  # a folder, unreadable as a file
  np.testing.assert_array_equal(_decoded(path), _as_8bit(_stored() / 4095))


def test_a_dicom_tree_converts_and_no_patient_identifier_is_stored(tmp_path):
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  from xray_tfdata import writer  # pylint: disable=g-import-not-at-top

  src = tmp_path / 'src'
  for split, count in (('train', 6), ('val', 1), ('test', 1)):
    for label, name in enumerate(('NORMAL', 'PNEUMONIA')):
      (src / split / name).mkdir(parents=True)
      for i in range(count):
        write_dicom(str(src / split / name / f'person{i}_{split}_{name}.dcm'),
                    _stored(seed=100 * label + 10 * len(split) + i),
                    photometric='MONOCHROME1')
  out = str(tmp_path / 'out')

  info = writer.convert(str(src), out, image_size=8, num_workers=1)

  builder = pipeline.DatasetBuilder(out)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from xray_tfdata import schema  # pylint: disable=g-import-not-at-top
  records = [schema.parse(r) for s in info['splits']['train']['shards']
             for r in tf.data.TFRecordDataset(os.path.join(out, s['filename']))]
  # Grouped by the header's PatientID (one patient here), stored hashed;
  # the file names, which are not that id, stay.
  keys = {r[schema.PATIENT_ID].numpy() for r in records}
  assert len(keys) == 1 and len(keys.pop()) == 16
  assert all(r[schema.FILENAME].numpy().startswith(b'train/') and
             b'person' in r[schema.FILENAME].numpy() for r in records)
  assert builder.info.num_examples('train') == 12
  images = np.concatenate([b[0].numpy() for b in builder.as_dataset(
      'train', batch_size=4)])
  assert images.shape == (12, 8, 8, 1) and images.std() > 10
  for root, _, files in os.walk(out):
    for f in files:
      with open(os.path.join(root, f), 'rb') as data:
        content = data.read()
      assert b'PATIENT-SECRET-42' not in content and b'Doe^Jane' not in content


def test_duplicates_are_found_by_pixels_across_transfer_syntaxes(tmp_path):
  from xray_tfdata import sources  # pylint: disable=g-import-not-at-top

  paths = {
      'NORMAL/plain.dcm': _stored(seed=5),
      'NORMAL/rle.dcm': _stored(seed=5),  # the same film, re-encoded
      'NORMAL/other.dcm': _stored(seed=6),
  }
  (tmp_path / 'NORMAL').mkdir()
  files = []
  for path, stored in paths.items():
    syntax = uid.RLELossless if 'rle' in path else uid.ExplicitVRLittleEndian
    write_dicom(str(tmp_path / path), stored, syntax=syntax)
    files.append(sources.SourceFile(path, None, 'NORMAL', 0, path,
                                    os.path.getsize(tmp_path / path)))
  assert files[0].num_bytes != files[1].num_bytes  # not the same bytes

  kept, duplicates = sources.find_duplicates(str(tmp_path), files,
                                             prefer_evaluation_splits=False)

  assert [f.path for f in kept] == ['NORMAL/plain.dcm', 'NORMAL/other.dcm']
  assert len(duplicates) == 1
  assert duplicates[0]['kept'] == 'NORMAL/plain.dcm'
  assert duplicates[0]['dropped'] == 'NORMAL/rle.dcm'
  assert duplicates[0]['same'] == 'pixels'


def test_voi_policy_reaches_the_converter_workers(tmp_path):
  stored = _stored(seed=7)
  path = write_dicom(str(tmp_path / 'w.dcm'), stored, WindowCenter=1000,
                     WindowWidth=801)

  def stored_image(voi):
    png, _, _ = imaging.decode_and_resize((path, (ROWS, COLUMNS), voi))
    return np.asarray(Image.open(io.BytesIO(png)))

  np.testing.assert_array_equal(stored_image('full'),
                                _as_8bit(stored / 4095))
  np.testing.assert_array_equal(stored_image('auto'),
                                _as_8bit(dicom.decode(path)[0]))
  assert not np.array_equal(stored_image('auto'), stored_image('full'))


def test_real_monochrome1_chest_film_from_pydicom_data():
  # pydicom-data (34 MB, not a dependency) installs the module data_store;
  # pydicom finds its files through it, without network.
  pytest.importorskip('data_store')
  from pydicom import data  # pylint: disable=g-import-not-at-top
  path = data.get_testdata_file('RG1_UNCR.dcm')
  if path is None:
    pytest.skip('pydicom-data has no RG1_UNCR.dcm')
  dataset = pydicom.dcmread(path)
  assert str(dataset.PhotometricInterpretation) == 'MONOCHROME1'

  intensities, source = dicom.decode(path)

  assert source == 'window'
  # The film as displayed, against the naive divide that makes it a dark
  # negative.
  assert abs(_as_8bit(intensities).mean() - 192) < 1
  naive = dataset.pixel_array / 65535 * 255
  assert abs(naive.mean() - 29) < 1


def test_scan_groups_dicom_files_by_their_patient_id(tmp_path):
  from xray_tfdata.sources import class_folders  # pylint: disable=g-import-not-at-top
  for seed, (name, patient) in enumerate((
      ('NORMAL/a1.dcm', 'A'), ('PNEUMONIA/a2.dcm', 'A'),
      ('PNEUMONIA/b1.dcm', 'B'), ('NORMAL/none.dcm', ''))):
    (tmp_path / os.path.dirname(name)).mkdir(exist_ok=True)
    write_dicom(str(tmp_path / name), _stored(seed=seed), PatientID=patient)

  found = class_folders.scan(str(tmp_path), 'pool')

  assert {f.path: f.patient_id for f in found.files} == {
      'NORMAL/a1.dcm': 'A', 'PNEUMONIA/a2.dcm': 'A', 'PNEUMONIA/b1.dcm': 'B',
      'NORMAL/none.dcm': 'none'}  # no PatientID: the stem, as for JPEGs
  assert all(f.is_dicom for f in found.files)


def test_predict_decodes_dicom_with_the_datasets_voi(tmp_path):
  """tools/predict reads the VOI policy the dataset was converted with."""
  import json  # pylint: disable=g-import-not-at-top
  from xray_tfdata import serving  # pylint: disable=g-import-not-at-top
  data_dir, model_dir = tmp_path / 'data', tmp_path / 'model'
  data_dir.mkdir()
  (model_dir / 'serving').mkdir(parents=True)
  (model_dir / 'config.json').write_text(json.dumps(
      {'image_size': 32, 'data_dir': str(data_dir)}))
  serving_dir = str(model_dir / 'serving')
  assert serving._preprocessing(serving_dir) == (32, 'auto')  # pylint: disable=protected-access
  (data_dir / 'xray_info.json').write_text(
      json.dumps({'format_version': 2, 'class_names': ['NORMAL', 'PNEUMONIA'],
                  'image': {'height': 32, 'width': 32}, 'splits': {},
                  'dicom': {'voi': 'full'}}))
  assert serving._preprocessing(serving_dir) == (32, 'full')  # pylint: disable=protected-access


# Issue 24: signed 12-bit data (PixelRepresentation 1) with a non-zero
# intercept and a window six values wide, off the data's centre. Every
# stored value the test needs sits in one row; the rest is far below.
_SIGNED_INTERCEPT = 100
_NARROW_CENTER, _NARROW_WIDTH = 305, 6


def _signed_stored():
  stored = np.full((ROWS, COLUMNS), -1500, np.int16)
  # Modality values 302..308 span the window; -2048 and 2047 are the
  # signed 12-bit extremes; -200 is negative (65336 if read unsigned).
  stored[0, :] = np.arange(202, 210)  # modality 302..309
  stored[1, :4] = [-2048, 2047, -200, 0]
  return stored


def _write_signed(path, **attributes):
  return write_dicom(path, _signed_stored(), PixelRepresentation=1,
                     RescaleSlope=1, RescaleIntercept=_SIGNED_INTERCEPT,
                     **attributes)


def _standard_window(x, center, width):
  """PS3.3 C.11.2.1.2.1, written out: the linear VOI function, to [0, 1]."""
  if x <= center - 0.5 - (width - 1) / 2:
    return 0.0
  if x > center - 0.5 + (width - 1) / 2:
    return 1.0
  return (x - (center - 0.5)) / (width - 1) + 0.5


def test_narrow_window_on_signed_data_with_an_intercept(tmp_path):
  """The modality LUT (stored * slope + intercept, PS3.3 C.11.1) on signed
  stored values, then the standard's window (center - 0.5, width - 1):
  every pixel against the formulas computed here, in float and in the
  stored 8 bits."""
  path = _write_signed(str(tmp_path / 'signed.dcm'),
                       WindowCenter=_NARROW_CENTER, WindowWidth=_NARROW_WIDTH)
  modality = _signed_stored().astype(np.float64) + _SIGNED_INTERCEPT
  expected = np.vectorize(_standard_window)(modality, _NARROW_CENTER,
                                            _NARROW_WIDTH)
  # Row 0, modality 302..309: 0 at 302, then steps of 1/5, 1 from 307 on.
  np.testing.assert_allclose(expected[0],
                             [0, 0.2, 0.4, 0.6, 0.8, 1, 1, 1])
  intensities, source = dicom.decode(path)
  assert source == 'window'
  np.testing.assert_allclose(intensities, expected, atol=1e-12)
  np.testing.assert_array_equal(_decoded(path), _as_8bit(expected))


def test_full_range_of_signed_data_with_an_intercept(tmp_path):
  """Without a window, the full range signed 12 bits allow, through the
  modality LUT: [-2048, 2047] + intercept -> [0, 1]."""
  path = _write_signed(str(tmp_path / 'signed-full.dcm'))
  low = -2048 + _SIGNED_INTERCEPT
  high = 2047 + _SIGNED_INTERCEPT
  modality = _signed_stored().astype(np.float64) + _SIGNED_INTERCEPT
  expected = (modality - low) / (high - low)
  assert expected[1, 0] == 0.0 and expected[1, 1] == 1.0
  intensities, source = dicom.decode(path)
  assert source == 'full'
  np.testing.assert_allclose(intensities, expected, atol=1e-12)
  np.testing.assert_array_equal(_decoded(path), _as_8bit(expected))
