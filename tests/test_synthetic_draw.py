"""The drawing shared by the synthetic trees (xray_tfdata/synthetic/draw.py):
the signals a model is meant to learn, checked on the drawn pixels."""

import numpy as np

from xray_tfdata.synthetic import draw


def test_opacities_make_pneumonia_lungs_brighter():
  """The pixel signal: lung fields are brighter with PNEUMONIA on average,
  and the classes overlap (the task is not trivial)."""
  def lung_brightness(label, i):
    image = draw.draw_chest(np.random.default_rng([7, label, i]), label,
                            48, 64).astype(float)
    # Lungs minus the soft tissue under them, robust to exposure.
    lungs = image[10:34, 10:22].mean() + image[10:34, 42:54].mean()
    return lungs / image[40:46, 16:48].mean()

  normal = np.array([lung_brightness(0, i) for i in range(150)])
  pneumonia = np.array([lung_brightness(1, i) for i in range(150)])
  auc = (pneumonia[:, None] > normal[None, :]).mean()
  assert 0.7 < auc < 0.999



def _frontal(seed, size=64):
  return draw.draw_findings(np.random.default_rng(seed), size, size)


def test_a_source_style_is_something_a_model_can_overfit_to():
  """Two sources' looks (issue 35): one corner-marker feature tells them
  apart perfectly, whatever the chest; the findings stay drawn under it."""
  def corner(pixels, marker):
    rows = slice(0, 16) if marker.startswith('top') else slice(-16, None)
    columns = slice(0, 16) if marker.endswith('left') else slice(-16, None)
    return pixels[rows, columns].astype(float).mean()

  padchest, vindr = draw.SOURCE_STYLES['padchest'], draw.SOURCE_STYLES['vindr']
  assert padchest != vindr
  a = [draw.apply_style(_frontal([1, i]), padchest) for i in range(30)]
  b = [draw.apply_style(_frontal([2, i]), vindr) for i in range(30)]
  score_a = [corner(p, padchest['marker']) for p in a]
  score_b = [corner(p, padchest['marker']) for p in b]
  assert min(score_a) > max(score_b)
  # PadChest's white frame, VinDr's black one.
  assert all((p[0] == 255).all() and (p[:, -1] == 255).all() for p in a)
  assert all((p[0] == 0).all() for p in b)
  # The intensity curve: gamma < 1 brightens the mid-tones.
  plain = _frontal([3, 0])
  no_frame = dict(padchest, border=0.0, marker='top_left')
  middle = slice(20, 44)
  assert (draw.apply_style(plain, no_frame)[middle, middle].astype(int) >=
          plain[middle, middle]).all()


def test_marks_change_exactly_their_region():
  pixels = _frontal([4, 0], size=48)
  region = (0.4, 0.3, 0.12, 0.08)
  mask = draw.region_mask(48, 48, region)
  # An independent ellipse test on pixel centres.
  y, x = np.mgrid[0:48, 0:48]
  expected = (((y + 0.5) / 48 - 0.4) / 0.12) ** 2 + (
      ((x + 0.5) / 48 - 0.3) / 0.08) ** 2 <= 1
  np.testing.assert_array_equal(mask, expected)
  marked = draw.add_mark(pixels, ('pneumothorax', region))
  np.testing.assert_array_equal(marked != pixels, mask & (pixels != 12))
  assert (marked[mask] == 12).all()
  brighter = draw.add_mark(pixels, ('opacity', region))
  assert brighter[mask].mean() > pixels[mask].mean() + 30
  assert np.abs(brighter[~mask].astype(int) - pixels[~mask]).mean() < 15


def test_stored_values_span_the_given_range():
  pixels = np.array([[0, 128, 255]], np.uint8)
  np.testing.assert_array_equal(draw.to_stored(pixels, 100, 4095),
                                [[100, 2105, 4095]])
  assert draw.to_stored(pixels, 0, 65535).dtype == np.uint16
