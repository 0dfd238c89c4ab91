"""DICOM files synthesized with pydicom for the tests (no network)."""

from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.dataset import FileMetaDataset

CR_IMAGE_STORAGE = '1.2.840.10008.5.1.4.1.1.1'  # Computed Radiography


def write_dicom(path, pixels, photometric='MONOCHROME2', bits_stored=12,
                samples=1, frames=None, syntax=uid.ExplicitVRLittleEndian,
                with_pixels=True, **attributes):
  """Writes a CR image file, with a patient's identity in its header.

  Args:
    path: the file to write.
    pixels: the stored values, [rows, columns] (or [frames, rows, columns]);
      [rows, columns, 3] uint8 with samples=3. Their dtype is written as is
      (uint16 for BitsAllocated 16, int16 with PixelRepresentation=1).
    photometric: PhotometricInterpretation.
    bits_stored: BitsStored of a one-sample image (BitsAllocated 16).
    samples: SamplesPerPixel, 1 or 3 (8 bits, interleaved).
    frames: NumberOfFrames, or None for a single frame.
    syntax: the transfer syntax; other than Explicit VR Little Endian, the
      pixels are compressed with pydicom.
    with_pixels: False leaves PixelData out.
    **attributes: more header attributes (WindowCenter, PatientID, ...),
      set last, so they override the defaults.

  Returns:
    path.
  """
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
  meta.MediaStorageSOPInstanceUID = uid.generate_uid()
  meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = CR_IMAGE_STORAGE
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.PatientID = 'PATIENT-SECRET-42'
  ds.PatientName = 'Doe^Jane'
  ds.Rows, ds.Columns = pixels.shape[-2], pixels.shape[-1]
  if samples == 3:
    ds.Rows, ds.Columns = pixels.shape[0], pixels.shape[1]
    ds.PlanarConfiguration = 0
  ds.SamplesPerPixel = samples
  ds.PhotometricInterpretation = photometric
  ds.BitsAllocated = 16 if samples == 1 else 8
  ds.BitsStored = bits_stored if samples == 1 else 8
  ds.HighBit = ds.BitsStored - 1
  ds.PixelRepresentation = 0
  if frames:
    ds.NumberOfFrames = frames
  for key, value in attributes.items():
    setattr(ds, key, value)
  if with_pixels:
    ds.PixelData = pixels.tobytes()
  if syntax != uid.ExplicitVRLittleEndian:
    ds.compress(syntax)
  ds.save_as(path, enforce_file_format=True)
  return path
