"""The evaluation's pictures (evaluation.plots): one renderer per kind,
a panel per label (one panel for one label); they open, have their size,
are not blank, and carry what their names say."""

import os

import numpy as np
from PIL import Image
import pytest

from evaluation_data import results_of
from xray_tfdata.evaluation import plots

# matplotlib's first two colours (the val and test curves).
C0 = (0x1f, 0x77, 0xb4)
C1 = (0xff, 0x7f, 0x0e)


def scores(n, seed, labels=1):
  rng = np.random.default_rng(seed)
  targets = rng.integers(0, 2, (n, labels)).astype(np.float64)
  probs = 1 / (1 + np.exp(-(rng.normal(size=targets.shape) +
                            1.5 * (2 * targets - 1))))
  return targets, probs


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


def draw(out_dir, labels):
  names = ['PNEUMONIA', 'Effusion', 'Mass'][:labels]
  predictions = {'val': scores(200, 1, labels), 'test': scores(300, 2, labels)}
  results = results_of(predictions, names, 50)
  history = os.path.join(out_dir, 'history.csv')
  with open(history, 'w') as f:
    f.write('epoch,auc,loss,val_auc,val_loss\n0,0.61,0.70,0.58,0.72\n'
            '1,0.74,0.61,0.70,0.66\n2,0.83,0.52,0.76,0.61\n')
  files = plots.write_pictures(out_dir, results, predictions, history)
  return files, results


@pytest.fixture(scope='module')
def pictures(tmp_path_factory):
  out_dir = str(tmp_path_factory.mktemp('pictures'))
  files, results = draw(out_dir, 1)
  return out_dir, files, results['labels']['PNEUMONIA']


@pytest.mark.parametrize('labels, panels', [(1, (600, 500)),
                                            (3, (3 * 320, 320))],
                         ids=['L1', 'L3'])
def test_every_picture_opens_with_its_size_and_is_not_blank(tmp_path, labels,
                                                            panels):
  files, _ = draw(str(tmp_path), labels)
  assert list(files.values()) == [plots.ROC, plots.PR, plots.RELIABILITY,
                                  plots.CONFUSION, plots.TRAINING_CURVES]
  for name in files.values():
    path = os.path.join(str(tmp_path), name)
    with Image.open(path) as image:
      want = (900, 400) if name == plots.TRAINING_CURVES else panels
      assert image.size == want, name
    assert_not_blank(pixels(path))


def test_curves_show_both_splits(pictures):
  out_dir, _, _ = pictures
  for name in (plots.ROC, plots.PR, plots.RELIABILITY,
               plots.TRAINING_CURVES):
    rgb = pixels(os.path.join(out_dir, name))
    # Lines of both colours: val (or train) and test (or val).
    assert share_of(rgb, C0) > 0.002, name
    assert share_of(rgb, C1) > 0.002, name


def test_roc_curve_is_where_the_auc_says(pictures):
  """A good model's curve hugs the top left: the upper-left quarter of the
  plot holds far more of the curves' colour than the lower right."""
  out_dir, _, result = pictures
  assert result['splits']['test']['auc']['value'] > 0.9
  rgb = pixels(os.path.join(out_dir, plots.ROC))
  height, width, _ = rgb.shape
  upper_left = rgb[:height // 2, :width // 2]
  lower_right = rgb[height // 2:, width // 2:]
  assert share_of(upper_left, C1) > 5 * share_of(lower_right, C1)


def test_confusion_matrix_darkest_where_the_count_is_largest(tmp_path):
  labels = np.array([0] * 50 + [1] * 10, np.float64)[:, None]
  probs = np.concatenate([np.linspace(0.0, 0.3, 50),
                          np.linspace(0.6, 1, 10)])[:, None]
  predictions = {'val': (labels, probs), 'test': (labels, probs)}
  results = results_of(predictions, ['PNEUMONIA'], 0)
  plots.write_pictures(str(tmp_path), results, predictions)
  rgb = pixels(str(tmp_path / plots.CONFUSION))
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
  assert not plots.plot_training_curves(str(tmp_path / 'c.png'), path)
  assert not os.path.exists(tmp_path / 'c.png')
