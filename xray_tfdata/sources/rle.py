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
pixel holding the share of the source pixels whose centres fall inside it
(a box filter, the area share for integer ratios such as 1024 -> 256) that
belong to the mask, as 0..255; where the stored size is larger than the
source, the source pixel under the stored pixel's centre.
A pixel is inside the region where the value is at least `INSIDE` (half
its area or more); a region smaller than a stored pixel keeps its partial
values rather than vanishing.

Pure numpy; no TensorFlow.
"""

import numpy as np

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


def _fill(pairs, flat):
  """Sets the runs' pixels in `flat`, the image's pixels column by column."""
  position = 0
  for start, length in pairs:
    position += start
    flat[position:position + length] = True
    position += length


def decode(pairs, height, width):
  """The bool mask [height, width] of parsed runs (`parse`).

  Raises:
    RleError: the runs go past the image.
  """
  return union_of([pairs], height, width)


def union_of(parsed, height, width):
  """The bool mask [height, width] of the union of several parsed runs.

  Raises:
    RleError: runs that go past the image.
  """
  flat = np.zeros(height * width, bool)
  for pairs in parsed:
    check(pairs, height, width)
    _fill(pairs, flat)
  # A transposed view, not a copy: copying 2048 x 2048 pixels into row
  # order costs more than all the rest (`stored_mask` copies its crop).
  return flat.reshape(width, height).T


def union(codes, height, width):
  """The bool mask [height, width] of the union of several EncodedPixels
  values (one image's rows).

  Raises:
    RleError: a malformed value, or one that runs past the image.
  """
  return union_of([parse(code) for code in codes], height, width)


def _source_ranges(source, stored):
  """Along one axis of `source` pixels squashed to `stored`: per stored
  pixel the first source pixel it averages (module docstring), as indices
  for np.add.reduceat, and how many it averages.

  Shrinking, source pixel r belongs to stored pixel i when its centre
  r + 0.5 lies in [i, i + 1) * source / stored; in integers, the first is
  ceil((2 i source - stored) / (2 stored)).
  """
  index = np.arange(stored, dtype=np.int64)
  starts = -((stored - 2 * index * source) // (2 * stored))
  counts = np.diff(np.append(starts, source))
  return starts, counts


def _window(first, last, source, stored):
  """Along one axis: the source pixels [begin, end) that the stored pixels
  [cell_begin, cell_end) covering source pixels first..last read, and per
  such stored pixel its reduceat index (relative to begin) and count of
  source pixels, or (enlarging) its source pixel, counts 1."""
  if stored <= source:
    starts, counts = _source_ranges(source, stored)
    cell_begin = int(np.searchsorted(starts, first, 'right')) - 1
    cell_end = int(np.searchsorted(starts, last, 'right'))
    begin = int(starts[cell_begin])
    end = int(starts[cell_end - 1] + counts[cell_end - 1])
    return (begin, end, cell_begin, cell_end,
            starts[cell_begin:cell_end] - begin, counts[cell_begin:cell_end])
  # Enlarging: the source pixel under the stored pixel's centre.
  index = (2 * np.arange(stored, dtype=np.int64) + 1) * source // (
      2 * stored)
  cells = np.flatnonzero((index >= first) & (index <= last))
  cell_begin, cell_end = int(cells[0]), int(cells[-1]) + 1
  return (first, last + 1, cell_begin, cell_end, index[cells] - first,
          None)


def _squash(values, window, axis):
  """Sums (shrinking) or picks (enlarging) `values` along `axis` per
  stored pixel of `window` (`_window`); returns (values, counts)."""
  *_, indices, counts = window
  if counts is None:
    return np.take(values, indices, axis=axis), np.ones(len(indices),
                                                         np.int64)
  return np.add.reduceat(values, indices, axis=axis), counts


def stored_mask(mask, stored_size):
  """A bool mask at the source image's size as the stored mask: uint8
  [height, width] at stored_size (height, width), each pixel the share of
  its source pixels in the mask times 255, rounded (module docstring).

  Only the stored pixels around the mask's bounding box are computed (the
  rest are 0): a region covers a small part of a 1024-3000 px image.
  """
  height, width = stored_size
  out = np.zeros((height, width), np.uint8)
  rows = np.flatnonzero(mask.any(axis=1))
  if not rows.size:
    return out
  columns = np.flatnonzero(mask.any(axis=0))
  row_window = _window(rows[0], rows[-1], mask.shape[0], height)
  column_window = _window(columns[0], columns[-1], mask.shape[1], width)
  crop = np.ascontiguousarray(
      mask[row_window[0]:row_window[1], column_window[0]:column_window[1]],
      dtype=np.int32)
  values, row_counts = _squash(crop, row_window, 0)
  values, column_counts = _squash(values, column_window, 1)
  share = values / np.outer(row_counts, column_counts)
  out[row_window[2]:row_window[3], column_window[2]:column_window[3]] = (
      np.clip(np.rint(share * 255), 0, 255).astype(np.uint8))
  return out
