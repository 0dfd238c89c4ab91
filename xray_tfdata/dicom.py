"""DICOM radiographs to display intensities (pydicom; no TensorFlow).

A chest film stored as DICOM is not a picture until the standard's
grayscale pipeline has run (PS3.3 C.11, PS3.4 N.2.1), in this order:

  stored values -> modality LUT (Rescale Slope and Intercept; a negative
  slope inverts) -> VOI (the file's VOI LUT Sequence, else its Window
  Center/Width, else the full range the stored bits allow) -> MONOCHROME1
  inverted (there white is the lowest value) -> [0, 1]

`decode` returns that [0, 1] float image; the converter resizes it in float
and quantizes to 8 bits once. A plain divide by 65535 instead turns a
12-bit film nearly black, and a MONOCHROME1 film into its negative, and both
train without any error.

Only single-frame, one-sample grayscale images are accepted; anything else
raises `DicomError` with the reason, which the converter records as a skip.
A compression pydicom cannot decode with what is installed names its
transfer syntax and the extra to install (`pip install
'xray_tfdata[dicom-full]'`). pydicom itself is the optional extra `dicom`
and is imported on first use.
"""

import hashlib
import os

import numpy as np

from xray_tfdata import checks
from xray_tfdata import errors

EXTENSIONS = ('.dcm', '.dicom')
_PREAMBLE_BYTES = 128


class DicomError(errors.XrayError):
  """A DICOM file that cannot become a grayscale training image; the
  message is the reason."""


def is_dicom(path):
  """Whether path names a DICOM file: by extension, or by the 'DICM' magic
  after the 128-byte preamble."""
  if path.lower().endswith(EXTENSIONS):
    return True
  try:
    with open(path, 'rb') as f:
      f.seek(_PREAMBLE_BYTES)
      return f.read(4) == b'DICM'
  except OSError:
    return False


def _pydicom():
  try:
    import pydicom  # pylint: disable=g-import-not-at-top  (optional extra)
  except ImportError as e:
    raise DicomError("DICOM needs pydicom: pip install 'xray_tfdata[dicom]'"
                     ) from e
  return pydicom


def read_header(path):
  """The data set without its pixels (for planning a conversion)."""
  return _pydicom().dcmread(path, stop_before_pixels=True)


def _check_image(dataset):
  meta = getattr(dataset, 'file_meta', None)
  syntax = getattr(meta, 'TransferSyntaxUID', None)
  if syntax is None:
    raise DicomError('DICOM without a transfer syntax (file meta 0002,0010)')
  if 'PixelData' not in dataset:
    raise DicomError('DICOM without pixel data')
  samples = int(dataset.get('SamplesPerPixel', 1))
  photometric = str(dataset.get('PhotometricInterpretation', ''))
  if samples != 1 or photometric not in ('MONOCHROME1', 'MONOCHROME2'):
    raise DicomError(f'not a grayscale image ({photometric or "no"} '
                     f'photometric interpretation, {samples} samples per '
                     'pixel)')
  frames = int(dataset.get('NumberOfFrames', 1) or 1)
  if frames != 1:
    raise DicomError(f'multi-frame DICOM ({frames} frames)')
  return syntax


def _modality(stored, dataset):
  slope = float(dataset.get('RescaleSlope', 1) or 1)
  intercept = float(dataset.get('RescaleIntercept', 0) or 0)
  return stored.astype(np.float64) * slope + intercept


def full_range(bits, signed=False):
  """(smallest, largest) value of `bits`-bit integers: the full range that
  the 'full' VOI maps to [0, 1]. Also the rule for 16-bit PNG and TIFF
  files (`imaging`), whose depth is read from their values instead."""
  if signed:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
  return 0, 2 ** bits - 1


def _stored_range(dataset):
  """The modality values of the smallest and largest stored value the
  file's BitsStored allows, in ascending order."""
  bits = int(dataset.get('BitsStored', dataset.get('BitsAllocated', 16)))
  low, high = full_range(bits,
                         int(dataset.get('PixelRepresentation', 0)) == 1)
  ends = _modality(np.array([low, high]), dataset)
  return float(ends.min()), float(ends.max())


def _first(value):
  # Window Center/Width may be multi-valued (one per suggested window): the
  # first is the primary one.
  try:
    return float(value[0])
  except TypeError:
    return float(value)


def _window(values, dataset):
  """The linear VOI function of PS3.3 C.11.2.1.2.1, to [0, 1]."""
  center = _first(dataset.WindowCenter)
  width = _first(dataset.WindowWidth)
  if width < 1:
    raise DicomError(f'window width {width} is below 1')
  if width == 1:
    return (values >= center - 0.5).astype(np.float64)
  return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _voi_lut(values, dataset):
  """The first item of the VOI LUT Sequence (PS3.3 C.11.2.1.1), to [0, 1]."""
  item = dataset.VOILUTSequence[0]
  entries, first_mapped, bits = (int(v) for v in item.LUTDescriptor)
  entries = entries or 65536  # 0 means 2^16 entries
  data = item.LUTData
  if isinstance(data, bytes):  # OW: 16-bit words (8-bit LUTs are padded)
    data = np.frombuffer(data, dtype='<u2')
  data = np.asarray(data, dtype=np.float64).reshape(-1)[:entries]
  index = np.clip(np.rint(values) - first_mapped, 0, len(data) - 1)
  return data[index.astype(np.int64)] / float(2 ** bits - 1)


def voi_source(dataset, voi='auto'):
  """Which VOI step `decode` applies to this data set: 'lut', 'window' or
  'full'."""
  if voi not in checks.VOI_POLICIES:
    raise ValueError(f'voi must be one of {checks.VOI_POLICIES}, got {voi!r}')
  if voi == 'auto' and 'VOILUTSequence' in dataset and len(
      dataset.VOILUTSequence):
    return 'lut'
  if voi in ('auto', 'window') and 'WindowCenter' in dataset and (
      'WindowWidth' in dataset):
    return 'window'
  return 'full'


def pixel_digest(path):
  """sha256 of the stored pixel values (with the image's shape), the same
  for the same image whatever its transfer syntax, so a re-encoded copy
  (uncompressed, RLE, lossless JPEG) counts as a duplicate.

  The values are hashed in the narrowest of 8-bit unsigned, 16-bit unsigned,
  16-bit signed and 64-bit integers that holds them all, little-endian, so
  the bits allocated and the byte order do not change the digest of the
  same values. Narrowest, not always 64-bit: sha256 is a large part of the
  cost (BUILD_NOTES.md).

  Raises:
    DicomError: see `decode`.
  """
  stored, _ = _read_stored(path)
  low, high = int(stored.min()), int(stored.max())
  if low >= 0:
    dtype = 'u1' if high < 2 ** 8 else '<u2' if high < 2 ** 16 else '<i8'
  else:
    dtype = '<i2' if -2 ** 15 <= low and high < 2 ** 15 else '<i8'
  digest = hashlib.sha256(repr(stored.shape).encode())
  digest.update(np.ascontiguousarray(stored, dtype=dtype).tobytes())
  return digest.hexdigest()


def _read_stored(path):
  """(stored pixel values, data set) of a single-frame grayscale file.

  Raises:
    DicomError: see `decode`.
  """
  pydicom = _pydicom()
  try:
    dataset = pydicom.dcmread(path)
  except Exception as e:  # pylint: disable=broad-except  (malformed files)
    raise DicomError(f'cannot read DICOM: {type(e).__name__}: '
                     f'{str(e).replace(path, os.path.basename(path))}') from e
  syntax = _check_image(dataset)
  try:
    return dataset.pixel_array, dataset
  except Exception as e:  # pylint: disable=broad-except  (handler zoo)
    name = getattr(syntax, 'name', str(syntax))
    if getattr(syntax, 'is_compressed', False):
      raise DicomError(
          f'cannot decode transfer syntax {name} ({syntax}): '
          "pip install 'xray_tfdata[dicom-full]' (pyjpegls, python-gdcm)"
      ) from e
    raise DicomError(f'cannot decode pixels: {type(e).__name__}: {e}') from e


def decode(path, voi='auto'):
  """Reads one DICOM file as display intensities in [0, 1].

  Args:
    path: a DICOM file.
    voi: 'auto' (VOI LUT Sequence, else Window Center/Width, else the full
      stored range), 'window' (the window, else the full range) or 'full'
      (the full range the stored bits allow, whatever the file suggests).

  Returns:
    (float64 array [rows, columns] in [0, 1] with white = 1, the VOI step
    applied: 'lut', 'window' or 'full').

  Raises:
    DicomError: not a single-frame grayscale image, unreadable, or
      compressed with a syntax that cannot be decoded here (the message
      names it and the extra to install).
    ValueError: unknown voi.
  """
  stored, dataset = _read_stored(path)
  values = _modality(stored, dataset)
  source = voi_source(dataset, voi)
  if source == 'lut':
    image = _voi_lut(values, dataset)
  elif source == 'window':
    image = _window(values, dataset)
  else:
    low, high = _stored_range(dataset)
    image = (values - low) / (high - low) if high > low else values * 0.0
  if str(dataset.PhotometricInterpretation) == 'MONOCHROME1':
    image = 1.0 - image
  return np.clip(image, 0.0, 1.0), source
