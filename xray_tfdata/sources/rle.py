"""The SIIM-ACR Pneumothorax challenge's run-length encoding of masks, and
a mask at the stored image's size.

Encoding (the competition's; `synthetic.siim.encode_rle` writes it): the
image's pixels numbered column by column (pixel index = column * height +
row), a mask is pairs `start length`, each start counted from the END of the
previous run (the first from pixel 0); `-1` is an empty mask (no
pneumothorax). Decoding: `position += start; mask[position:position +
length] = 1; position += length`, then the column-major order undone.

Stored mask (`stored_mask`): the union of an image's regions, squashed to
the stored size as the image is (each axis scaled on its own), each stored
pixel holding the fraction of the source pixels whose centres fall inside
it that belong to the mask, as 0..255 (Pillow's BOX filter: the mean over
those source pixels, exact for integer ratios such as 1024 -> 256 or 128;
where the stored size is larger, the source pixel under its centre).
A pixel is inside the region where the value is at least `INSIDE` (half
its area or more); a region smaller than a stored pixel keeps its partial
values rather than vanishing.

Pure numpy and Pillow; no TensorFlow.
"""

import numpy as np
from PIL import Image

EMPTY = '-1'
# A stored mask value >= INSIDE (of 255): at least half the stored pixel's
# area lies in the region.
INSIDE = 128


class RleError(ValueError):
  """An EncodedPixels value that is not a valid mask of its image."""


def parse(code):
  """The (start, length) pairs of one EncodedPixels value.

  Returns:
    A list of (start, length) ints; [] for '-1'.

  Raises:
    RleError: not '-1' and not an even number of whole numbers, a negative
      start, or a length below 1.
  """
  text = (code or '').strip()
  if text == EMPTY:
    return []
  parts = text.split()
  if not parts:
    raise RleError('EncodedPixels is blank (an image without pneumothorax '
                   f'is {EMPTY})')
  if not all(p.isdigit() for p in parts):
    bad = next(p for p in parts if not p.isdigit())
    raise RleError(f'EncodedPixels holds {bad!r}, not a whole number '
                   '(expected pairs "start length", or -1)')
  if len(parts) % 2:
    raise RleError(f'EncodedPixels has {len(parts)} numbers, not pairs '
                   '"start length"')
  numbers = [int(p) for p in parts]
  pairs = list(zip(numbers[0::2], numbers[1::2]))
  if any(length < 1 for _, length in pairs):
    raise RleError('EncodedPixels has a run of length 0')
  return pairs


def end(pairs):
  """The pixel index one past the last run's end (0 for no runs)."""
  return sum(start + length for start, length in pairs)


def check(pairs, height, width):
  """Raises RleError if the runs go past an image of height x width."""
  last = end(pairs)
  if last > height * width:
    raise RleError(f'EncodedPixels runs to pixel {last:,}, past the '
                   f'{height}x{width} image ({height * width:,} pixels)')


def decode(pairs, height, width, out=None):
  """The bool mask [height, width] of parsed runs (`parse`), or'ed into
  `out` if given (the union of several regions).

  Raises:
    RleError: the runs go past the image.
  """
  check(pairs, height, width)
  flat = np.zeros(height * width, bool)  # the pixels column by column
  position = 0
  for start, length in pairs:
    position += start
    flat[position:position + length] = True
    position += length
  mask = flat.reshape(width, height).T
  if out is None:
    return mask
  out |= mask
  return out


def union(codes, height, width):
  """The bool mask [height, width] of the union of several EncodedPixels
  values (one image's rows).

  Raises:
    RleError: a malformed value, or one that runs past the image.
  """
  mask = np.zeros((height, width), bool)
  for code in codes:
    decode(parse(code), height, width, out=mask)
  return mask


def stored_mask(mask, stored_size):
  """A bool mask at the source image's size as the stored mask: uint8
  [height, width] at stored_size (height, width), each pixel the fraction
  of it in the mask times 255, rounded (module docstring)."""
  height, width = stored_size
  if not mask.any():
    return np.zeros((height, width), np.uint8)
  resized = Image.fromarray(mask.astype(np.float32), 'F').resize(
      (width, height), Image.Resampling.BOX)
  return np.clip(np.rint(np.asarray(resized) * 255), 0, 255).astype(np.uint8)
