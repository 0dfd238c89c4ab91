"""The README's pictures (issue 21): each one it embeds is in the checkout,
a PNG, and small enough for a README."""

import os
import re

from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_pictures_exist_and_are_small():
  with open(os.path.join(REPO_ROOT, 'README.md')) as f:
    text = f.read()
  pictures = re.findall(r'!\[[^\]]*\]\(([^)]+)\)', text)
  assert {'docs/images/demo_roc_pneumonia.png',
          'docs/images/demo_reliability_pneumonia.png',
          'docs/images/demo_augmentation_preview.png'} <= set(pictures)
  for picture in pictures:
    path = os.path.join(REPO_ROOT, picture)
    assert os.path.getsize(path) < 60_000, picture
    with Image.open(path) as image:
      assert image.format == 'PNG' and min(image.size) >= 300, picture
