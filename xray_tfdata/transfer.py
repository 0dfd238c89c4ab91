"""The transfer table: models trained on some datasets (rows), tested on
others (columns), per shared label and macro, with intervals.

  cells = {(run, data): transfer.Cell(...) for each pair}
  transfer.write_table(out_dir, runs, datasets, cells)
  -> transfer.md, transfer.json, transfer.png (a heat map per label and
     the macro, each cell's AUC printed in it)

The diagonal (a model on its own dataset's test split) against the rest
of its row is how far it carries over to another hospital (Cohen et al.,
MIDL 2020). A label a pair does not share is left blank, with the reason.

No TensorFlow, no Keras.
"""

import dataclasses
import json
import math
import os

from xray_tfdata import atomic

TRANSFER_MD = 'transfer.md'
TRANSFER_JSON = 'transfer.json'
TRANSFER_PNG = 'transfer.png'
MACRO = 'macro'


@dataclasses.dataclass(frozen=True)
class Score:
  """One AUC with its interval, or why there is none."""
  auc: float = None
  ci95: tuple = None
  reason: str = None  # set where auc is None

  def to_json(self):
    if self.auc is None:
      return {'auc': None, 'ci95': None, 'reason': self.reason}
    return {'auc': float(self.auc),
            'ci95': None if self.ci95 is None else [float(v) for v in
                                                   self.ci95],
            'reason': None}


@dataclasses.dataclass(frozen=True)
class Cell:
  """A model's scores on one dataset: {label: Score} in the vocabulary's
  names (labels the pair does not share included, with their reason) and
  the macro AUC over the labels it shares."""
  labels: dict
  macro: Score


def _label_order(cells):
  seen = []
  for cell in cells.values():
    for label in cell.labels:
      if label not in seen:
        seen.append(label)
  return seen


def table(runs, datasets, cells):
  """The table as JSON-ready data.

  Args:
    runs: the rows' names (trained on), in order.
    datasets: the columns' names (tested on), in order.
    cells: {(run, dataset): Cell}; a pair missing is reported missing.

  Returns:
    {'runs', 'datasets', 'labels': [...], 'cells': {label or 'macro':
    {run: {dataset: Score.to_json()}}}}.
  """
  labels = _label_order(cells)
  out = {'runs': list(runs), 'datasets': list(datasets),
         'labels': labels, 'cells': {}}
  for label in labels + [MACRO]:
    rows = {}
    for run in runs:
      row = {}
      for data in datasets:
        cell = cells.get((run, data))
        if cell is None:
          score = Score(reason='not evaluated')
        elif label == MACRO:
          score = cell.macro
        else:
          score = cell.labels.get(label, Score(
              reason='neither the model nor the dataset has it'))
        row[data] = score.to_json()
      rows[run] = row
    out['cells'][label] = rows
  return out


def _cell_text(entry):
  if entry['auc'] is None:
    return ''
  text = f"{entry['auc']:.3f}"
  if entry['ci95']:
    text += f" ({entry['ci95'][0]:.3f}–{entry['ci95'][1]:.3f})"
  return text


def markdown(data):
  """transfer.md: one table per label and the macro; blank cells' reasons
  listed under each table."""
  lines = ['# Transfer: trained on (rows) × tested on (columns)', '',
           'Test-split ROC AUC with its 95% patient-bootstrap interval. The '
           'diagonal is each model on its own dataset.', '']
  for label in data['labels'] + [MACRO]:
    rows = data['cells'][label]
    lines += [f'## {"macro AUC (labels each pair shares)" if label == MACRO else label}',
              '', '| trained on \\ tested on | ' + ' | '.join(
                  data['datasets']) + ' |',
              '|---|' + '---:|' * len(data['datasets'])]
    blanks = []
    for run in data['runs']:
      cells = []
      for dataset in data['datasets']:
        entry = rows[run][dataset]
        cells.append(_cell_text(entry))
        if entry['auc'] is None:
          blanks.append(f'{run} on {dataset}: {entry["reason"]}')
      lines.append(f'| {run} | ' + ' | '.join(cells) + ' |')
    if blanks:
      lines += ['', 'Blank: ' + '; '.join(blanks) + '.']
    lines.append('')
  return '\n'.join(lines)


def heat_map(data, path):
  """transfer.png: one panel per label and the macro, AUC in colour with
  its value printed in the cell; blank cells grey.

  Returns:
    The texts printed in the cells, {(label, run, dataset): text}.
  """
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  panels = data['labels'] + [MACRO]
  columns = min(3, len(panels))
  rows_of_panels = math.ceil(len(panels) / columns)
  runs, datasets = data['runs'], data['datasets']
  width = max(3.0, 1.1 * len(datasets) + 1.8)
  height = max(2.5, 0.6 * len(runs) + 1.4)
  fig = figure.Figure(figsize=(width * columns, height * rows_of_panels),
                      dpi=100)
  backend_agg.FigureCanvasAgg(fig)
  printed = {}
  for index, label in enumerate(panels):
    ax = fig.add_subplot(rows_of_panels, columns, index + 1)
    values = np.full((len(runs), len(datasets)), np.nan)
    for i, run in enumerate(runs):
      for j, dataset in enumerate(datasets):
        auc = data['cells'][label][run][dataset]['auc']
        if auc is not None:
          values[i, j] = auc
    cmap = _colour_map()
    ax.imshow(np.ma.masked_invalid(values), vmin=0.5, vmax=1.0, cmap=cmap)
    for i, run in enumerate(runs):
      for j, dataset in enumerate(datasets):
        if np.isnan(values[i, j]):
          continue
        text = f'{values[i, j]:.3f}'
        ax.text(j, i, text, ha='center', va='center', fontsize=9,
                color='white' if values[i, j] < 0.75 else 'black')
        printed[(label, run, dataset)] = text
    ax.set_xticks(range(len(datasets)), datasets, rotation=30, ha='right',
                  fontsize=8)
    ax.set_yticks(range(len(runs)), runs, fontsize=8)
    ax.set_title('macro AUC' if label == MACRO else label, fontsize=10)
    ax.set_xlabel('tested on', fontsize=8)
    ax.set_ylabel('trained on', fontsize=8)
  import io  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  fig.tight_layout()
  fig.savefig(buffer, format='png')
  atomic.write_bytes(path, buffer.getvalue())
  return printed


def _colour_map():
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  return colormaps['viridis'].with_extremes(bad='lightgrey')


def write_table(out_dir, runs, datasets, cells):
  """Writes transfer.json, transfer.md and transfer.png into out_dir.

  Returns:
    The table (`table`'s dict).
  """
  data = table(runs, datasets, cells)
  os.makedirs(out_dir, exist_ok=True)
  heat_map(data, os.path.join(out_dir, TRANSFER_PNG))
  atomic.write_text(os.path.join(out_dir, TRANSFER_MD), markdown(data))
  # Last: its presence marks the table complete.
  atomic.write_text(os.path.join(out_dir, TRANSFER_JSON),
                    json.dumps(data, indent=2))
  return data
