"""The evaluation's pictures, PNG files next to results.md: one renderer
per kind of picture, each a grid with one panel per label (one panel for a
model of one label).

  roc.png           ROC curves of every split, operating points marked
  pr.png            precision-recall curves, operating points marked
  reliability.png   reliability diagram (the ECE's 20 bins)
  confusion.png     confusion matrix at Youden's threshold
  training_curves.png   loss and AUC per epoch, train and val

matplotlib with its Agg backend (no display needed), set on a Figure of our
own instead of pyplot's global state, so that importing this module changes
nothing for a caller who uses pyplot. The numbers come from the results
and the curve primitive (`curves`), so the pictures show what results.md
says.
"""

import csv
import io
import os

import numpy as np

from xray_tfdata import atomic
from xray_tfdata.evaluation import calibration
from xray_tfdata.evaluation import curves
from xray_tfdata.evaluation import per_label

DPI = 100
_MARKERS = {'fixed_0.5': 'x', 'youden': 'o',
            'sensitivity_at_90_specificity': 's',
            'sensitivity_at_95_specificity': 'D',
            'specificity_at_90_sensitivity': '^',
            'specificity_at_95_sensitivity': 'v'}
ROC = 'roc.png'
PR = 'pr.png'
RELIABILITY = 'reliability.png'
CONFUSION = 'confusion.png'
TRAINING_CURVES = 'training_curves.png'
AUGMENTATION_PREVIEW = 'augmentation_preview.png'
GRID_COLUMNS = 4
_PANEL = 3.2  # inches per panel of a grid
_SINGLE = (6.0, 5.0)  # inches of a one-panel picture


def figure(width=6.0, height=5.0):
  """A matplotlib Figure on the Agg canvas, outside pyplot."""
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  from matplotlib import figure as figure_lib  # pylint: disable=g-import-not-at-top
  fig = figure_lib.Figure(figsize=(width, height), dpi=DPI)
  backend_agg.FigureCanvasAgg(fig)
  return fig


def save(fig, path):
  """Writes the figure as a PNG, atomically."""
  buffer = io.BytesIO()
  fig.tight_layout()
  fig.savefig(buffer, format='png', dpi=DPI)
  atomic.write_bytes(path, buffer.getvalue())


def _grid(count):
  """A figure of count panels, GRID_COLUMNS wide, and its axes in order;
  one panel is a picture of its own size."""
  if count <= 1:
    fig = figure(*_SINGLE)
    return fig, [fig.add_subplot()]
  columns = min(GRID_COLUMNS, count)
  rows = -(-count // columns)
  fig = figure(_PANEL * columns, _PANEL * rows)
  return fig, [fig.add_subplot(rows, columns, i + 1) for i in range(count)]


def _no_curve(ax, why):
  ax.text(0.5, 0.5, why, ha='center', va='center', fontsize=8, wrap=True,
          transform=ax.transAxes)


def evaluated_split(result):
  """The split the operating points are shown on: the last one that did not
  choose them (test, or an external dataset's split)."""
  chosen_on = {t['chosen_on'] for t in result['thresholds'].values()}
  others = [s for s in result['splits'] if s not in chosen_on]
  return others[-1] if others else list(result['splits'])[-1]


def _mark_points(ax, result, x_metric, y_metric, flip_x=False,
                 compact=False):
  """The operating points of the evaluated split, where defined; compact
  (a panel of a grid): Youden's only."""
  if not result['thresholds'] or not result['splits']:
    return
  shown = evaluated_split(result)
  for op, point in result['splits'][shown]['operating_points'].items():
    if compact and op != 'youden':
      continue
    x, y = point[x_metric]['value'], point[y_metric]['value']
    if np.isnan(x) or np.isnan(y):
      continue
    ax.plot(1 - x if flip_x else x, y, _MARKERS.get(op, 'o'), markersize=7,
            markerfacecolor='none',
            label=f"{result['thresholds'][op]['rule']} ({shown})")


def roc_panel(ax, label, result, by_split, compact=False):
  """ROC curves of every split with both classes; operating points."""
  drawn = False
  for split, (labels, probs) in by_split.items():
    if not 0 < np.sum(labels) < len(labels):
      continue
    fpr, tpr, _ = curves.roc_curve(labels, probs)
    auc = result['splits'][split]['auc']['value']
    ax.plot(fpr, tpr, drawstyle='steps-post', label=f'{split} (AUC {auc:.3f})')
    drawn = True
  _mark_points(ax, result, 'specificity', 'sensitivity', flip_x=True,
               compact=compact)
  ax.plot([0, 1], [0, 1], ':', color='grey', linewidth=1)
  ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), title=f'ROC: {label}',
         xlabel='1 - specificity', ylabel='sensitivity')
  if drawn:
    ax.legend(loc='lower right', fontsize=6)
  else:
    _no_curve(ax, 'no split with both classes:\nAUC undefined')


def _pr_steps(labels, probs):
  """(recall, precision) of the precision-recall curve as drawn: from
  recall 0 at the first point's precision."""
  precision, recall, _ = curves.precision_recall_curve(labels, probs)
  return (np.concatenate([[0.0], recall]),
          np.concatenate([[precision[0]], precision]))


def pr_panel(ax, label, result, by_split, compact=False):
  """Precision-recall curves; operating points; the prevalence line."""
  drawn = False
  for split, (labels, probs) in by_split.items():
    if not np.any(labels):
      continue
    ap = result['splits'][split]['average_precision']['value']
    ax.plot(*_pr_steps(labels, probs), drawstyle='steps-pre',
            label=f'{split} (AP {ap:.3f})')
    drawn = True
  _mark_points(ax, result, 'sensitivity', 'ppv', compact=compact)
  if drawn:
    shown = evaluated_split(result)
    ax.axhline(np.mean(by_split[shown][0]), linestyle=':', color='grey',
               linewidth=1)
  ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel='recall',
         ylabel='precision', title=f'Precision-recall: {label}')
  if drawn:
    ax.legend(loc='lower left', fontsize=6)
  else:
    _no_curve(ax, 'no positive: no curve')


def reliability_panel(ax, label, result, by_split, compact=False):
  """Observed fraction positive against mean predicted probability per
  bin (the ECE's bins); behind, light bars of how many images of the
  evaluated split fall in each bin (a point of few images jumps)."""
  del compact  # the same panel in a grid
  edges = np.linspace(0, 1, calibration.CALIBRATION_BINS + 1)
  for split, (labels, probs) in by_split.items():
    mean_prob, fraction, counts = calibration.calibration_bins(labels, probs)
    filled = counts > 0
    ece = calibration.expected_calibration_error(labels, probs)
    ax.plot(mean_prob[filled], fraction[filled], 'o-', markersize=3,
            label=f'{split} (ECE {ece:.3f})')
  if by_split and result['splits']:
    shown = evaluated_split(result)
    counts = calibration.calibration_bins(*by_split[shown])[2]
    counts_ax = ax.twinx()
    counts_ax.bar(edges[:-1], counts, width=edges[1] - edges[0],
                  align='edge', color='grey', alpha=0.15)
    counts_ax.set_ylabel(f'{shown} images per bin', fontsize=7)
    counts_ax.tick_params(labelsize=6)
    ax.set_zorder(counts_ax.get_zorder() + 1)  # the curves above the bars
    ax.patch.set_visible(False)
  ax.plot([0, 1], [0, 1], ':', color='grey', linewidth=1)
  ax.set(xlim=(0, 1), ylim=(-0.01, 1.01), xlabel=f'predicted P({label})',
         ylabel='fraction positive', title=f'Reliability: {label}')
  if by_split:
    ax.legend(loc='upper left', fontsize=6)


def confusion_panel(ax, label, result, by_split, compact=False,
                    operating_point='youden'):
  """The evaluated split's confusion matrix at one operating point."""
  del by_split, compact  # the counts are in the results
  if operating_point not in result['thresholds'] or not result['splits']:
    _no_curve(ax, f'{label}: no {operating_point} threshold')
    return
  shown = evaluated_split(result)
  point = result['splits'][shown]['operating_points'][operating_point]
  matrix = np.array([[point['tn'], point['fp']], [point['fn'], point['tp']]])
  ax.imshow(matrix, cmap='Blues', vmin=0)
  for (row, column), count in np.ndenumerate(matrix):
    ax.text(column, row, str(count), ha='center', va='center', fontsize=12,
            color='white' if count > matrix.max() / 2 else 'black')
  names = [f'not {label}', label]
  ax.set_xticks([0, 1], [f'predicted\n{n}' for n in names], fontsize=7)
  ax.set_yticks([0, 1], [f'true\n{n}' for n in names], fontsize=7)
  ax.set_title(f"{label}: {shown}, "
               f"{result['thresholds'][operating_point]['rule']}, "
               f"threshold {point['threshold']:.3f}", fontsize=8)


# title, file, panel renderer: the evaluation's pictures, in results.md's
# order.
PICTURES = (('ROC curves', ROC, roc_panel),
            ('Precision-recall curves', PR, pr_panel),
            ('Reliability diagrams', RELIABILITY, reliability_panel),
            ("Confusion matrices at Youden's threshold", CONFUSION,
             confusion_panel))


def label_predictions(results, predictions):
  """{label: {split: (0/1 labels, probs)}} on each label's known targets,
  of the splits its evaluation scored."""
  names = results['label_names']
  out = {}
  for label, result in results['labels'].items():
    column = names.index(label)
    out[label] = {}
    for split, (targets, probs) in predictions.items():
      if split in result['splits']:
        labels, label_probs, _ = per_label.known_targets(targets, probs,
                                                         column)
        out[label][split] = (labels, label_probs)
  return out


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
  fig = figure(9.0, 4.0)
  for index, metric in enumerate(('loss', 'auc')):
    ax = fig.add_subplot(1, 2, index + 1)
    for prefix, split in (('', 'train'), ('val_', 'val')):
      if prefix + metric in history:
        ax.plot(epochs, history[prefix + metric], 'o-', markersize=3,
                label=split)
    ax.set(xlabel='epoch', ylabel=metric, title=metric)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=8)
  save(fig, path)
  return True


def write_pictures(out_dir, results, predictions, history_csv=None):
  """Writes every picture of an evaluation into out_dir.

  Args:
    out_dir: an existing folder.
    results: `run.results_document`'s dict.
    predictions: {split: (targets [N, L], probs [N, L])}.
    history_csv: a run's history.csv, or None.

  Returns:
    {picture title: file name}, in the order results.md lists them.
  """
  by_label = label_predictions(results, predictions)
  labels = list(results['labels'])
  pictures = {}
  for title, name, panel in PICTURES:
    fig, axes = _grid(len(labels))
    for ax, label in zip(axes, labels):
      panel(ax, label, results['labels'][label], by_label[label],
            compact=len(labels) > 1)
      if len(labels) > 1:
        ax.tick_params(labelsize=6)
    save(fig, os.path.join(out_dir, name))
    pictures[title] = name
  if history_csv and os.path.exists(history_csv):
    if plot_training_curves(os.path.join(out_dir, TRAINING_CURVES),
                            history_csv):
      pictures['Training curves'] = TRAINING_CURVES
  if os.path.exists(os.path.join(out_dir, AUGMENTATION_PREVIEW)):
    pictures['Augmentation preview'] = AUGMENTATION_PREVIEW
  return pictures
