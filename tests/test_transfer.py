"""transfer: the trained-on x tested-on table, its markdown, JSON and heat
map, against the scores it was given."""

import json
import os

from PIL import Image

from xray_tfdata import transfer

S = transfer.Score


def _cells():
  # Two runs, two datasets; Support Devices only in the chexpert pair.
  return {
      ('nih_run', 'nih'): transfer.Cell(
          {'Effusion': S(0.91, (0.88, 0.94)),
           'Support Devices': S(reason='nih does not report it')},
          S(0.91, (0.88, 0.94))),
      ('nih_run', 'chexpert'): transfer.Cell(
          {'Effusion': S(0.71, (0.65, 0.77)),
           'Support Devices': S(reason='the model has no such output')},
          S(0.71, (0.65, 0.77))),
      ('chexpert_run', 'nih'): transfer.Cell(
          {'Effusion': S(0.74, (0.70, 0.78)),
           'Support Devices': S(reason='nih does not report it')},
          S(0.74, (0.70, 0.78))),
      ('chexpert_run', 'chexpert'): transfer.Cell(
          {'Effusion': S(0.93, (0.90, 0.95)),
           'Support Devices': S(0.88, (0.84, 0.92))},
          S(0.905, (0.88, 0.93))),
  }


def test_table_places_every_score(tmp_path):
  runs, datasets = ['nih_run', 'chexpert_run'], ['nih', 'chexpert']
  data = transfer.write_table(str(tmp_path), runs, datasets, _cells())
  with open(tmp_path / transfer.TRANSFER_JSON) as f:
    assert json.load(f) == data
  assert data['labels'] == ['Effusion', 'Support Devices']
  for (run, dataset), cell in _cells().items():
    for label, score in cell.labels.items():
      assert data['cells'][label][run][dataset] == score.to_json()
    assert data['cells']['macro'][run][dataset] == cell.macro.to_json()


def test_markdown_rows_are_runs_and_blanks_have_reasons(tmp_path):
  transfer.write_table(str(tmp_path), ['nih_run', 'chexpert_run'],
                       ['nih', 'chexpert'], _cells())
  text = (tmp_path / transfer.TRANSFER_MD).read_text()
  effusion = text.split('## Effusion')[1].split('##')[0]
  rows = [l for l in effusion.splitlines() if l.startswith('| ')]
  assert rows[0] == '| trained on \\ tested on | nih | chexpert |'
  assert rows[1] == '| nih_run | 0.910 (0.880–0.940) | 0.710 (0.650–0.770) |'
  assert rows[2] == ('| chexpert_run | 0.740 (0.700–0.780) | '
                     '0.930 (0.900–0.950) |')
  devices = text.split('## Support Devices')[1].split('##')[0]
  assert '| nih_run |  |  |' in devices
  assert 'nih_run on chexpert: the model has no such output' in devices


def test_heat_map_prints_the_numbers(tmp_path):
  data = transfer.table(['nih_run', 'chexpert_run'], ['nih', 'chexpert'],
                        _cells())
  path = str(tmp_path / 'map.png')
  printed = transfer.heat_map(data, path)
  # Three panels (Effusion, Support Devices, macro) side by side, each
  # max(3, 1.1 * 2 datasets + 1.8) = 4.0 by max(2.5, 0.6 * 2 runs + 1.4)
  # = 2.6 inches, at plots.DPI = 100: the size tight_layout keeps.
  with Image.open(path) as image:
    assert image.format == 'PNG'
    assert image.size == (1200, 260)
    image.load()  # decodes the whole file: a truncated PNG fails here
  expected = {}
  for (run, dataset), cell in _cells().items():
    for label, score in list(cell.labels.items()) + [('macro', cell.macro)]:
      if score.auc is not None:
        expected[(label, run, dataset)] = f'{score.auc:.3f}'
  assert printed == expected


def test_a_missing_pair_is_named(tmp_path):
  cells = _cells()
  del cells[('chexpert_run', 'nih')]
  data = transfer.table(['nih_run', 'chexpert_run'], ['nih', 'chexpert'],
                        cells)
  assert data['cells']['macro']['chexpert_run']['nih'] == {
      'auc': None, 'ci95': None, 'reason': 'not evaluated'}


def test_a_label_no_pair_scores_is_named_not_tabled(tmp_path):
  cells = _cells()
  cells[('nih_run', 'nih')] = transfer.Cell(
      {**cells[('nih_run', 'nih')].labels,
       'Hernia': S(reason='the model has no output for it')},
      cells[('nih_run', 'nih')].macro)
  data = transfer.write_table(str(tmp_path), ['nih_run', 'chexpert_run'],
                              ['nih', 'chexpert'], cells)
  assert data['labels'] == ['Effusion', 'Support Devices']
  assert data['unscored_labels'] == ['Hernia']
  text = (tmp_path / transfer.TRANSFER_MD).read_text()
  assert '## Hernia' not in text
  assert 'Not scored in any pair' in text and 'Hernia' in text
