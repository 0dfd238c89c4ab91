"""imaging.load_image: the pixels the converter stores, for any file."""

import io
import os

import numpy as np
from PIL import Image
import pytest

from dicom_files import write_dicom  # pydicom: the 'dicom' extra
from xray_tfdata import imaging
from xray_tfdata.synthetic import kermany as synthetic

STORED = (16, 12)  # (height, width): not square, to catch swapped axes


def _dicom(path, pixels):
  """A 12-bit MONOCHROME2 file with a narrow, off-centre window."""
  write_dicom(path, pixels.astype(np.uint16), PatientID='P-7',
              WindowCenter=1200, WindowWidth=900)


def _odd_files(root):
  """A file of each kind the converter handles specially, in the Kaggle
  layout: {path relative to root: its kind}."""
  rng = np.random.default_rng(0)
  gray = rng.integers(0, 256, (40, 30), np.uint8)
  y, x = np.mgrid[0:48, 0:40]
  images = {
      'train/NORMAL/IM-0900-0001.png': Image.fromarray(
          ((x * 1600 + y * 60) % 65536).astype(np.uint16)),  # 16-bit
      'train/NORMAL/IM-0901-0001.jpeg': Image.fromarray(gray).convert('CMYK'),
      'train/PNEUMONIA/person900_virus_1.png': Image.fromarray(
          rng.integers(0, 256, (30, 36, 4), np.uint8), 'RGBA'),
      'val/NORMAL/IM-0902-0001.png': Image.fromarray(gray).convert('P'),
      'test/PNEUMONIA/person901_bacteria_1.jpeg': Image.fromarray(
          rng.integers(0, 256, (50, 70, 3), np.uint8), 'RGB'),
  }
  for name, image in images.items():
    image.save(os.path.join(root, name))
  dicom_name = 'test/NORMAL/IM-0903-0001.dcm'
  _dicom(os.path.join(root, dicom_name), rng.integers(0, 4096, (30, 26)))
  return list(images) + [dicom_name]


def test_load_image_returns_the_pixels_the_converter_stores(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from xray_tfdata import schema  # pylint: disable=g-import-not-at-top
  from xray_tfdata import writer  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / 'chest_xray')
  synthetic.make_synthetic_kermany(root, num_images=24, size_scale=0.05,
                                   num_workers=1)
  odd = _odd_files(root)
  out = str(tmp_path / 'data')
  # 'full', not the default ('auto' applies the file's window): load_image
  # must apply the policy it is given.
  info = writer.convert(root, out, image_size=STORED, num_workers=1,
                        progress=False, voi='full')
  stored = {}
  for split in info['splits'].values():
    for shard in split['shards']:
      for record in tf.data.TFRecordDataset(os.path.join(out,
                                                         shard['filename'])):
        parsed = schema.parse(record)
        stored[parsed[schema.FILENAME].numpy().decode()] = tf.io.decode_png(
            parsed[schema.ENCODED]).numpy()
  assert set(odd) <= set(stored) and len(stored) > 2 * len(odd)

  for name, pixels in stored.items():
    loaded = imaging.load_image(os.path.join(root, name), STORED, voi='full')
    assert loaded.dtype == np.uint8 and loaded.shape == STORED + (1,), name
    np.testing.assert_array_equal(loaded, pixels, err_msg=name)
  # The window changes the DICOM's pixels: the policy really reached it.
  dicom_path = os.path.join(root, odd[-1])
  assert not np.array_equal(imaging.load_image(dicom_path, STORED),
                            stored[odd[-1]])


def test_load_image_takes_an_int_size(tmp_path):
  path = str(tmp_path / 'x.png')
  Image.fromarray(np.arange(600, dtype=np.uint8).reshape(20, 30)).save(path)
  expected = np.asarray(Image.open(path).resize((8, 8), Image.BILINEAR))
  np.testing.assert_array_equal(imaging.load_image(path, 8)[..., 0], expected)


@pytest.mark.parametrize('content, reason', [
    (b'', 'empty file'), (b'not an image', 'not an image'), (None, 'cannot read')])
def test_load_image_names_the_file_and_the_reason(tmp_path, content, reason):
  path = str(tmp_path / 'bad.png')
  if content is not None:
    with open(path, 'wb') as f:
      f.write(content)
  with pytest.raises(imaging.ImageError, match=f'image {path}: {reason}'):
    imaging.load_image(path, 8)


@pytest.mark.parametrize('largest, depth', [
    (4095, 12), (2048, 12), (1500, 12), (1023, 10), (600, 10), (255, 8),
    (0, 8), (65535, 16), (20000, 16), (70000, 16)])
def test_depth_in_use(largest, depth):
  assert imaging.depth_in_use(np.array([[0, largest]])) == depth


@pytest.mark.parametrize('depth', [10, 12, 16])
def test_a_16_bit_png_is_scaled_by_the_depth_its_values_use(tmp_path, depth):
  # A 12-bit film stored in a 16-bit PNG: its full range is 0..4095. At the
  # stored size (no resize), the expected bytes are computed by hand.
  top = 2 ** depth - 1
  values = np.linspace(0, top, STORED[0] * STORED[1]).round().astype(
      np.uint16).reshape(STORED)
  path = str(tmp_path / 'film.png')
  Image.fromarray(values).save(path)
  with Image.open(path) as image:
    assert image.mode.startswith('I')  # PIL reads it as 16-bit
  pixels = imaging.load_image(path, STORED)[..., 0]
  expected = np.rint(values.astype(np.float64) * 255 / top).astype(np.uint8)
  np.testing.assert_array_equal(pixels, expected)
  assert pixels.max() == 255  # not 16 of 255, as 65535 would give 4095
