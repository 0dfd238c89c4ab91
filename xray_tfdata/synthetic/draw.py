"""The drawing shared by every synthetic stand-in: a chest, its findings,
the film's grain, and a source's look.

  draw_chest      a frontal chest (torso, two darker lung fields, ribs,
                  spine, noise); label 1 adds Kermany's diffuse opacities.
  draw_findings   the labelled stand-ins' chest, showing an effusion (a
                  bright basal opacity with a meniscus) and cardiomegaly (a
                  wider heart shadow), frontal or lateral.
  to_film         a drawing resized to the stored size, plus a fine grain.
  apply_style     a source's look (issue 35): an intensity curve, a border,
                  a corner marker; something a model can overfit to.

Coordinates are fractions of the width and height, so the anatomy survives
any aspect ratio. Only numpy and PIL.
"""

import numpy as np
from PIL import Image

_GRAIN_TILE = 509  # side of the fine-grain noise tile (odd: no 8x8 alignment)


def draw_chest(rng, label, height, width):
  """Draws a chest-like uint8 image [height, width]; label 1 adds opacities.

  Coordinates are fractions of the width and height. The lungs are darker
  than the soft tissue (air), bones brighter, opacities brighter.
  """
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  y = (y + 0.5) / height
  x = (x + 0.5) / width
  shift_x, shift_y = rng.normal(0, 0.02, 2)

  def ellipse(cx, cy, rx, ry, softness):
    r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return 1 / (1 + np.exp((r - 1) / softness))

  tissue = rng.uniform(95, 135)
  image = rng.uniform(8, 30) + (tissue - 20) * ellipse(
      0.5 + shift_x, 0.62 + shift_y, rng.uniform(0.42, 0.5), 0.62, 0.05)

  lungs = np.zeros_like(x)
  centers = []
  for side in (-1, 1):
    cx = 0.5 + shift_x + side * rng.uniform(0.17, 0.22)
    cy = 0.47 + shift_y + rng.normal(0, 0.015)
    rx, ry = rng.uniform(0.11, 0.15), rng.uniform(0.25, 0.31)
    centers.append((cx, cy, rx, ry))
    lungs = np.maximum(lungs, ellipse(cx, cy, rx, ry, 0.08))
  lung_darkening = rng.uniform(35, 65)
  image -= lung_darkening * lungs

  # Ribs: bright arcs across each lung, stronger inside the lung fields.
  spacing = rng.uniform(0.065, 0.085)
  phase = rng.uniform(0, spacing)
  curvature = rng.uniform(0.8, 1.4)
  rib_y = y - curvature * (x - 0.5 - shift_x) ** 2
  ribs = 0.5 + 0.5 * np.cos(2 * np.pi * (rib_y - phase) / spacing)
  image += rng.uniform(12, 24) * ribs ** 4 * (0.3 + 0.7 * lungs)

  # Spine and mediastinum: a bright vertical band in the middle.
  spine_width = rng.uniform(0.04, 0.06)
  spine = np.exp(-((x - 0.5 - shift_x) / spine_width) ** 2) * (y > 0.12)
  image += rng.uniform(50, 80) * spine

  # Opacities: diffuse bright patches (blurred blobs) inside the lungs.
  # PNEUMONIA always has some, one in ten faint; a quarter of NORMAL images
  # have faint ones, so the classes overlap a little.
  if label == 1:
    num_blobs = rng.integers(2, 6)
    strength = (rng.uniform(0.45, 1.0) if rng.random() < 0.9 else
                rng.uniform(0.1, 0.3))
  else:
    num_blobs = rng.integers(1, 3) if rng.random() < 0.25 else 0
    strength = rng.uniform(0.1, 0.3)
  for _ in range(num_blobs):
    cx, cy, rx, ry = centers[rng.integers(0, 2)]
    bx = cx + rng.uniform(-0.6, 0.6) * rx
    by = cy + rng.uniform(-0.6, 0.6) * ry
    sigma = rng.uniform(0.05, 0.11)
    blob = np.exp(-(((x - bx) / sigma) ** 2 + ((y - by) / (1.3 * sigma)) ** 2))
    image += strength * rng.uniform(45, 75) * blob * lungs

  # Exposure varies from film to film; noise at the drawing scale.
  image = rng.uniform(0.85, 1.15) * image + rng.normal(0, 8, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def draw_findings(rng, height, width, effusion=0.0, cardiomegaly=0.0,
                  lateral=False, effusion_sides=None):
  """A chest uint8 [height, width] showing the two pixel-visible findings.

  Args:
    rng: a numpy Generator; the drawing is a function of its state.
    height, width: pixels.
    effusion: 0 (none) to 1: a bright basal opacity with a meniscus.
    cardiomegaly: 0 (a normal heart) to 1: a wider heart shadow.
    lateral: a lateral view instead of a frontal one.
    effusion_sides: the effusion's sides on a frontal view, -1 (the image's
      left) and/or 1; default drawn (both in four of ten). Given, a label
      file's box can point at the fluid (`finding_box`).

  Returns:
    uint8 array [height, width].
  """
  if lateral:
    return _draw_lateral(rng, height, width, effusion, cardiomegaly)
  image = draw_chest(rng, 0, height, width).astype(np.float32)
  y, x = grid(height, width)
  # The heart: soft tissue over the lower medial lungs, left of the middle
  # of the patient (right of the image); a cardiothoracic ratio about 0.35
  # normally, about 0.55 when enlarged.
  half_width = rng.uniform(0.13, 0.17) + cardiomegaly * rng.uniform(0.08, 0.12)
  heart = ellipse(x, y, 0.53 + rng.normal(0, 0.01),
                  0.64 + rng.normal(0, 0.01), half_width, 0.11, 0.06)
  image += rng.uniform(40, 55) * heart
  if effusion:
    sides = effusion_sides or (
        [-1, 1] if rng.random() < 0.4 else [int(rng.choice([-1, 1]))])
    for side in sides:
      center = 0.5 + side * rng.uniform(0.19, 0.21)
      level = rng.uniform(0.66, 0.70) - 0.06 * effusion
      # The meniscus: the fluid climbs along the chest wall.
      top = level - 0.5 * np.maximum(0, side * (x - center))
      fluid = (sigmoid((y - top) / 0.015) * sigmoid((0.9 - y) / 0.03) *
               np.exp(-((x - center) / 0.14) ** 4))
      image += effusion * rng.uniform(55, 75) * fluid
  return np.clip(image, 0, 255).astype(np.uint8)


def _draw_lateral(rng, height, width, effusion, cardiomegaly):
  """A lateral chest: one lung field, the spine behind, the heart in front
  (patient facing left); an effusion fills the posterior base."""
  y, x = grid(height, width)
  shift_x, shift_y = rng.normal(0, 0.02, 2)
  image = rng.uniform(8, 30) + rng.uniform(80, 120) * ellipse(
      x, y, 0.5 + shift_x, 0.6 + shift_y, rng.uniform(0.38, 0.45), 0.62, 0.05)
  lung = ellipse(x, y, 0.52 + shift_x, 0.47 + shift_y, rng.uniform(0.25, 0.3),
                 rng.uniform(0.27, 0.32), 0.08)
  image -= rng.uniform(35, 60) * lung
  spine_x = 0.8 + shift_x
  spine = np.exp(-((x - spine_x) / 0.05) ** 2) * (y > 0.1)
  image += rng.uniform(50, 80) * spine
  radius = rng.uniform(0.12, 0.15) + cardiomegaly * rng.uniform(0.06, 0.09)
  image += rng.uniform(30, 42) * ellipse(
      x, y, 0.38 + shift_x, 0.62 + shift_y, radius, radius * 1.1, 0.06)
  if effusion:
    top = rng.uniform(0.68, 0.72) - 0.06 * effusion + 0.4 * np.maximum(
        0, 0.6 - x)
    fluid = (sigmoid((y - top) / 0.015) * sigmoid((0.9 - y) / 0.03) *
             np.exp(-((x - 0.62 - shift_x) / 0.16) ** 4))
    image += effusion * rng.uniform(55, 75) * fluid
  image = rng.uniform(0.85, 1.15) * image + rng.normal(0, 8, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def finding_box(rng, kind, height, width, side=None):
  """A reader's box (x_min, y_min, x_max, y_max), in pixels, around a drawn
  finding on a frontal view: 'effusion' (at `side`'s lung base, -1 the
  image's left), 'cardiomegaly' (the heart), or 'other' (anywhere in the
  lungs: the random labels carry no pixel signal). Readers differ by a few
  per cent of the image."""
  if kind == 'effusion':
    box = (0.5 + side * 0.2 - 0.15, 0.58, 0.5 + side * 0.2 + 0.15, 0.9)
  elif kind == 'cardiomegaly':
    box = (0.3, 0.52, 0.8, 0.76)
  else:
    x, y = rng.uniform(0.2, 0.7), rng.uniform(0.25, 0.65)
    box = (x, y, x + rng.uniform(0.05, 0.15), y + rng.uniform(0.05, 0.15))
  jitter = rng.normal(0, 0.015, 4)
  x_min, y_min, x_max, y_max = np.clip(np.array(box) + jitter, 0, 1)
  return (round(float(x_min * width), 1), round(float(y_min * height), 1),
          round(float(x_max * width), 1), round(float(y_max * height), 1))


def grid(height, width):
  """Pixel centres as fractions: (y, x), each float32 [height, width]."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  return (y + 0.5) / height, (x + 0.5) / width


def ellipse(x, y, cx, cy, rx, ry, softness):
  """1 inside the ellipse, 0 outside, a soft edge `softness` wide."""
  r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
  return sigmoid((1 - r) / softness)


def sigmoid(z):
  # Clipped: far from the edge, exp would overflow float32.
  return 1 / (1 + np.exp(-np.clip(z, -50, 50)))


def to_film(small, width, height, rng):
  """A drawing resized (bicubic) to width x height plus the fine grain.

  The grain is at full size, as film and detector noise are; without it
  JPEGs of upscaled drawings are unrealistically small and fast to decode.

  Returns:
    uint8 array [height, width].
  """
  image = Image.fromarray(small)
  if image.size != (width, height):
    image = image.resize((width, height), Image.Resampling.BICUBIC)
  pixels = np.asarray(image, np.int16) + grain(rng, height, width)
  return np.clip(pixels, 0, 255).astype(np.uint8)


_GRAIN = None


def grain(rng, height, width):
  """Fine noise [height, width] int16: a fixed tile at a random offset."""
  global _GRAIN  # pylint: disable=global-statement
  if _GRAIN is None:
    # Fixed seed: the tile is the same in every process, so output is
    # deterministic whichever worker draws an image.
    tile = np.random.default_rng(20180222).normal(0, 5, (_GRAIN_TILE,) * 2)
    _GRAIN = np.round(tile).astype(np.int16)
  dy, dx = rng.integers(0, _GRAIN_TILE, 2)
  reps = (-(-(height + dy) // _GRAIN_TILE), -(-(width + dx) // _GRAIN_TILE))
  return np.tile(_GRAIN, reps)[dy:dy + height, dx:dx + width]


def to_stored(pixels, low, high):
  """uint8 display values mapped linearly onto stored values low..high
  (uint16): a 12-bit or 16-bit detector's range, as a reader must find it
  from the data (the window, the bits stored or the image's range)."""
  return np.round(low + pixels.astype(np.float64) * ((high - low) / 255)
                  ).astype(np.uint16)


# A source's look (issue 35 item 5): something other than the findings that
# tells the sources apart, as hospitals' detectors and burned-in markers do,
# so that a model can overfit to it. gamma: the intensity curve (display
# value ** gamma); border: a frame this fraction of the width wide, at
# border_value; marker: a burned-in letter-like square in this corner.
SOURCE_STYLES = {
    'nih': {'gamma': 1.0, 'border': 0.0, 'border_value': 0,
            'marker': 'top_right'},
    'chexpert': {'gamma': 0.8, 'border': 0.03, 'border_value': 0,
                 'marker': 'top_left'},
    'mimic': {'gamma': 1.25, 'border': 0.0, 'border_value': 0,
              'marker': 'bottom_left'},
    'padchest': {'gamma': 0.7, 'border': 0.05, 'border_value': 255,
                 'marker': 'bottom_right'},
    'vindr': {'gamma': 1.4, 'border': 0.04, 'border_value': 0,
              'marker': 'top_left'},
    'siim': {'gamma': 0.9, 'border': 0.0, 'border_value': 0,
             'marker': 'bottom_left'},
    'nih_google': {'gamma': 1.0, 'border': 0.0, 'border_value': 0,
                   'marker': 'top_right'},
    'nlm_tb': {'gamma': 1.15, 'border': 0.06, 'border_value': 0,
               'marker': 'top_left'},
}
_MARKER_SIZE = 0.07  # of the width


def apply_style(pixels, style):
  """A source's look on uint8 [height, width] pixels: the intensity curve,
  then the border and the corner marker. Returns uint8."""
  height, width = pixels.shape
  out = 255 * (pixels.astype(np.float64) / 255) ** style['gamma']
  frame = int(round(style['border'] * width))
  if frame:
    out[:frame], out[-frame:] = style['border_value'], style['border_value']
    out[:, :frame] = style['border_value']
    out[:, -frame:] = style['border_value']
  side = max(2, int(round(_MARKER_SIZE * width)))
  gap = frame + max(1, side // 2)
  rows = (slice(gap, gap + side) if style['marker'].startswith('top') else
          slice(height - gap - side, height - gap))
  columns = (slice(gap, gap + side) if style['marker'].endswith('left') else
             slice(width - gap - side, width - gap))
  out[rows, columns] = 250
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def region_mask(height, width, region):
  """bool [height, width]: the ellipse region = (cy, cx, ry, rx) in
  fractions of the height and width, at this size."""
  cy, cx, ry, rx = region
  y, x = grid(height, width)
  return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1


def add_mark(pixels, mark):
  """A finding drawn at the stored size, where a label file can point at it
  exactly. mark = (kind, region), region as in region_mask:

    'pneumothorax'  the region loses its lung markings and darkens (air
                    between lung and chest wall): its pixels become a dark,
                    flat value; exactly the mask's pixels change.
    'opacity'       a bright soft blob centred on the region (a nodule,
                    a consolidation, tuberculosis' upper-lobe infiltrate).

  Returns uint8 [height, width].
  """
  kind, region = mark
  height, width = pixels.shape
  if kind == 'pneumothorax':
    out = pixels.copy()
    out[region_mask(height, width, region)] = 12
    return out
  if kind == 'opacity':
    cy, cx, ry, rx = region
    y, x = grid(height, width)
    blob = np.exp(-(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2))
    return np.clip(pixels + 70 * blob, 0, 255).astype(np.uint8)
  raise ValueError(f'unknown mark {kind!r}')
