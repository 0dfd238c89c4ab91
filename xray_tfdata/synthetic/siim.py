"""A synthetic SIIM-ACR Pneumothorax tree, in the real file layout.

`train-rle.csv` with the real header `ImageId, EncodedPixels` (a leading
space before the second name); `-1` for an image without pneumothorax;
one row per region for an image with several (the real file: 12,954 rows
for 12,047 images); DICOMs at
`dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<ImageId>.dcm`
(1024 px, 8-bit MONOCHROME2, the SOP instance UID = ImageId).

The pneumothorax shows in the pixels exactly where its mask is: the
region's pixels become dark and flat (air without lung markings;
`draw.add_mark`), so a model can learn the label and a reader's decoded
mask can be checked pixel for pixel. `encode_rle` is the competition's
run-length encoding.
"""

import numpy as np

from xray_tfdata.synthetic import draw
from xray_tfdata.synthetic import tree

LAYOUT = 'siim'
_STREAM = 5  # the random stream of this layout (tree.write_planned)
DEFAULT_SIZE_SCALE = 0.125  # of SIIM's 1024 px: 128 px images
CSV_NAME = 'train-rle.csv'
HEADER = ('ImageId', ' EncodedPixels')  # the leading space is the real one
IMAGE_FOLDER = 'dicom-images-train'
NO_PNEUMOTHORAX = '-1'
_POSITIVE = 0.35  # of images (the real file: 2,669 of 12,047, 22%)
_UID_ROOT = '1.2.276.0.7230010.3.1'  # the real UIDs' root


def make_synthetic_siim(out_dir, num_images=tree.DEFAULT_NUM_IMAGES, seed=0,
                        size_scale=None, num_workers=None, progress=False,
                        source_style=False):
  """Writes a SIIM-ACR Pneumothorax tree into `out_dir`: DICOMs of SIIM's
  1024 px times size_scale (default DEFAULT_SIZE_SCALE).

  Args and raises: as tree.write_planned; and SyntheticError when pydicom
  is missing.

  Returns:
    tree.write_planned's summary plus the recount: rows, positive_images,
    negative_images, rows_per_image {rows: images}, mask_pixels {ImageId:
    pixels of the union of its regions}.
  """
  tree.pydicom()  # fail here, in one line, not in every worker
  return tree.write_planned(
      out_dir, LAYOUT, _STREAM, _plan, num_images, seed, size_scale,
      DEFAULT_SIZE_SCALE, num_workers, progress, _recount, source_style)


def encode_rle(mask):
  """The competition's run-length encoding of a bool mask [height, width].

  Pixels are numbered column by column (the mask transposed, then
  flattened); each run is `start length`, its start counted from the end
  of the previous run (the first from pixel 0).

  Returns:
    The EncodedPixels string; '-1' for an empty mask.
  """
  flat = np.asarray(mask, bool).T.ravel()
  edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [0]])))
  starts, ends = edges[0::2], edges[1::2]
  if not len(starts):
    return NO_PNEUMOTHORAX
  gaps = starts - np.concatenate([[0], ends[:-1]])
  return ' '.join(f'{gap} {end - start}'
                  for gap, start, end in zip(gaps, starts, ends))


def _uid(rng, kind):
  """A UID like the real ones: root.kind.8323329.<n>.<seconds>.<micro>."""
  return (f'{_UID_ROOT}.{kind}.8323329.{int(rng.integers(1, 32000))}.'
          f'{int(rng.integers(1517875000, 1517876000))}.'
          f'{int(rng.integers(0, 1000000))}')


def _plan(rng, num_images, size_scale):
  side = tree.scaled(1024, size_scale)
  images, rows = [], [list(HEADER)]
  for index in range(num_images):
    image_id = _uid(rng, 4)
    study, series = _uid(rng, 2), _uid(rng, 3)
    regions = []
    if rng.random() < _POSITIVE:
      # One region mostly, up to four (rows per image as the real file).
      for _ in range(min(int(rng.geometric(0.7)), 4)):
        side_x = 0.27 if rng.random() < 0.5 else 0.73
        regions.append((float(rng.uniform(0.22, 0.5)),
                        float(side_x + rng.uniform(-0.04, 0.04)),
                        float(rng.uniform(0.07, 0.14)),
                        float(rng.uniform(0.035, 0.07))))
    masks = [draw.region_mask(side, side, region) for region in regions]
    codes = [encode_rle(mask) for mask in masks] or [NO_PNEUMOTHORAX]
    rows += [[image_id, code] for code in codes]
    images.append({
        'path': f'{IMAGE_FOLDER}/{study}/{series}/{image_id}.dcm',
        'width': side, 'height': side, 'lateral': False,
        'effusion': 0.0, 'cardiomegaly': 0.0,
        'marks': [('pneumothorax', region) for region in regions],
        'dicom': {'instance_uid': image_id, 'patient_id': image_id,
                  'StudyInstanceUID': study, 'SeriesInstanceUID': series},
        'image_id': image_id, 'patient': index, 'study': study,
        'split': 'train', 'rows': len(codes),
        'mask_pixels': int(np.logical_or.reduce(masks).sum()) if masks else 0,
    })
  return images, {CSV_NAME: tree.csv_bytes(rows)}


def _recount(images):
  per_image = {}
  for image in images:
    per_image[image['rows']] = per_image.get(image['rows'], 0) + 1
  positive = sum(bool(image['marks']) for image in images)
  return {
      'rows': sum(image['rows'] for image in images),
      'positive_images': positive,
      'negative_images': len(images) - positive,
      'rows_per_image': dict(sorted(per_image.items())),
      'mask_pixels': {image['image_id']: image['mask_pixels']
                      for image in images if image['marks']},
  }
