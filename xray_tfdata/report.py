"""The evaluation's pictures, PNG files next to results.md.

  roc_<label>.png           ROC curve of each split, operating points marked
  pr_<label>.png            precision-recall curve, operating points marked
  reliability_<label>.png   reliability diagram (20 bins) with the counts
  confusion_<label>.png     confusion matrix at Youden's threshold
  training_curves.png       loss and AUC per epoch, train and val
  roc_labels.png, pr_labels.png, reliability_labels.png
                            a multi-label model's: one grid each, a panel
                            per label (instead of four files per label)
  augmentation_preview.png  the same images under several draws of the
                            training augmentation (start of a run)

matplotlib with its Agg backend (no display needed), set on a Figure of our
own instead of pyplot's global state, so that importing this module changes
nothing for a caller who uses pyplot. The numbers come from `evaluation`, so
the pictures show what results.md says.
"""

import csv
import os

import numpy as np

from xray_tfdata import atomic
from xray_tfdata import evaluation

DPI = 100
_MARKERS = {'youden': 'o', 'sensitivity_at_90_specificity': 's',
            'sensitivity_at_95_specificity': 'D',
            'specificity_at_90_sensitivity': '^',
            'specificity_at_95_sensitivity': 'v'}
AUGMENTATION_PREVIEW = 'augmentation_preview.png'
TRAINING_CURVES = 'training_curves.png'


def _figure(width=6.0, height=5.0):
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  fig = figure.Figure(figsize=(width, height), dpi=DPI)
  backend_agg.FigureCanvasAgg(fig)
  return fig


def _save(fig, path):
  """Writes the figure as a PNG, atomically."""
  import io  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  fig.tight_layout()
  fig.savefig(buffer, format='png', dpi=DPI)
  atomic.write_bytes(path, buffer.getvalue())


def _file_label(label):
  return ''.join(c if c.isalnum() else '_' for c in label.lower())


def _evaluated_split(result):
  """The split the operating points are shown on: the last one that did not
  choose them (test, or an external dataset's split)."""
  chosen_on = {t['chosen_on'] for t in result['thresholds'].values()}
  others = [s for s in result['splits'] if s not in chosen_on]
  return others[-1] if others else list(result['splits'])[-1]


def plot_roc(path, label, result, predictions):
  """ROC curves of every split; the operating points on the evaluated one."""
  fig = _figure()
  ax = fig.add_subplot()
  shown = _evaluated_split(result)
  for split, (labels, probs) in predictions.items():
    if not 0 < np.sum(labels) < len(labels):
      continue
    fpr, tpr, _ = evaluation.roc_curve(labels, probs)
    auc = result['splits'][split]['auc']['value']
    ax.plot(fpr, tpr, drawstyle='steps-post', label=f'{split} (AUC {auc:.3f})')
  for op, point in result['splits'][shown]['operating_points'].items():
    ax.plot(1 - point['specificity']['value'], point['sensitivity']['value'],
            _MARKERS.get(op, 'o'), markersize=8, markerfacecolor='none',
            label=f"{result['thresholds'][op]['rule']} ({shown})")
  ax.plot([0, 1], [0, 1], ':', color='grey', linewidth=1)
  ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01),
         xlabel='1 - specificity (false positive rate)',
         ylabel='sensitivity (true positive rate)', title=f'ROC: {label}')
  ax.legend(loc='lower right', fontsize=7)
  _save(fig, path)


def _pr_steps(labels, probs):
  """(recall, precision) of the precision-recall curve as drawn: from
  recall 0 at the first point's precision."""
  precision, recall, _ = evaluation.precision_recall_curve(labels, probs)
  return (np.concatenate([[0.0], recall]),
          np.concatenate([[precision[0]], precision]))


def plot_pr(path, label, result, predictions):
  """Precision-recall curves; the operating points on the evaluated one."""
  fig = _figure()
  ax = fig.add_subplot()
  shown = _evaluated_split(result)
  for split, (labels, probs) in predictions.items():
    if not np.any(labels):
      continue
    ap = result['splits'][split]['average_precision']['value']
    ax.plot(*_pr_steps(labels, probs), drawstyle='steps-pre',
            label=f'{split} (AP {ap:.3f})')
  for op, point in result['splits'][shown]['operating_points'].items():
    ax.plot(point['sensitivity']['value'], point['ppv']['value'],
            _MARKERS.get(op, 'o'), markersize=8, markerfacecolor='none',
            label=f"{result['thresholds'][op]['rule']} ({shown})")
  prevalence = np.mean(predictions[shown][0])
  ax.axhline(prevalence, linestyle=':', color='grey', linewidth=1)
  ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel='recall (sensitivity)',
         ylabel='precision (PPV)', title=f'Precision-recall: {label}')
  ax.legend(loc='lower left', fontsize=7)
  _save(fig, path)


def plot_reliability(path, label, predictions):
  """Observed fraction positive against mean predicted probability per
  bin (the ECE's 20 bins), with the bin counts below."""
  fig = _figure(6.0, 6.5)
  grid = fig.add_gridspec(2, 1, height_ratios=(3, 1))
  ax, counts_ax = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
  edges = np.linspace(0, 1, evaluation.CALIBRATION_BINS + 1)
  width = edges[1] - edges[0]
  for split, (labels, probs) in predictions.items():
    mean_prob, fraction, counts = evaluation.calibration_bins(labels, probs)
    filled = counts > 0
    ece = evaluation.expected_calibration_error(labels, probs)
    ax.plot(mean_prob[filled], fraction[filled], 'o-', markersize=4,
            label=f'{split} (ECE {ece:.3f})')
    counts_ax.step(edges[:-1] + width / 2, counts, where='mid', label=split)
  ax.plot([0, 1], [0, 1], ':', color='grey', linewidth=1,
          label='perfect calibration')
  ax.set(xlim=(0, 1), ylim=(-0.01, 1.01), ylabel='fraction positive',
         title=f'Reliability: P({label})')
  ax.legend(loc='upper left', fontsize=8)
  counts_ax.set(xlim=(0, 1), xlabel=f'predicted P({label})', ylabel='images')
  _save(fig, path)


def plot_confusion(path, label, result, operating_point='youden'):
  """The evaluated split's confusion matrix at one operating point."""
  shown = _evaluated_split(result)
  point = result['splits'][shown]['operating_points'][operating_point]
  matrix = np.array([[point['tn'], point['fp']], [point['fn'], point['tp']]])
  fig = _figure(4.5, 4.0)
  ax = fig.add_subplot()
  ax.imshow(matrix, cmap='Blues', vmin=0)
  for (row, column), count in np.ndenumerate(matrix):
    ax.text(column, row, str(count), ha='center', va='center', fontsize=14,
            color='white' if count > matrix.max() / 2 else 'black')
  names = [f'not {label}', label]
  ax.set_xticks([0, 1], [f'predicted\n{n}' for n in names])
  ax.set_yticks([0, 1], [f'true\n{n}' for n in names])
  ax.set_title(f"{shown}, {result['thresholds'][operating_point]['rule']}, "
               f"threshold {point['threshold']:.3f}", fontsize=9)
  _save(fig, path)


def read_history(path):
  """{column: [float per epoch]} of a Keras CSVLogger file."""
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  columns = rows[0].keys() if rows else []
  return {c: [float(r[c]) for r in rows] for c in columns}


def plot_training_curves(path, history_csv):
  """Loss and AUC per epoch, train and val, from history.csv.

  Returns:
    True when written; False when history.csv has no epoch.
  """
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  history = read_history(history_csv)
  if not history.get('epoch'):
    return False
  epochs = np.array(history['epoch']) + 1
  fig = _figure(9.0, 4.0)
  for index, metric in enumerate(('loss', 'auc')):
    ax = fig.add_subplot(1, 2, index + 1)
    for prefix, split in (('', 'train'), ('val_', 'val')):
      if prefix + metric in history:
        ax.plot(epochs, history[prefix + metric], 'o-', markersize=3,
                label=split)
    ax.set(xlabel='epoch', ylabel=metric, title=metric)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=8)
  _save(fig, path)
  return True


def write_pictures(out_dir, evaluation_results, predictions,
                   history_csv=None):
  """Writes every evaluation picture into out_dir.

  Args:
    out_dir: an existing folder.
    evaluation_results: results['evaluation'] (`scoring.evaluate_dataset`).
    predictions: {label: {split: (0/1 labels, probs)}}.
    history_csv: a run's history.csv, or None.

  Returns:
    {picture title: file name}, in the order results.md lists them.
  """
  pictures = {}
  for label, result in evaluation_results['labels'].items():
    name = _file_label(label)
    by_split = predictions[label]
    files = {f'ROC curve ({label})': f'roc_{name}.png',
             f'Precision-recall curve ({label})': f'pr_{name}.png',
             f'Reliability diagram ({label})': f'reliability_{name}.png',
             f'Confusion matrix at Youden\'s threshold ({label})':
                 f'confusion_{name}.png'}
    paths = {k: os.path.join(out_dir, v) for k, v in files.items()}
    titles = list(files)
    plot_roc(paths[titles[0]], label, result, by_split)
    plot_pr(paths[titles[1]], label, result, by_split)
    plot_reliability(paths[titles[2]], label, by_split)
    plot_confusion(paths[titles[3]], label, result)
    pictures.update(files)
  if history_csv and os.path.exists(history_csv):
    if plot_training_curves(os.path.join(out_dir, TRAINING_CURVES),
                            history_csv):
      pictures['Training curves'] = TRAINING_CURVES
  if os.path.exists(os.path.join(out_dir, AUGMENTATION_PREVIEW)):
    pictures['Augmentation preview'] = AUGMENTATION_PREVIEW
  return pictures


# A multi-label evaluation's pictures: one grid per kind, a panel per label.
ROC_GRID = 'roc_labels.png'
PR_GRID = 'pr_labels.png'
RELIABILITY_GRID = 'reliability_labels.png'
GRID_COLUMNS = 4
_PANEL = 3.2  # inches per panel


def _grid(count):
  """A figure of count panels, GRID_COLUMNS wide, and its axes in order."""
  columns = min(GRID_COLUMNS, max(count, 1))
  rows = -(-max(count, 1) // columns)
  fig = _figure(_PANEL * columns, _PANEL * rows)
  axes = [fig.add_subplot(rows, columns, i + 1) for i in range(count)]
  return fig, axes


def _no_curve(ax, why):
  ax.text(0.5, 0.5, why, ha='center', va='center', fontsize=8, wrap=True,
          transform=ax.transAxes)


def _roc_panel(ax, label, result, predictions):
  drawn = False
  for split, (labels, probs) in predictions.items():
    if not 0 < np.sum(labels) < len(labels):
      continue
    fpr, tpr, _ = evaluation.roc_curve(labels, probs)
    auc = result['splits'][split]['auc']['value']
    ax.plot(fpr, tpr, drawstyle='steps-post', label=f'{split} {auc:.3f}')
    drawn = True
  if result['thresholds'] and result['splits']:
    shown = _evaluated_split(result)
    youden = result['splits'][shown]['operating_points'].get('youden')
    if youden and not np.isnan(youden['sensitivity']['value'] +
                               youden['specificity']['value']):
      ax.plot(1 - youden['specificity']['value'],
              youden['sensitivity']['value'], 'o', markersize=6,
              markerfacecolor='none', color='black',
              label=f'Youden ({shown})')
  ax.plot([0, 1], [0, 1], ':', color='grey', linewidth=1)
  ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), title=label)
  if drawn:
    ax.legend(loc='lower right', fontsize=6, title='AUC', title_fontsize=6)
  else:
    _no_curve(ax, 'no split with both classes:\nAUC undefined')


def _pr_panel(ax, label, result, predictions):
  drawn = False
  for split, (labels, probs) in predictions.items():
    if not np.any(labels):
      continue
    ap = result['splits'][split]['average_precision']['value']
    ax.plot(*_pr_steps(labels, probs), drawstyle='steps-pre',
            label=f'{split} {ap:.3f}')
    drawn = True
  ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), title=label)
  if drawn:
    ax.legend(loc='upper right', fontsize=6, title='AP', title_fontsize=6)
  else:
    _no_curve(ax, 'no positive: no curve')


def _reliability_panel(ax, label, predictions):
  for split, (labels, probs) in predictions.items():
    mean_prob, fraction, counts = evaluation.calibration_bins(labels, probs)
    filled = counts > 0
    ece = evaluation.expected_calibration_error(labels, probs)
    ax.plot(mean_prob[filled], fraction[filled], 'o-', markersize=3,
            label=f'{split} {ece:.3f}')
  ax.plot([0, 1], [0, 1], ':', color='grey', linewidth=1)
  ax.set(xlim=(0, 1), ylim=(-0.01, 1.01), title=label)
  if predictions:
    ax.legend(loc='upper left', fontsize=6, title='ECE', title_fontsize=6)


def write_label_grids(out_dir, evaluation_results, predictions,
                      history_csv=None):
  """A multi-label evaluation's pictures: ROC, precision-recall and
  reliability (20 bins) each as one grid, a panel per label (GRID_COLUMNS
  wide), plus the training curves and augmentation preview as
  `write_pictures`. A label without a curve (one class) says so in its
  panel.

  Args:
    out_dir: an existing folder.
    evaluation_results: `scoring.evaluate_multilabel_dataset`'s dict.
    predictions: {label: {split: (0/1 labels, probs)}}, known targets only.
    history_csv: a run's history.csv, or None.

  Returns:
    {picture title: file name}, in the order results.md lists them.
  """
  labels = list(evaluation_results['labels'])
  draws = ((ROC_GRID, 'ROC curves per label', 'false positive rate',
            'sensitivity', _roc_panel),
           (PR_GRID, 'Precision-recall curves per label', 'recall',
            'precision', _pr_panel),
           (RELIABILITY_GRID, 'Reliability diagrams per label',
            'predicted probability', 'fraction positive',
            lambda ax, label, result, by_split: _reliability_panel(
                ax, label, by_split)))
  pictures = {}
  for name, title, xlabel, ylabel, panel in draws:
    fig, axes = _grid(len(labels))
    for ax, label in zip(axes, labels):
      panel(ax, label, evaluation_results['labels'][label],
            predictions.get(label, {}))
      ax.set_xlabel(xlabel, fontsize=7)
      ax.set_ylabel(ylabel, fontsize=7)
      ax.tick_params(labelsize=6)
    _save(fig, os.path.join(out_dir, name))
    pictures[title] = name
  if history_csv and os.path.exists(history_csv):
    if plot_training_curves(os.path.join(out_dir, TRAINING_CURVES),
                            history_csv):
      pictures['Training curves'] = TRAINING_CURVES
  if os.path.exists(os.path.join(out_dir, AUGMENTATION_PREVIEW)):
    pictures['Augmentation preview'] = AUGMENTATION_PREVIEW
  return pictures


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
  fig = _figure(1.6 * len(columns), 1.6 * rows)
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
  _save(fig, path)


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
