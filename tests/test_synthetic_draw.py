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

