"""The transfer table: models trained on some datasets (rows), tested on
others (columns), per shared label and macro, with intervals.

  cells = {(run, data): transfer.Cell(...) for each pair}
  transfer.write_table(out_dir, runs, datasets, cells)
  -> transfer.md, transfer.json, transfer.png (a heat map per label and
     the macro, each cell's AUC printed in it)

  transfer.evaluate_pairs(['runs/nih', 'runs/chexpert'],
                          ['data/nih_224', 'data/chexpert_224'], 'transfer')
  (tools/evaluate --model_dir=RUN1,RUN2 --data_dir=DIR1,DIR2 --out_dir=DIR):
  every pair through `evaluation.run.evaluate_run`, the one evaluator of a
  run on a dataset, each pair's results.json where tools/evaluate puts it,
  then the table of their test AUCs, labels in the vocabulary's names.

The diagonal (a model on its own dataset's test split) against the rest
of its row is how far it carries over to another hospital (Cohen et al.,
MIDL 2020). A label a pair does not share is left blank, with the reason.

The table itself takes no TensorFlow, no Keras (`evaluate_pairs` loads
the models).
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
    {'runs', 'datasets', 'labels': [the labels some pair scores],
    'unscored_labels': [those no pair scores], 'cells': {label or 'macro':
    {run: {dataset: Score.to_json()}}}}.
  """
  every = _label_order(cells)
  # A label no pair scores (one dataset's alone, no model outputs it)
  # would be a table of blanks: named once instead.
  labels = [label for label in every if any(
      cell.labels.get(label, Score()).auc is not None
      for cell in cells.values())]
  out = {'runs': list(runs), 'datasets': list(datasets),
         'labels': labels,
         'unscored_labels': [label for label in every if label not in labels],
         'cells': {}}
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
  if data.get('unscored_labels'):
    lines += ['Not scored in any pair (no model outputs them where a '
              'dataset reports them): '
              + ', '.join(data['unscored_labels']) + '.', '']
  return '\n'.join(lines)


def heat_map(data, path):
  """transfer.png: one panel per label and the macro, AUC in colour with
  its value printed in the cell; blank cells grey. Drawn and written
  (atomically) by the evaluation's picture helpers, `plots.figure` and
  `plots.save`.

  Args:
    data: `table`'s dict.
    path: the PNG to write.

  Returns:
    The texts printed in the cells, {(label, run, dataset): text}.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from xray_tfdata.evaluation import plots  # pylint: disable=g-import-not-at-top
  panels = data['labels'] + [MACRO]
  columns = min(3, len(panels))
  rows_of_panels = math.ceil(len(panels) / columns)
  runs, datasets = data['runs'], data['datasets']
  width = max(3.0, 1.1 * len(datasets) + 1.8)
  height = max(2.5, 0.6 * len(runs) + 1.4)
  fig = plots.figure(width * columns, height * rows_of_panels)
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
  plots.save(fig, path)
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


def _score(entry):
  """A Score from a results.json {'value', 'ci', 'reason'} entry."""
  value = entry.get('value')
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return Score(reason=entry.get('reason') or 'AUC undefined')
  return Score(value, tuple(entry['ci']) if entry.get('ci') else None)


def cell_of(results, model_layout, data_layout, data_name, split='test'):
  """One pair's Cell from its results.json (`evaluation.run.evaluate_run`).

  Args:
    results: the pair's results dict (format 2).
    model_layout: the layout the run's outputs are spelled in ('mixture'
      for a run on several datasets: vocabulary names).
    data_layout: the tested dataset's layout.
    data_name: the tested dataset's name in the table (for the reasons).
    split: the split scored.

  Returns:
    A Cell: every label of either side, in the vocabulary's names; a label
    only one side has holds the reason.
  """
  from xray_tfdata.evaluation.matching import vocabulary_key  # pylint: disable=g-import-not-at-top
  mapping = results['data']['label_mapping']
  labels = {}
  for name in results['label_names']:
    label = vocabulary_key(model_layout, name)
    if name not in mapping['matched']:
      labels[label] = Score(reason=f'{data_name} does not report it')
      continue
    entry = results['labels'][name]['splits'].get(split)
    labels[label] = (_score(entry['auc']) if entry else Score(
        reason=f'every {split} target masked in {data_name}'))
  for name in mapping['unmatched_data_labels']:
    labels.setdefault(vocabulary_key(data_layout, name),
                      Score(reason='the model has no output for it'))
  macro = results['macro'][split]
  return Cell(labels, _score({'value': macro['auc'],
                              'ci': macro.get('auc_ci'),
                              'reason': 'no shared label has an AUC'}))


def _names(paths):
  """Short names of folders: their base names, with the parent where two
  share one."""
  names = [os.path.basename(os.path.normpath(p)) for p in paths]
  if len(set(names)) < len(names):
    names = [os.path.join(*os.path.normpath(p).split(os.sep)[-2:])
             for p in paths]
  return names


def evaluate_pairs(model_dirs, data_dirs, out_dir, split='test',
                   progress=print, **evaluate_options):
  """Every run on every dataset, then the table.

  Args:
    model_dirs: finished tools/train runs (the rows).
    data_dirs: converted datasets (the columns).
    out_dir: where transfer.md, .json and .png go.
    split: the split scored.
    progress: called with a line per pair.
    **evaluate_options: `evaluation.run.evaluate_run`'s (num_resamples,
      batch_size, label_policy).

  Returns:
    The table (`table`'s dict).

  Raises:
    As `evaluation.run.evaluate_run`, before the table is written; a pair
    without a label in common is a blank row entry, not an error.
  """
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  from xray_tfdata import run_dir  # pylint: disable=g-import-not-at-top
  from xray_tfdata.evaluation import matching  # pylint: disable=g-import-not-at-top
  from xray_tfdata.evaluation import run as evaluation_run  # pylint: disable=g-import-not-at-top
  runs, datasets = _names(model_dirs), _names(data_dirs)
  layouts = {d: pipeline.load_info(d).layout for d in data_dirs}
  cells = {}
  for run_name, model_dir in zip(runs, model_dirs):
    layout = evaluation_run.run_layout(run_dir.read(model_dir))
    for data_name, data_dir in zip(datasets, data_dirs):
      progress(f'{run_name} on {data_name} ({split})')
      try:
        results = evaluation_run.evaluate_run(model_dir, data_dir,
                                              split=split,
                                              **evaluate_options)
      except matching.MatchingError as e:
        cells[(run_name, data_name)] = Cell({}, Score(
            reason=f'no label in common ({e})'))
        continue
      cells[(run_name, data_name)] = cell_of(
          results, layout, layouts[data_dir], data_name, split)
  return write_table(out_dir, runs, datasets, cells)
