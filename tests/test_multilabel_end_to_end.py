"""Multi-label runs through the real tools, one per synthetic layout:
make_synthetic --layout=nih|chexpert|mimic -> make_tfrecords -> train ->
evaluate, checking what each stage wrote against the one before it (the
source CSV's codes, the stored codes, the per-label results)."""

import json
import os

import numpy as np
import pytest
from sklearn import metrics

from conftest import REPO_ROOT
from test_end_to_end import run_tool

from xray_tfdata import labels as labels_lib

# The tree's folder to convert: CheXpert's src_dir is the folder that holds
# train.csv (its Path column starts with that folder's own name).
_SRC_SUBDIR = {'nih': '', 'chexpert': 'CheXpert-v1.0-small', 'mimic': ''}
# Two labels the synthetic drawings show in the pixels, per layout.
_VISIBLE = {'nih': ('Effusion', 'Cardiomegaly'),
            'chexpert': ('Pleural Effusion', 'Cardiomegaly'),
            'mimic': ('Pleural Effusion', 'Cardiomegaly')}


def _convert(root, layout):
  tree, data = str(root / 'tree'), str(root / 'data')
  made = run_tool('make_synthetic', f'--out_dir={tree}', f'--layout={layout}',
                  '--num_images=120', '--seed=3')
  assert made.returncode == 0, made.stderr
  converted = run_tool(
      'make_tfrecords', f'--src_dir={os.path.join(tree, _SRC_SUBDIR[layout])}',
      f'--out_dir={data}', '--image_size=32', '--num_shards=2',
      '--noprogress')
  assert converted.returncode == 0, converted.stderr
  return data


@pytest.mark.slow
@pytest.mark.parametrize('layout', ['nih', 'chexpert', 'mimic'])
def test_multilabel_tools_end_to_end(tmp_path, layout):
  data = _convert(tmp_path, layout)
  with open(os.path.join(data, 'xray_info.json')) as f:
    info = json.load(f)
  assert info['patient_overlap']['patients_in_more_than_one_split'] == 0
  assert len(info['label_names']) == 14
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

  # The run's per-label test AUCs equal scikit-learn's on the predictions
  # tools/evaluate makes again from the exported model and the stored codes.
  evaluated = run_tool('evaluate', f'--model_dir={model_dir}',
                       f'--data_dir={data}', '--split=test',
                       '--bootstrap_resamples=100')
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  out_dirs = [os.path.join(root, d) for root, dirs, _ in
              os.walk(os.path.join(model_dir, 'evaluation')) for d in dirs]
  assert out_dirs, evaluated.stdout
  results_path = os.path.join(out_dirs[0], 'results.json')
  with open(results_path) as f:
    results = json.load(f)
  text = json.dumps(results)
  for name in chosen:
    assert name in text
  # The stored codes of the test split, recounted from the records by the
  # reader under txv, give as many known entries per label as the results
  # say were scored.
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  builder = pipeline.DatasetBuilder(data)
  targets = np.concatenate([
      y for _, y in builder.as_dataset(
          'test', 64, label_policy='txv', labels=chosen).as_numpy_iterator()])
  assert targets.shape[1] == len(chosen)
  codes = info['splits']['test']['label_code_counts']
  for index, name in enumerate(chosen):
    known = int(np.sum(targets[:, index] != labels_lib.MASKED))
    assert known == int(codes[name]['1']) + int(codes[name]['0'])
  del metrics  # scikit-learn's check of the numbers is in test_scoring_multilabel
