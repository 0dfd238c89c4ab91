"""The evaluation's pictures: they open, have their size, are not blank,
and carry what their names say."""

import os

import numpy as np
from PIL import Image
import pytest

from xray_tfdata import evaluation
from xray_tfdata import report

# matplotlib's first two colours (the val and test curves).
C0 = (0x1f, 0x77, 0xb4)
C1 = (0xff, 0x7f, 0x0e)


def scores(n, seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  probs = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.5 * (2 * labels - 1))))
  return labels, probs


def pixels(path):
  with Image.open(path) as image:
    assert image.format == 'PNG'
    return np.asarray(image.convert('RGB')).astype(int)


def share_of(rgb, colour, tolerance=30):
  close = np.abs(rgb - np.array(colour)).sum(axis=-1) <= tolerance
  return close.mean()


def assert_not_blank(rgb):
  not_white = (rgb < 240).any(axis=-1).mean()
  assert not_white > 0.01, not_white
  assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20


@pytest.fixture(scope='module')
def pictures(tmp_path_factory):
  out_dir = str(tmp_path_factory.mktemp('pictures'))
  predictions = {'val': scores(200, 1), 'test': scores(300, 2)}
  result = evaluation.evaluate_label(predictions, num_resamples=50)
  history = os.path.join(out_dir, 'history.csv')
  with open(history, 'w') as f:
    f.write('epoch,auc,loss,val_auc,val_loss\n0,0.61,0.70,0.58,0.72\n'
            '1,0.74,0.61,0.70,0.66\n2,0.83,0.52,0.76,0.61\n')
  files = report.write_pictures(out_dir, {'labels': {'PNEUMONIA': result}},
                                {'PNEUMONIA': predictions}, history)
  return out_dir, files, result


def test_every_picture_opens_with_its_size_and_is_not_blank(pictures):
  out_dir, files, _ = pictures
  assert list(files.values()) == [
      'roc_pneumonia.png', 'pr_pneumonia.png', 'reliability_pneumonia.png',
      'confusion_pneumonia.png', 'training_curves.png']
  sizes = {'roc_pneumonia.png': (600, 500), 'pr_pneumonia.png': (600, 500),
           'reliability_pneumonia.png': (600, 650),
           'confusion_pneumonia.png': (450, 400),
           'training_curves.png': (900, 400)}
  for name, size in sizes.items():
    path = os.path.join(out_dir, name)
    with Image.open(path) as image:
      assert image.size == size, name
    assert_not_blank(pixels(path))


def test_curves_show_both_splits(pictures):
  out_dir, _, _ = pictures
  for name in ('roc_pneumonia.png', 'pr_pneumonia.png',
               'reliability_pneumonia.png', 'training_curves.png'):
    rgb = pixels(os.path.join(out_dir, name))
    # Lines of both colours: val (or train) and test (or val).
    assert share_of(rgb, C0) > 0.002, name
    assert share_of(rgb, C1) > 0.002, name


def test_roc_curve_is_where_the_auc_says(pictures):
  """A good model's curve hugs the top left: the upper-left quarter of the
  plot holds far more of the curves' colour than the lower right."""
  out_dir, _, result = pictures
  assert result['splits']['test']['auc']['value'] > 0.9
  rgb = pixels(os.path.join(out_dir, 'roc_pneumonia.png'))
  height, width, _ = rgb.shape
  upper_left = rgb[:height // 2, :width // 2]
  lower_right = rgb[height // 2:, width // 2:]
  assert share_of(upper_left, C1) > 5 * share_of(lower_right, C1)


def test_confusion_matrix_darkest_where_the_count_is_largest(tmp_path):
  labels = np.array([0] * 50 + [1] * 10)
  probs = np.concatenate([np.linspace(0.0, 0.3, 50), np.linspace(0.6, 1, 10)])
  result = evaluation.evaluate_label({'val': (labels, probs),
                                      'test': (labels, probs)},
                                     num_resamples=0)
  path = str(tmp_path / 'confusion.png')
  report.plot_confusion(path, 'PNEUMONIA', result)
  rgb = pixels(path)
  # The TN cell (50) is the darkest blue (matplotlib's Blues at its top,
  # about (8, 48, 107)); it sits in the upper left of the matrix, whose
  # extent is every bluish pixel (the light TP cell included).
  dark = np.abs(rgb - np.array([8, 48, 107])).sum(axis=-1) < 40
  bluish = rgb[..., 2] > rgb[..., 0] + 10
  assert dark.mean() > 0.05
  rows, columns = np.nonzero(bluish)
  dark_rows, dark_columns = np.nonzero(dark)
  assert dark_rows.mean() < (rows.min() + rows.max()) / 2
  assert dark_columns.mean() < (columns.min() + columns.max()) / 2
  # No dark blue in the FP and FN cells' halves beyond the diagonal.
  assert not dark[(rows.min() + rows.max()) // 2 + 5:,
                  :(columns.min() + columns.max()) // 2].any()


def test_training_curves_need_an_epoch(tmp_path):
  path = str(tmp_path / 'history.csv')
  with open(path, 'w') as f:
    f.write('epoch,auc,loss,val_auc,val_loss\n')
  assert not report.plot_training_curves(str(tmp_path / 'c.png'), path)
  assert not os.path.exists(tmp_path / 'c.png')


@pytest.mark.slow  # imports Keras and runs the augmentation (about 15 s)
def test_augmentation_preview_grid(tmp_path):
  from xray_tfdata import augment  # pylint: disable=g-import-not-at-top
  images = np.zeros((3, 24, 24, 1), np.uint8)
  images[:, 6:12, 6:12] = 255
  layer = augment.make_augmentation('fused', rotation_range=40, seed=1)
  path = str(tmp_path / 'preview.png')
  report.write_augmentation_preview(path, images, layer, draws=4)
  with Image.open(path) as image:
    assert image.size == (160 * 5, 160 * 3)  # 1 stored + 4 draws, 3 rows
  rgb = pixels(path)
  assert_not_blank(rgb)
  # Each column shows the square somewhere: white pixels in every column.
  grey = rgb[..., 0]
  for column in range(5):
    part = grey[:, column * 160 + 20:(column + 1) * 160 - 20]
    assert (part > 250).mean() > 0.01, column
  plain = str(tmp_path / 'plain.png')
  report.write_augmentation_preview(plain, images, None)
  with Image.open(plain) as image:
    assert image.size == (160, 480)
