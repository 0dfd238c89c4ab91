"""The training's own picture: augmentation_preview.png, the same images
under several draws of the training augmentation, written at the start of
a run so that a user sees what the model will see. The evaluation's
pictures (and the training curves) are `evaluation.plots`'.
"""

import os

import numpy as np

from xray_tfdata.evaluation.plots import AUGMENTATION_PREVIEW
from xray_tfdata.evaluation.plots import figure
from xray_tfdata.evaluation.plots import save


def write_augmentation_preview(path, images, augmentation, draws=5):
  """A grid: each row one image, first as stored, then `draws` draws of the
  training augmentation, so a user sees what the model will see.

  Args:
    path: the PNG to write.
    images: uint8 [N, H, W, C] images (a few of the training split).
    augmentation: the run's augmentation layer (called with training=True),
      or None for no augmentation.
    draws: augmented copies per image.
  """
  import keras  # pylint: disable=g-import-not-at-top
  images = np.asarray(images)
  columns = [images.astype(np.float32)]
  for _ in range(draws if augmentation is not None else 0):
    columns.append(keras.ops.convert_to_numpy(
        augmentation(images, training=True)).astype(np.float32))
  rows = images.shape[0]
  fig = figure(1.6 * len(columns), 1.6 * rows)
  for row in range(rows):
    for column, batch in enumerate(columns):
      ax = fig.add_subplot(rows, len(columns), row * len(columns) + column + 1)
      ax.imshow(np.clip(batch[row, ..., 0], 0, 255), cmap='gray', vmin=0,
                vmax=255)
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 0:
        ax.set_title('stored' if column == 0 else f'draw {column}',
                     fontsize=8)
  save(fig, path)


def preview_augmentation(out_dir, builder, config, num_images=4, draws=5):
  """Writes out_dir/augmentation_preview.png for a run, once.

  A fresh augmentation layer with the run's settings and seed, not the
  model's own: drawing from the model's would move its random state and
  change the training.

  Args:
    out_dir: the run's folder.
    builder: the run's `pipeline.DatasetBuilder`.
    config: the run's TrainConfig.
    num_images, draws: rows and augmented columns.

  Returns:
    The PNG's path.
  """
  from xray_tfdata import augment  # pylint: disable=g-import-not-at-top
  path = os.path.join(out_dir, AUGMENTATION_PREVIEW)
  if os.path.exists(path):
    return path  # a resumed run keeps the preview it started with
  count = min(num_images, builder.info.num_examples('train'))
  # One batch, read once: no cache (and no line about one).
  images = next(builder.as_dataset('train', count, cache=False)
                .as_numpy_iterator())[0]
  layer = (None if config.augmentation == 'none' else
           augment.make_augmentation(config.augmentation, seed=config.seed,
                                     **config.augmentation_kwargs()))
  write_augmentation_preview(path, images, layer, draws=draws)
  return path
