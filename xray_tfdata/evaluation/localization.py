"""Localization: the pointing game (Zhang et al., ECCV 2016) of a model's
Grad-CAM heatmaps on the positive images of a dataset that stores boxes
(RSNA's; NIH's and VinDr-CXR's, each label scored on its own boxes) or
masks (SIIM's): a hit when the heatmap's maximum lies inside one of the
image's boxes, or on a pixel inside its mask (`schema.MASK_INSIDE`: at
least half the pixel in the regions), no tolerance; the hit rate with a
patient-level interval.
"""

import numpy as np

from xray_tfdata import errors
from xray_tfdata import schema
from xray_tfdata.evaluation import bootstrap


class LocalizationError(errors.XrayError):
  """The pointing game asked of a dataset without boxes."""


def has_boxes(info):
  """Whether a dataset's records store boxes (RSNA's, NIH's, VinDr-CXR's)."""
  return set(schema.BOX_KEYS) <= set(info.extra_features)


def has_masks(info):
  """Whether a dataset's records store masks (SIIM's)."""
  return schema.MASK in info.extra_features


def _pointing(heatmaps, regions, inside):
  """The pointing game's one loop: (hits, flat) as `pointing_game`, a hit
  where inside(region, row, column) holds at the heatmap's maximum."""
  heatmaps = np.asarray(heatmaps, np.float64)
  hits = np.zeros(len(heatmaps), bool)
  flat = np.zeros(len(heatmaps), bool)
  for index, (heatmap, region) in enumerate(zip(heatmaps, regions)):
    if not heatmap.max() > 0:
      flat[index] = True
      continue
    row, column = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    hits[index] = bool(inside(region, row, column))
  return hits, flat


def mask_pointing_game(heatmaps, masks):
  """Whether each heatmap's maximum falls on a pixel inside its mask.

  Args:
    heatmaps: [N, H, W], in the masks' pixels (the stored image's).
    masks: per image uint8 [H, W] (`schema.MASK`); inside at
      `schema.MASK_INSIDE` or more.

  Returns:
    (hits, flat) as `pointing_game`.
  """
  return _pointing(heatmaps, masks, lambda mask, row, column:
                   mask[row, column] >= schema.MASK_INSIDE)


def pointing_game(heatmaps, boxes):
  """Whether each heatmap's maximum falls inside one of its boxes.

  Args:
    heatmaps: [N, H, W], in the boxes' pixels (the stored image's).
    boxes: per image an array [k, 4] of (x, y, width, height), x and y the
      top-left corner; pixel (row r, column c) is the square [c, c + 1) x
      [r, r + 1), its centre (c + 0.5, r + 0.5) is tested.

  Returns:
    (hits, flat): bool [N] arrays; a flat heatmap (no positive value: the
    model points nowhere) is a miss, and flagged.
  """
  def inside(image_boxes, row, column):
    x, y = column + 0.5, row + 0.5
    image_boxes = np.asarray(image_boxes, np.float64).reshape(-1, 4)
    return np.any(
        (image_boxes[:, 0] <= x) & (x <= image_boxes[:, 0] + image_boxes[:, 2])
        & (image_boxes[:, 1] <= y) & (y <= image_boxes[:, 1] + image_boxes[:, 3]))
  return _pointing(heatmaps, boxes, inside)


def hit_rate_interval(hits, patient_ids, num_resamples=2000, level=0.95,
                      seed=0):
  """Percentile interval of the hit rate, resampling patients."""
  hits = np.asarray(hits, np.float64)
  rates = [hits[index].mean() for index in
           bootstrap.patient_resamples(patient_ids, num_resamples, seed)]
  tail = 100 * (1 - level) / 2
  low, high = np.percentile(rates, [tail, 100 - tail])
  return [float(low), float(high)]


def localize(net, builder, split, positives, boxes, patient_ids, image_size,
             batch_size, num_resamples=2000, seed=0, level=0.95, masks=None):
  """The pointing game of a model's Grad-CAM heatmaps on a split's positive
  images with boxes.

  Each heatmap is computed at the model's input size and upsampled
  (bilinear) to the stored size, the boxes' pixels.

  Args:
    net: the model (any backbone with a spatial feature map, `gradcam`).
    builder: a dataset whose records store boxes.
    split: the split.
    positives: {label: (bool [N] positive images in disk order, the model
      output whose heatmap is taken)}.
    boxes: per image in disk order, float [k, 4] (x, y, width, height);
      or {label: such a list} where each label has its own boxes
      (`schema.BOX_LABEL`); None with masks.
    patient_ids: one per image.
    image_size: the model's input size.
    batch_size: images per Grad-CAM computation.
    num_resamples, seed, level: the hit rate's patient-level bootstrap.
    masks: instead of boxes, per image in disk order its stored mask
      (uint8 [H, W], `mask_pointing_game`); a positive whose mask has no
      pixel inside counts as one without a box.

  Returns:
    {'rule', 'regions' ('boxes' or 'masks'), 'labels': {label: {'n',
     'hits', 'hit_rate', 'ci' (None for no image), 'flat_heatmaps',
     'patients', 'no_box_positives'}}}.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from xray_tfdata import gradcam  # pylint: disable=g-import-not-at-top
  if masks is not None:
    inside = np.array([(m >= schema.MASK_INSIDE).any() for m in masks], bool)
    with_box = dict.fromkeys(positives, inside)
  else:
    if not isinstance(boxes, dict):
      boxes = dict.fromkeys(positives, boxes)
    with_box = {label: np.array([len(b) > 0 for b in boxes[label]], bool)
                for label in positives}
  ids = np.asarray(patient_ids)
  stored = builder.info.image_size
  ds = builder.as_dataset(split, batch_size, image_size=image_size,
                          resize=stored != (image_size, image_size))
  out = {'rule': 'hit: the Grad-CAM maximum (upsampled to the stored '
                 'size) inside one of the image\'s boxes', 'labels': {}}
  # What the regions are, for the report's words ('boxes' or 'masks').
  out['regions'] = 'boxes' if masks is None else 'masks'
  if masks is not None:
    out['rule'] = ('hit: the Grad-CAM maximum (upsampled to the stored '
                   'size) on a pixel at least half inside the image\'s mask')
  chosen = {label: np.flatnonzero(mask & with_box[label])
            for label, (mask, _) in positives.items()}
  hits = {label: [] for label in positives}
  flat = {label: [] for label in positives}
  start = 0
  for images, _ in ds.as_numpy_iterator():
    rows = np.arange(start, start + len(images))
    start += len(images)
    for label, (_, column) in positives.items():
      take = np.isin(rows, chosen[label])
      if not take.any():
        continue
      maps = gradcam.heatmaps(net, images[take], output_index=column)
      if maps.shape[1:] != stored:
        maps = tf.image.resize(maps[..., None], stored).numpy()[..., 0]
      if masks is not None:
        got, none = mask_pointing_game(maps, [masks[i] for i in rows[take]])
      else:
        got, none = pointing_game(maps,
                                  [boxes[label][i] for i in rows[take]])
      hits[label].append(got)
      flat[label].append(none)
  for label, (mask, _) in positives.items():
    got = np.concatenate(hits[label]) if hits[label] else np.zeros(0, bool)
    out['labels'][label] = {
        'n': int(got.size), 'hits': int(got.sum()),
        'hit_rate': float(got.mean()) if got.size else float('nan'),
        'ci': (hit_rate_interval(got, ids[chosen[label]], num_resamples,
                                 level, seed)
               if got.size and num_resamples else None),
        'flat_heatmaps': (int(np.concatenate(flat[label]).sum())
                          if flat[label] else 0),
        'patients': int(np.unique(ids[chosen[label]]).size),
        'no_box_positives': int((mask & ~with_box[label]).sum())}
  return out
