"""Decoding one source image into the stored form (PIL only, no TensorFlow).

`decode_and_resize` runs in the converter's worker processes, which are
spawned fresh and import only this module, so it must stay free of TensorFlow.
`load_image` returns the same pixels, for predict and users' own scripts.

The stored image is single-channel uint8, resized to the stored size by
squashing (aspect ratio not kept), as `flow_from_directory(target_size=...)`
does, and encoded as lossless PNG.

Resize filter: PIL bilinear. PIL's bilinear (and bicubic) widen their kernel
by the downscale factor, so every source pixel contributes and fine detail
(rib edges, film grain) is averaged away instead of folded into false
patterns. `flow_from_directory`'s default 'nearest' picks one source pixel per
output pixel: at the 5-8x reduction from a Kermany image to 224 px it skips
most pixels and aliases. Bilinear rather than bicubic: it has no negative
lobes, so no ringing halos around bright bones and no clipping; the reader's
`tf.image.resize(..., antialias=True)` computes the same kind of filter.

Speed: a JPEG is decoded at a reduced DCT scale (libjpeg's scaled IDCT, via
`Image.draft`) to the smallest 1/1, 1/2, 1/4 or 1/8 size that is still at least
twice the stored size, then resized. The scaled IDCT is itself a low-pass
filter, so this stays anti-aliased, and it decodes 4-16x fewer pixels.

Colour and depth: RGB, palette, LA, RGBA and CMYK images go through PIL's
`convert('L')` (ITU-R 601-2 luma; alpha dropped); a colour JPEG drafted to
'L' keeps its luma channel, which is the same weighting. 16-bit images
(modes I;16* and I) are resized in float and mapped to 8 bits by the full
range of the bit depth their values use (`depth_in_use`: the smallest even
depth from 8 to 16 bits that holds the image's largest value; v * 255 /
(2**depth - 1), DICOM's full-range rule, `dicom.full_range`), not by a
per-image window, so two scans of one depth keep their relative brightness,
and a 12-bit film stored in 16-bit words is not turned nearly black (a blind
v * 255 / 65535 gives it at most 16 of 255). PNG and TIFF do not record the
depth (PNG's optional sBIT chunk is not read by PIL). A film whose brightest
pixel lies below half of its detector's range is read one even depth lower
(twice as bright); a per-image window would change every image. Float
images (mode F) have no known range and are skipped. EXIF orientation is
not applied, as `flow_from_directory` does not apply it.

A source that knows more about its 16-bit files says so (`stored_depth`:
PadChest's CSV gives each PNG's DICOM BitsStored and Window Center/Width):
then `sixteen_bit_range` maps them as `dicom.decode`'s 'auto' VOI does, the
window where given (PS3.3 C.11.2.1.2.1's linear function), else the full
range of the bits stored, where the image's values fit in them; the image's
own depth (`depth_in_use`) otherwise.
"""

import io
import os
import signal
import stat

import numpy as np
from PIL import Image

from xray_tfdata import dicom
from xray_tfdata import errors

RESIZE_FILTER = 'bilinear'  # recorded in xray_info.json
_FILTER = Image.Resampling.BILINEAR
_SIXTEEN_BIT_MODES = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')
_DRAFT_FACTOR = 2  # decode JPEGs to at least this times the stored size
# zlib's fastest level: it encodes PNGs much faster than the default level 6
# for slightly larger files (figures: BUILD_NOTES.md). Lossless either way.
_PNG_LEVEL = 1


class ImageError(errors.XrayError):
  """An image file that cannot be used (missing, not an image, corrupt).

  Attributes:
    path: the file.
    reason: why, without the path ('empty file (0 bytes)', ...).
  """

  def __init__(self, path, reason):
    super().__init__(f'image {path}: {reason}')
    self.path, self.reason = path, reason


def load_image(path, image_size, voi='auto', stored_depth=None):
  """Reads an image file exactly as the converter stores it.

  The pixels are those the converter would write into a shard for the
  same file: gray, squashed to the stored size with PIL bilinear, 16-bit
  images by the full range of their depth (`depth_in_use`), DICOM through its modality LUT and VOI, CMYK,
  palette and alpha images through their luma. Feed them to a model that
  `tools/train` saved, e.g. `net.predict(load_image(path, 224)[None])`.

  Args:
    path: a JPEG, PNG, DICOM or any other file PIL reads.
    image_size: the stored size: an int, or (height, width).
    voi: the VOI policy for a DICOM file (`checks.VOI_POLICIES`); that of the
      dataset the model trained on (its xray_info.json, key dicom.voi).
    stored_depth: a 16-bit file's (bits stored, window center, window
      width) as its source gives them (`sixteen_bit_range`); None: the
      image's own depth.

  Returns:
    uint8 numpy array [height, width, 1].

  Raises:
    ImageError: the file cannot be used, with the reason.
  """
  height, width = ((image_size, image_size) if isinstance(image_size, int)
                   else image_size)
  decoded = _decode_pixels(path, (height, width), voi, stored_depth)
  if isinstance(decoded, str):
    raise ImageError(path, decoded)
  return decoded[0][..., None]


def decode_and_resize(task):
  """Decodes, converts to gray, resizes and PNG-encodes one file.

  Args:
    task: (path, (height, width)) of the source file and the stored size,
      or (path, (height, width), voi) with the VOI policy for a DICOM file
      (`checks.VOI_POLICIES`; default 'auto'), or (path, (height, width),
      voi, stored_depth) with what the source says of a 16-bit file's
      depth (`sixteen_bit_range`; None: nothing).

  Returns:
    (png bytes, original height, original width), or a string with the
    reason the file cannot be used (gone, not a regular file, empty, not an
    image, corrupt, truncated, unsupported mode).
  """
  path, size = task[:2]
  decoded = _decode_pixels(path, size, task[2] if len(task) > 2 else 'auto',
                          task[3] if len(task) > 3 else None)
  if isinstance(decoded, str):
    return decoded
  pixels, original_height, original_width = decoded
  return encode_png(pixels), original_height, original_width


def _decode_pixels(path, size, voi, stored_depth=None):
  """decode_and_resize's pixels, uint8 [height, width], before encoding:
  (pixels, original height, original width), or the reason as a string."""
  height, width = size
  # Checked again here, not only by the scan: the file may have been deleted
  # or replaced since, and opening a FIFO would block this worker forever.
  try:
    info = os.stat(path)
  except OSError as e:
    return f'cannot read: {e.strerror} (changed since the scan?)'
  if not stat.S_ISREG(info.st_mode):
    return 'not a regular file'
  if info.st_size == 0:
    return 'empty file (0 bytes)'
  # Any decoding failure of one file must not stop a conversion of
  # thousands, and PIL's decoders raise a zoo of types on malformed bytes
  # (OSError, SyntaxError, ValueError, struct.error, EOFError, ...), so every
  # exception becomes a reason. LOAD_TRUNCATED_IMAGES stays False, so a
  # truncated file raises here instead of being padded with gray.
  if dicom.is_dicom(path):
    return _decode_dicom(path, (width, height), voi)
  try:
    with Image.open(path) as image:
      original_width, original_height = image.size
      if image.format == 'JPEG':
        image.draft('L', (_DRAFT_FACTOR * width, _DRAFT_FACTOR * height))
      image.load()
      pixels = _gray_resized(image, (width, height), stored_depth)
  except Image.UnidentifiedImageError:
    return 'not an image (PIL cannot identify the format)'
  except Exception as e:  # pylint: disable=broad-except
    message = str(e).replace(path, os.path.basename(path))
    return f'cannot decode: {type(e).__name__}: {message}'
  return pixels, original_height, original_width


def encode_png(pixels):
  """uint8 [height, width] as the stored PNG bytes."""
  buffer = io.BytesIO()
  Image.fromarray(pixels, 'L').save(buffer, 'PNG', compress_level=_PNG_LEVEL)
  return buffer.getvalue()


def _decode_dicom(path, size, voi='auto'):
  """_decode_pixels for a DICOM file: display intensities in [0, 1]
  (`dicom.decode`), resized in float, quantized to 8 bits once."""
  try:
    intensities, _ = dicom.decode(path, voi=voi)
  except dicom.DicomError as e:
    return str(e)
  except Exception as e:  # pylint: disable=broad-except  (one file of many)
    return f'cannot decode DICOM: {type(e).__name__}: {e}'
  original_height, original_width = intensities.shape
  resized = Image.fromarray(intensities.astype(np.float32), 'F').resize(
      size, _FILTER)
  pixels = np.clip(np.rint(np.asarray(resized) * 255), 0, 255).astype(np.uint8)
  return pixels, original_height, original_width


def _gray_resized(image, size, stored_depth=None):
  """uint8 array [height, width] of `image` in gray at `size` (width,
  height); a 16-bit image by `sixteen_bit_range(values, *stored_depth)`."""
  if image.mode in _SIXTEEN_BIT_MODES:
    # Resize before quantizing, in float, so no precision is lost twice.
    values = np.asarray(image).astype(np.float32)
    low, high, _ = sixteen_bit_range(values, *(stored_depth or ()))
    resized = Image.fromarray(values, 'F').resize(size, _FILTER)
    scaled = (np.asarray(resized) - low) * (255 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
  if image.mode == 'F':
    raise ValueError('float images (mode F) have no known range')
  if image.mode != 'L':
    image = image.convert('L')
  return np.asarray(image.resize(size, _FILTER))


def sixteen_bit_range(values, bits_stored=None, window_center=None,
                      window_width=None):
  """The stored values a 16-bit image's 0 and 255 stand for.

  The rule (module docstring), first that applies:
    'window'       window_center and window_width given, the width at least
                   2: DICOM's linear window (PS3.3 C.11.2.1.2.1), from
                   center - 0.5 - (width - 1) / 2 to center - 0.5 +
                   (width - 1) / 2;
    'bits_stored'  bits_stored from 8 to 16 and the image's largest value
                   within it: 0 to 2**bits_stored - 1;
    'image_depth'  0 to 2**depth_in_use(values) - 1 (a file whose values
                   do not fit the bits the source gives falls here too).
  Never a blind 0 to 65535: a 12-bit film would use 16 of 256 levels.

  Args:
    values: the image's pixel values.
    bits_stored, window_center, window_width: what the source says, None
      where it does not.

  Returns:
    (low, high, rule): low maps to 0, high to 255; rule one of the names
    above.
  """
  if (window_center is not None and window_width is not None and
      window_width >= 2):
    half = (window_width - 1) / 2
    return (window_center - 0.5 - half, window_center - 0.5 + half,
            'window')
  largest = float(np.max(values)) if np.size(values) else 0.0
  if bits_stored is not None and 8 <= bits_stored <= 16:
    _, top = dicom.full_range(int(bits_stored))
    if largest <= top:
      return 0.0, float(top), 'bits_stored'
  _, top = dicom.full_range(depth_in_use(values))
  return 0.0, float(top), 'image_depth'


def depth_in_use(values):
  """The bit depth a 16-bit image's values use (module docstring).

  Args:
    values: the image's pixel values (any shape).

  Returns:
    The smallest even depth from 8 to 16 bits whose largest value is at
    least the image's largest: 12 for a 12-bit film stored in 16-bit words
    (largest value 4095 or below, above 1023), 16 for a full-range image.
  """
  largest = int(max(float(np.max(values)), 0)) if np.size(values) else 0
  bits = max(8, largest.bit_length())
  return min(16, bits + bits % 2)


def stored_box(box, original_size, stored_size):
  """A box in the source image's pixels, in the stored image's pixels.

  The stored image is the source squashed to the stored size: each axis
  scaled on its own, aspect ratio not kept, no padding and no cropping (see
  the module docstring). So a box scales by the same per-axis factors; its
  edges are continuous coordinates (the left edge of pixel 0 is 0), which
  PIL's resize maps by exactly those factors.

  Args:
    box: (x, y, width, height), x and y the top-left corner.
    original_size, stored_size: (height, width) of the source and stored
      images.

  Returns:
    (x, y, width, height) in the stored image, floats.
  """
  x, y, box_width, box_height = box
  scale_y = stored_size[0] / original_size[0]
  scale_x = stored_size[1] / original_size[1]
  return (x * scale_x, y * scale_y, box_width * scale_x, box_height * scale_y)


def ignore_interrupts():
  """Pool initializer: Ctrl-C is the main process's to handle (it stops the
  pool and keeps the finished shards), so the workers print no tracebacks."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
