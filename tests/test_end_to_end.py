"""One run through the real tools: make_synthetic -> make_tfrecords -> train
-> predict, on a tiny synthetic tree, plus the trainer's bad-input lines."""

import glob
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from conftest import assert_one_line_error


def run_tool(name, *args, timeout=600):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'tools', name), *args],
      capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, env=env)


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp('e2e')
  src, data = str(root / 'jpeg'), str(root / 'data')
  made = run_tool('make_synthetic', f'--out_dir={src}', '--num_images=60',
                  '--layout=pool', '--size_scale=0.05', '--seed=1')
  assert made.returncode == 0, made.stderr
  converted = run_tool(
      'make_tfrecords', f'--src_dir={src}', f'--out_dir={data}',
      '--image_size=32', '--resplit', '--val_counts=NORMAL:3,PNEUMONIA:6',
      '--test_counts=NORMAL:3,PNEUMONIA:6', '--num_shards=2', '--noprogress')
  assert converted.returncode == 0, converted.stderr
  return root, src, data


def test_tools_end_to_end(converted):
  root, src, data = converted
  model_dir = str(root / 'model')
  flagfile = root / 'tiny.flags'
  # A variant that nests the seed's flagfile and overrides a few values.
  flagfile.write_text('\n'.join([
      f'--flagfile={os.path.join(REPO_ROOT, "configs", "kermany_vgg16.flags")}',
      f'--data_dir={data}', f'--model_dir={model_dir}',
      '--image_size=32', '--batch_size=8', '--epochs=2', '--weights=none',
      '--dense_units=16,8', '--bootstrap_resamples=200', '--verbose=2', '']))
  trained = run_tool('train', f'--flagfile={flagfile}')
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert 'epoch 2:' in trained.stdout  # the per-epoch summary line
  assert '| test |' in trained.stdout  # the results table is printed
  with open(os.path.join(model_dir, 'results.json')) as f:
    results = json.load(f)
  with open(os.path.join(data, 'dataset_info.json')) as f:
    info = json.load(f)
  for split in ('train', 'val', 'test'):
    m = results['splits'][split]
    assert m['tp'] + m['fp'] + m['tn'] + m['fn'] == \
        info['splits'][split]['num_examples']
  config = results['training']['config']
  assert config['shear_range'] == 0.2 and config['image_size'] == 32

  images = sorted(glob.glob(os.path.join(src, 'PNEUMONIA', '*.jpeg')))[:2]
  predicted = run_tool('predict', f'--model_dir={model_dir}', *images)
  assert predicted.returncode == 0, predicted.stderr
  lines = predicted.stdout.strip().splitlines()
  assert [l.split('\t')[0] for l in lines] == images
  assert all(0.0 <= float(l.split('\t')[1]) <= 1.0 for l in lines)

  again = run_tool('train', f'--flagfile={flagfile}')
  assert_one_line_error(again, 'already holds a finished run', '--overwrite')


# The other bad settings are checked in-process in test_training.py.
@pytest.mark.parametrize('args, needles', [
    (['--data_dir=/nowhere/data', '--model_dir={tmp}/m'],
     ['/nowhere/data does not exist', 'make_tfrecords']),
    (['--data_dir={data}', '--model_dir={tmp}/m', '--no_such_flag'],
     ['no_such_flag']),
    (['--flagfile=/nowhere/x.flags'], ['/nowhere/x.flags']),
])
def test_train_bad_input_is_one_line(converted, tmp_path, args, needles):
  _, _, data = converted
  args = [a.format(tmp=tmp_path, data=data) for a in args]
  result = run_tool('train', *args)
  assert_one_line_error(result, *needles)
  assert not os.path.exists(tmp_path / 'm' / 'results.json')


def test_kill_9_then_rerun_resumes(converted):
  """A run killed with SIGKILL after its first saved epoch, started again
  with the same flags, continues from there and finishes."""
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  root, _, data = converted
  model_dir = str(root / 'killed')
  args = [f'--data_dir={data}', f'--model_dir={model_dir}', '--image_size=32',
          '--batch_size=8', '--epochs=6', '--weights=none',
          '--dense_units=16,8', '--bootstrap_resamples=100', '--verbose=0',
          '--early_stopping_patience=6']
  state_path = os.path.join(model_dir, 'backup', 'state.json')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  process = subprocess.Popen(
      [sys.executable, os.path.join(REPO_ROOT, 'tools', 'train'), *args],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO_ROOT,
      env=env)
  deadline = time.time() + 300
  saved = 0
  while time.time() < deadline and process.poll() is None:
    if os.path.exists(state_path):
      try:
        with open(state_path) as f:
          saved = json.load(f)['epoch']
      except ValueError:
        saved = 0  # caught mid-rename; try again
      if saved >= 1:
        break
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert saved >= 1, 'the run ended or timed out before saving an epoch'
  assert not os.path.exists(os.path.join(model_dir, 'results.json'))

  resumed = run_tool('train', *args)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resuming' in resumed.stdout
  first = int(resumed.stdout.split('resuming', 1)[1].split('after epoch')[1]
              .split()[0])
  assert first >= saved
  with open(os.path.join(model_dir, 'results.json')) as f:
    assert json.load(f)['training']['epochs_run'] == 6
  with open(os.path.join(model_dir, 'history.csv')) as f:
    epochs = {int(row.split(',')[0]) for row in f.read().split()[1:]}
  assert epochs == set(range(6))
