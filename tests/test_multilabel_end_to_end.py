"""Multi-label runs through the real tools: make_synthetic
--layout=nih|chexpert|mimic -> make_tfrecords for each layout, then train ->
evaluate -> predict on one of them, checking what each stage wrote against
the one before it (the stored codes, the per-label results).

After conversion the three layouts are one record format read by one
reader, so the training chain runs once, on CheXpert: the layout whose
uncertain codes the label policy has to mask."""

import glob
import json
import os

import numpy as np
import pytest

from test_end_to_end import run_tool, run_tools

LAYOUTS = ('nih', 'chexpert', 'mimic')
# The tree's folder to convert: CheXpert's src_dir is the folder that holds
# train.csv (its Path column starts with that folder's own name).
_SRC_SUBDIR = {'nih': '', 'chexpert': 'CheXpert-v1.0-small', 'mimic': ''}
# Two labels the synthetic drawings show in the pixels, per layout.
_VISIBLE = {'nih': ('Effusion', 'Cardiomegaly'),
            'chexpert': ('Pleural Effusion', 'Cardiomegaly'),
            'mimic': ('Pleural Effusion', 'Cardiomegaly')}


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """{layout: (its synthetic tree, its converted dataset)}, the three
  layouts' tools run at once."""
  root = tmp_path_factory.mktemp('multilabel_e2e')
  paths = {layout: (str(root / layout / 'tree'), str(root / layout / 'data'))
           for layout in LAYOUTS}
  made = run_tools({layout: ('make_synthetic', f'--out_dir={tree}',
                             f'--layout={layout}', '--num_images=120',
                             '--seed=3')
                    for layout, (tree, _) in paths.items()})
  for layout, result in made.items():
    assert result.returncode == 0, (layout, result.stderr[-3000:])
  done = run_tools({
      layout: ('make_tfrecords',
               f'--src_dir={os.path.join(tree, _SRC_SUBDIR[layout])}',
               f'--out_dir={data}', '--image_size=32', '--num_shards=2',
               '--noprogress')
      for layout, (tree, data) in paths.items()})
  for layout, result in done.items():
    assert result.returncode == 0, (layout, result.stderr[-3000:])
  return paths


def _info(data):
  with open(os.path.join(data, 'xray_info.json')) as f:
    return json.load(f)


@pytest.mark.slow
@pytest.mark.parametrize('layout', LAYOUTS)
def test_each_layout_converts_through_the_tool(converted, layout):
  _, data = converted[layout]
  info = _info(data)
  assert info['patient_overlap']['patients_in_more_than_one_split'] == 0
  assert len(info['label_names']) == 14
  assert set(_VISIBLE[layout]) <= set(info['label_names'])
  for split in ('train', 'val', 'test'):
    entry = info['splits'][split]
    assert entry['num_examples'] > 0
    # Every image has one code per label.
    for name in info['label_names']:
      assert sum(entry['label_code_counts'][name].values()) == (
          entry['num_examples']), (split, name)


def _test_codes(data):
  """The raw codes [N, 14] of the test split's records, read with TFDS."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from xray_tfdata import schema  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(data)
  return np.array([e[schema.LABELS] for e in tfds.as_numpy(
      builder.as_dataset(split='test'))], np.int64)


@pytest.mark.slow
def test_multilabel_tools_end_to_end(converted, tmp_path):
  layout = 'chexpert'
  tree, data = converted[layout]
  info = _info(data)
  model_dir = str(tmp_path / 'run')
  chosen = _VISIBLE[layout]
  # txv masks uncertain and blank codes: the harshest policy for the
  # per-label bookkeeping (a label may keep few known entries per split).
  trained = run_tool(
      'train', f'--data_dir={data}', f'--model_dir={model_dir}',
      '--backbone=mini_vgg', '--frozen_blocks=0', '--weights=none',
      '--image_size=32', '--batch_size=16', '--epochs=2',
      '--dense_units=16,8', '--bootstrap_resamples=100', '--policy=float32',
      '--label_policy=txv', f'--labels={",".join(chosen)}', '--verbose=2')
  assert trained.returncode == 0, trained.stderr[-3000:]
  with open(os.path.join(model_dir, 'config.json')) as f:
    config = json.load(f)
  assert tuple(config['label_names']) == chosen
  assert config['label_policy'] == 'txv'

  # tools/evaluate predicts the test split again from the saved model and
  # reads the targets from the records itself (scoring), while the run's
  # table came from training's own prediction pass: the same per-label AUCs
  # and known counts. Float32 pinned, so both passes give the same scores.
  evaluated = run_tool('evaluate', f'--model_dir={model_dir}',
                       f'--data_dir={data}', '--split=test',
                       '--bootstrap_resamples=100')
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  with open(os.path.join(model_dir, 'results.json')) as f:
    run_results = json.load(f)
  results_path, = glob.glob(
      os.path.join(model_dir, 'evaluation', '*-test', 'results.json'))
  with open(results_path) as f:
    scored = json.load(f)['evaluation']['labels']
  assert set(scored) == set(chosen)
  # txv, by hand from the records' codes (labels.py's docstring): a stored
  # 1 or 0 is known; where No Finding is 1, every other label but Support
  # Devices is a known 0 whatever its code.
  codes = _test_codes(data)
  names = list(info['label_names'])
  healthy = codes[:, names.index('No Finding')] == 1
  for name in chosen:
    test = scored[name]['splits']['test']
    column = codes[:, names.index(name)]
    cleared = healthy if name not in ('No Finding', 'Support Devices') else (
        np.zeros_like(healthy))
    known = int((np.isin(column, (0, 1)) | cleared).sum())
    assert test['n'] == known == run_results['splits']['test']['known'][name]
    assert test['positives'] == int(((column == 1) & ~cleared).sum())
    run_auc = run_results['splits']['test']['auc'][name]
    if run_auc is None:  # one class among the known targets
      assert test['auc']['value'] is None or np.isnan(test['auc']['value'])
    else:
      assert test['auc']['value'] == pytest.approx(run_auc, abs=1e-6)
  # The exported model serves one probability and decision per label.
  image = sorted(glob.glob(os.path.join(tree, '**', '*.*g'),
                           recursive=True))[0]
  predicted = run_tool('predict', f'--model_dir={model_dir}', '--output=csv',
                       image)
  assert predicted.returncode == 0, predicted.stderr[-2000:]
  header, row = predicted.stdout.strip().splitlines()[-2:]
  assert len(header.split(',')) == len(row.split(',')) == 1 + 2 * len(chosen)
