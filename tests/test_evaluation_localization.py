"""Localization (evaluation.localization): the pointing game on given
heatmaps and boxes, on a model's Grad-CAM heatmaps upsampled to the stored
size, and through tools/evaluate on a dataset with boxes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from evaluation_data import SIZE
from evaluation_data import quarter_model
from evaluation_data import write_boxes_dataset
from evaluation_data import write_run
from xray_tfdata import evaluation
from xray_tfdata import pipeline
from xray_tfdata import run_dir
from xray_tfdata.evaluation import localization
from xray_tfdata.evaluation import markdown
from xray_tfdata.evaluation import run

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pointing_game_on_given_heatmaps():
  maps = np.zeros((4, 10, 12))
  maps[0, 2, 3] = 1.0   # inside box (x 2..5, y 1..4)
  maps[1, 8, 10] = 1.0  # outside that box, inside the second
  maps[2, 8, 10] = 1.0  # no second box: a miss
  boxes = [[(2, 1, 3, 3)], [(2, 1, 3, 3), (9, 7, 2, 2)], [(2, 1, 3, 3)],
           [(0, 0, 12, 10)]]
  hits, flat = evaluation.pointing_game(maps, boxes)
  assert hits.tolist() == [True, True, False, False]
  assert flat.tolist() == [False, False, False, True]  # map 3 is all zero
  # Pixel (row 2, column 5) has its centre at x 5.5: outside a box ending
  # at x 5.
  edge = np.zeros((1, 10, 12))
  edge[0, 2, 5] = 1
  assert not evaluation.pointing_game(edge, [[(2, 1, 3, 3)]])[0][0]
  interval = evaluation.hit_rate_interval(
      np.array([1, 1, 0, 0, 1, 0] * 5, bool), np.arange(30), 200)
  assert interval[0] < 0.5 < interval[1]


@pytest.mark.parametrize('outputs', [1, 4], ids=['L1', 'L4'])
def test_heatmaps_are_upsampled_to_the_stored_size_of_the_boxes(
    tmp_path, outputs):
  """Stored at twice the model's size: the boxes are in stored pixels, the
  heatmaps at the model's, upsampled before the peak is taken; the boxes
  as the run evaluator reads them from the records."""
  rsna = str(tmp_path / 'rsna-32')
  hits = write_boxes_dataset(rsna, scale=2)
  builder = pipeline.DatasetBuilder(rsna)
  labels = np.array([0, 1] * 12)
  boxes = run.stored_extras(builder, 'test')['boxes']
  assert [len(b) for b in boxes] == labels.tolist()
  ids = np.array([f'test-{i // 4}' for i in range(24)])
  positives = {'Effusion': (labels == 1, 0)}
  if outputs > 1:
    positives['Mass'] = (labels == 1, 3)
  found = localization.localize(quarter_model(outputs), builder, 'test',
                                positives, boxes, ids, SIZE, 8,
                                num_resamples=50)
  for label in positives:
    entry = found['labels'][label]
    assert (entry['n'], entry['hits']) == (hits.size, hits.sum())
    assert entry['patients'] == 6 and entry['no_box_positives'] == 0
    assert entry['flat_heatmaps'] == 0
  text = markdown.localization_lines(found)
  assert f'| Effusion | {hits.size} | 6 | {hits.sum()} | ' in '\n'.join(text)


@pytest.mark.slow  # starts tools/evaluate
def test_tool_reports_the_pointing_game_on_a_dataset_with_boxes(tmp_path):
  rsna = str(tmp_path / 'rsna')
  hits = write_boxes_dataset(rsna)
  model_dir = str(tmp_path / 'binary-run')
  # A binary run: one output, the heatmap peaks at the brightest pixel
  # (a 1x1 conv of positive weight feeding the logit).
  write_run(model_dir, quarter_model(1), rsna)
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'tools', 'evaluate'),
       f'--model_dir={model_dir}', f'--data_dir={rsna}',
       '--bootstrap_resamples=50', '--localization'],
      capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
      env={**os.environ, 'PYTHONPATH': REPO_ROOT})
  assert result.returncode == 0, result.stderr
  want = (f'localization (PNEUMONIA): pointing-game hit rate '
          f'{hits.mean():.3f}')
  assert want in result.stdout, result.stdout
  assert f'on {hits.size} positive images with boxes ({hits.sum()} hits, 6 ' \
         'patients)' in result.stdout
  saved = json.load(open(os.path.join(model_dir, 'evaluation', 'rsna-test',
                                      run_dir.RESULTS_JSON)))
  entry = saved['localization']['labels']['PNEUMONIA']
  assert entry['hits'] == hits.sum() and entry['flat_heatmaps'] == 0
  assert entry['ci'][0] <= hits.mean() <= entry['ci'][1]
  # RSNA's detailed class, read from the same records, is a subgroup.
  groups = saved['labels']['PNEUMONIA']['splits']['test']['subgroups']
  assert {k: v['n'] for k, v in groups['detailed_class'].items()} == {
      'Lung Opacity': 12, 'Normal': 12}
