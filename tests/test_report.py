"""The training's own picture (report): the augmentation preview opens,
has its size, is not blank, and shows the image in every draw."""

import numpy as np
from PIL import Image
import pytest

from xray_tfdata import report


def pixels(path):
  with Image.open(path) as image:
    assert image.format == 'PNG'
    return np.asarray(image.convert('RGB')).astype(int)


def assert_not_blank(rgb):
  not_white = (rgb < 240).any(axis=-1).mean()
  assert not_white > 0.01, not_white
  assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20


@pytest.mark.slow  # imports Keras and runs the augmentation (about 15 s)
def test_augmentation_preview_grid(tmp_path):
  from xray_tfdata import augment  # pylint: disable=g-import-not-at-top
  images = np.zeros((3, 24, 24, 1), np.uint8)
  images[:, 6:12, 6:12] = 255
  layer = augment.make_augmentation('fused', rotation_range=40, seed=1)
  path = str(tmp_path / 'preview.png')
  report.write_augmentation_preview(path, images, layer, draws=4)
  with Image.open(path) as image:
    assert image.size == (160 * 5, 160 * 3)  # 1 stored + 4 draws, 3 rows
  rgb = pixels(path)
  assert_not_blank(rgb)
  # Each column shows the square somewhere: white pixels in every column.
  grey = rgb[..., 0]
  for column in range(5):
    part = grey[:, column * 160 + 20:(column + 1) * 160 - 20]
    assert (part > 250).mean() > 0.01, column
  plain = str(tmp_path / 'plain.png')
  report.write_augmentation_preview(plain, images, None)
  with Image.open(plain) as image:
    assert image.size == (160, 480)
