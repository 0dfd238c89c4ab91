"""Runs through the real tools: make_synthetic -> make_tfrecords -> train
-> evaluate -> predict, on a tiny tree of classes (Kermany's layout, L = 1)
and on a multi-label one (CheXpert's, L = 2 of 14), each stage checked
against the one before it; results.json of both in one layout. Plus the
trainer's bad-input lines and kill -9."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from conftest import assert_one_line_error
from processes import run_at_once


# Its sitecustomize hides the test extras from the tools (see there).
_USER_INSTALL = os.path.join(REPO_ROOT, 'tests', 'user_install')


def _tool_env():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  env['PYTHONPATH'] = os.pathsep.join(
      [_USER_INSTALL] + [p for p in (env.get('PYTHONPATH'),) if p])
  return env


def _tool_argv(name, *args):
  return [sys.executable, os.path.join(REPO_ROOT, 'tools', name), *args]


def run_tool(name, *args, timeout=600):
  return subprocess.run(
      _tool_argv(name, *args), capture_output=True, text=True,
      timeout=timeout, cwd=REPO_ROOT, env=_tool_env())


def run_tools(calls, timeout=600):
  """{key: (tool name, *args)} -> {key: CompletedProcess}, all run at once,
  each tool in its own process."""
  return run_at_once({key: (_tool_argv(*call), dict(cwd=REPO_ROOT,
                                                    env=_tool_env()))
                      for key, call in calls.items()}, timeout=timeout)


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


@pytest.fixture(scope='module')
def kermany_run(converted):
  """A run of the reference's flagfile (a variant that overrides a few
  values) on the tree of classes: (its folder, tools/train's process)."""
  root, _, data = converted
  model_dir = str(root / 'model')
  flagfile = root / 'tiny.flags'
  flagfile.write_text('\n'.join([
      f'--flagfile={os.path.join(REPO_ROOT, "configs", "kermany_vgg16.flags")}',
      f'--data_dir={data}', f'--model_dir={model_dir}',
      '--image_size=32', '--batch_size=8', '--epochs=2', '--weights=none',
      '--dense_units=16,8', '--bootstrap_resamples=200', '--verbose=2', '']))
  return model_dir, run_tool('train', f'--flagfile={flagfile}'), flagfile


@pytest.mark.slow
def test_tools_end_to_end(converted, kermany_run):
  root, src, data = converted
  model_dir, trained, flagfile = kermany_run
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert 'epoch 2:' in trained.stdout  # the per-epoch summary line
  assert ' - loss:' not in trained.stdout  # and not Keras' line as well
  assert '| test |' in trained.stdout  # the results table is printed
  # The phases after training, and what was written where, said last.
  assert 'evaluating the best epoch' in trained.stdout
  assert 'exporting model.keras and serving/' in trained.stdout
  assert trained.stdout.strip().splitlines()[-1].startswith(
      f'wrote {model_dir}: results.md')
  # No TensorFlow start-up lines (runtime.quiet_tensorflow_startup).
  assert not [l for l in trained.stderr.splitlines()
              if 'cuInit' in l or 'absl::InitializeLog' in l], trained.stderr
  with open(os.path.join(model_dir, 'results.json')) as f:
    results = json.load(f)
  with open(os.path.join(data, 'xray_info.json')) as f:
    info = json.load(f)
  assert results['label_names'] == ['PNEUMONIA']
  label = results['labels']['PNEUMONIA']
  for split in ('train', 'val', 'test'):
    # The reference's table: the 0.5 operating point of every split.
    m = label['splits'][split]['operating_points']['fixed_0.5']
    assert m['tp'] + m['fp'] + m['tn'] + m['fn'] == \
        info['splits'][split]['num_examples']
    assert label['splits'][split]['positives'] == (
        info['splits'][split]['class_counts']['PNEUMONIA'])
  config = results['config']
  assert config['shear_range'] == 0.2 and config['image_size'] == 32

  images = sorted(glob.glob(os.path.join(src, 'PNEUMONIA', '*.jpeg')))[:2]
  # None of these writes into the run: they run at once.
  runs = run_tools({
      'predicted': ('predict', f'--model_dir={model_dir}', *images),
      # A bad file among good ones: the good results, one line per bad file.
      'mixed': ('predict', f'--model_dir={model_dir}', images[0],
                str(root / 'missing.jpeg'), data),
      'again': ('train', f'--flagfile={flagfile}'),
  })
  predicted, mixed = runs['predicted'], runs['mixed']
  assert predicted.returncode == 0, predicted.stderr
  header, *lines = predicted.stdout.strip().splitlines()
  assert header.split('\t') == ['path', 'PNEUMONIA', 'PNEUMONIA_decision']
  assert [l.split('\t')[0] for l in lines] == images
  assert all(0.0 <= float(l.split('\t')[1]) <= 1.0 for l in lines)
  assert mixed.returncode == 1
  assert mixed.stdout.strip().splitlines() == [header, lines[0]]
  errors = [l for l in mixed.stderr.splitlines() if l.startswith('error:')]
  assert errors == [f'error: {root / "missing.jpeg"}: does not exist',
                    f'error: {data}: is a folder without image files '
                    '(.jpeg, .jpg, .png, ...)']

  assert_one_line_error(runs['again'], 'already holds a finished run',
                        '--overwrite')


# The other bad settings are checked in-process in test_training.py.
BAD_INPUT = [
    (['--data_dir=/nowhere/data', '--model_dir={tmp}/m'],
     ['/nowhere/data does not exist', 'make_tfrecords']),
    (['--data_dir={data}', '--model_dir={tmp}/m', '--no_such_flag'],
     ['no_such_flag']),
    (['--flagfile=/nowhere/x.flags'], ['/nowhere/x.flags']),
    # Before, both passed the checks, wrote config.json, then a Keras
    # traceback.
    (['--data_dir={data}', '--model_dir={tmp}/m', '--seed=-1'],
     ['--seed=-1', '0']),
    (['--data_dir={data}', '--model_dir={tmp}/m', '--seed=4294967296'],
     ['--seed=4294967296', '4294967295']),
]


def _three_classes(info):
  info['class_names'].append('COVID')
  for entry in info['splits'].values():
    entry['class_counts']['COVID'] = 0


def _empty_val(info):
  info['splits']['val'].update(
      num_examples=0, shards=[],
      class_counts={name: 0 for name in info['class_names']})


# Each edits a copy of the converted dataset's xray_info.json.
UNUSABLE = [
    # Before: trained the whole run as binary, then failed at evaluation.
    (_three_classes, ['has 3 classes', 'exactly two',
                      'multi-label training']),
    # Before: a traceback ("filenames must contain tf.string").
    (_empty_val, ["split 'val'", 'has no examples', 'make_tfrecords']),
    # Before: accepted, class weights printed under the wrong names.
    (lambda info: info['class_names'].reverse(),
     ['class names are swapped or edited', '--overwrite']),
]


@pytest.fixture(scope='module')
def refused(converted, tmp_path_factory):
  """Every tools/train run of BAD_INPUT and UNUSABLE, each with a folder of
  its own, started at once: each is a fresh process that refuses before it
  trains, so most of its time goes to importing, on one core.

  Returns:
    {('bad_input' or 'unusable', index): (CompletedProcess, its folder)}.
  """
  import shutil  # pylint: disable=g-import-not-at-top
  _, _, data = converted
  calls, folders = {}, {}
  for index, (args, _) in enumerate(BAD_INPUT):
    tmp = tmp_path_factory.mktemp('bad_input')
    folders['bad_input', index] = tmp
    calls['bad_input', index] = ('train', *[a.format(tmp=tmp, data=data)
                                            for a in args])
  for index, (edit, _) in enumerate(UNUSABLE):
    tmp = tmp_path_factory.mktemp('unusable')
    copy = str(tmp / 'data')
    shutil.copytree(data, copy)
    path = os.path.join(copy, 'xray_info.json')
    with open(path) as f:
      info = json.load(f)
    edit(info)
    with open(path, 'w') as f:
      json.dump(info, f)
    folders['unusable', index] = tmp
    calls['unusable', index] = (
        'train', f'--data_dir={copy}', f'--model_dir={tmp / "m"}',
        '--image_size=32', '--batch_size=8', '--weights=none')
  results = run_tools(calls)
  return {key: (results[key], folders[key]) for key in calls}


@pytest.mark.parametrize('index', range(len(BAD_INPUT)))
@pytest.mark.slow
def test_train_bad_input_is_one_line(refused, index):
  result, tmp = refused['bad_input', index]
  assert_one_line_error(result, *BAD_INPUT[index][1])
  assert not os.path.exists(tmp / 'm')  # no config.json, nothing


@pytest.mark.parametrize('index', range(len(UNUSABLE)))
@pytest.mark.slow
def test_train_refuses_an_unusable_dataset_in_one_line(refused, index):
  result, tmp = refused['unusable', index]
  assert_one_line_error(result, *UNUSABLE[index][1])
  assert not (tmp / 'm').exists()


# Reruns tools/train with a spy that, once the resume state is restored,
# dumps the model's weights and optimizer variables (argv: repo, dump prefix,
# the tool's flags).
RESTORE_SPY = """
import os, runpy, sys
import numpy as np
repo, dump = sys.argv[1], sys.argv[2]
sys.argv = [os.path.join(repo, 'tools', 'train')] + sys.argv[3:]
sys.path.insert(0, repo)
from xray_tfdata import runtime
runtime.configure_tensorflow_env()
from xray_tfdata import resume
begin = resume.ResumeCallback.on_train_begin
def spy(self, logs=None):
  begin(self, logs)
  self.net.save_weights(dump + '.weights.h5')
  np.savez(dump + '.npz', **{f'v{i}': np.asarray(v.numpy()) for i, v in
                             enumerate(self.net.optimizer.variables)})
resume.ResumeCallback.on_train_begin = spy
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def h5_datasets(path):
  """{name: array} of every dataset in an HDF5 file (a .weights.h5)."""
  import h5py  # pylint: disable=g-import-not-at-top
  arrays = {}
  with h5py.File(path, 'r') as f:
    f.visititems(lambda name, item: arrays.__setitem__(name, item[()])
                 if isinstance(item, h5py.Dataset) else None)
  return arrays


@pytest.mark.slow
def test_kill_9_then_rerun_resumes(converted, tmp_path):
  """A run killed with SIGKILL after its first saved epoch, started again
  with the same flags, continues from there and finishes: the rerun holds
  exactly the weights and optimizer state (iterations, Adam's moments) the
  killed run saved, and trains each remaining epoch once.

  Final weights are not compared with an uninterrupted run: the resumed
  input pipeline restarts its shuffle sequence (and the model.keras of
  either run holds the optimizer state of its best epoch, not its last)."""
  import shutil  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  root, _, data = converted
  model_dir = str(root / 'killed')
  # float32 pinned: 'auto' picks mixed_bfloat16 on CPUs with AVX512_BF16.
  # mini_vgg: resuming does not depend on the backbone, and its epochs are
  # a fraction of VGG16's.
  args = [f'--data_dir={data}', f'--model_dir={model_dir}', '--image_size=32',
          '--batch_size=8', '--epochs=4', '--backbone=mini_vgg',
          '--weights=none', '--dense_units=16,8', '--bootstrap_resamples=100',
          '--verbose=0', '--early_stopping_patience=4', '--policy=float32']
  backup = os.path.join(model_dir, 'backup')
  state_path = os.path.join(backup, 'state.json')
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
  # What the killed run left: the state of its last finished epoch.
  with open(state_path) as f:
    meta = json.load(f)
  saved = meta['epoch']
  snapshot = str(tmp_path / 'saved')
  shutil.copytree(backup, snapshot)

  dump = str(tmp_path / 'restored')
  spy = tmp_path / 'restore_spy.py'
  spy.write_text(RESTORE_SPY)
  resumed = subprocess.run(
      [sys.executable, str(spy), REPO_ROOT, dump, *args], capture_output=True,
      text=True, timeout=600, cwd=REPO_ROOT, env=env)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'resuming {model_dir} after epoch {saved}' in resumed.stdout

  with open(os.path.join(data, 'xray_info.json')) as f:
    steps = json.load(f)['splits']['train']['num_examples'] // 8
  want = np.load(os.path.join(snapshot, meta['optimizer']))
  got = np.load(dump + '.npz')
  assert sorted(got.files) == sorted(want.files)
  for key in want.files:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  assert int(got['v0']) == saved * steps  # the optimizer's iteration count
  want = h5_datasets(os.path.join(snapshot, meta['weights']))
  got = h5_datasets(dump + '.weights.h5')
  assert sorted(got) == sorted(want) and len(want) > 10
  for key, value in want.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)

  with open(os.path.join(model_dir, 'results.json')) as f:
    assert json.load(f)['training']['epochs_run'] == 4
  with open(os.path.join(model_dir, 'history.csv')) as f:
    epochs = [int(row.split(',')[0]) for row in f.read().split()[1:]]
  assert epochs == list(range(4))  # a list: no epoch trained twice


LAYOUTS = ('nih', 'chexpert', 'mimic')
# The tree's folder to convert: CheXpert's src_dir is the folder that holds
# train.csv (its Path column starts with that folder's own name).
_SRC_SUBDIR = {'nih': '', 'chexpert': 'CheXpert-v1.0-small', 'mimic': ''}
# Two labels the synthetic drawings show in the pixels, per layout.
_VISIBLE = {'nih': ('Effusion', 'Cardiomegaly'),
            'chexpert': ('Pleural Effusion', 'Cardiomegaly'),
            'mimic': ('Pleural Effusion', 'Cardiomegaly')}


@pytest.fixture(scope='module')
def multilabel_converted(tmp_path_factory):
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
def test_each_layout_converts_through_the_tool(multilabel_converted, layout):
  _, data = multilabel_converted[layout]
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


@pytest.fixture(scope='module')
def chexpert_run(multilabel_converted, tmp_path_factory):
  """A run on two of CheXpert's labels: (its folder, tools/train's
  process)."""
  _, data = multilabel_converted['chexpert']
  model_dir = str(tmp_path_factory.mktemp('chexpert_run') / 'run')
  # txv masks uncertain and blank codes: the harshest policy for the
  # per-label bookkeeping (a label may keep few known entries per split).
  trained = run_tool(
      'train', f'--data_dir={data}', f'--model_dir={model_dir}',
      '--backbone=mini_vgg', '--frozen_blocks=0', '--weights=none',
      '--image_size=32', '--batch_size=16', '--epochs=2',
      '--dense_units=16,8', '--bootstrap_resamples=100', '--policy=float32',
      '--label_policy=txv', f'--labels={",".join(_VISIBLE["chexpert"])}',
      '--verbose=2')
  return model_dir, trained


@pytest.mark.slow
def test_multilabel_tools_end_to_end(multilabel_converted, chexpert_run):
  tree, data = multilabel_converted['chexpert']
  info = _info(data)
  model_dir, trained = chexpert_run
  chosen = _VISIBLE['chexpert']
  assert trained.returncode == 0, trained.stderr[-3000:]
  with open(os.path.join(model_dir, 'config.json')) as f:
    config = json.load(f)
  assert tuple(config['label_names']) == chosen
  assert config['label_policy'] == 'txv'

  # tools/evaluate predicts the test split again from the saved model and
  # reads the targets from the records, while the run's table came from
  # training's own prediction pass: the same per-label AUCs and known
  # counts. Float32 pinned, so both passes give the same scores.
  evaluated = run_tool('evaluate', f'--model_dir={model_dir}',
                       f'--data_dir={data}', '--split=test',
                       '--bootstrap_resamples=100')
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  with open(os.path.join(model_dir, 'results.json')) as f:
    run_results = json.load(f)
  assert run_results['label_names'] == list(chosen)
  assert run_results['label_policy'] == 'txv'
  results_path, = glob.glob(
      os.path.join(model_dir, 'evaluation', '*-test', 'results.json'))
  with open(results_path) as f:
    scored = json.load(f)['labels']
  assert set(scored) == set(chosen)
  # txv, by hand from the records' codes (labels.py's docstring): a stored
  # 1 or 0 is known; where No Finding is 1, every other label but Support
  # Devices is a known 0 whatever its code.
  codes = _test_codes(data)
  names = list(info['label_names'])
  healthy = codes[:, names.index('No Finding')] == 1
  for name in chosen:
    test = scored[name]['splits']['test']
    run_test = run_results['labels'][name]['splits']['test']
    column = codes[:, names.index(name)]
    cleared = healthy if name not in ('No Finding', 'Support Devices') else (
        np.zeros_like(healthy))
    known = int((np.isin(column, (0, 1)) | cleared).sum())
    assert test['n'] == known == run_test['n']
    assert test['n'] == run_results['labels'][name]['known']['test']
    assert test['positives'] == int(((column == 1) & ~cleared).sum())
    run_auc = run_test['auc']['value']
    if run_auc is None or np.isnan(run_auc):  # one class among the known
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


# Levels whose keys are the data's, not the layout's: label names, and a
# split's subgroup fields and their values.
_DATA_KEYED = ('labels', 'matched', 'subgroups')


def key_paths(value, path=()):
  """Every key path of a results.json; '*' for the keys of _DATA_KEYED
  levels (their entries' paths merged), a subgroups dict a leaf."""
  if not isinstance(value, dict):
    return {path}
  if path and path[-1] == 'subgroups':
    return {path}
  paths = {path}
  for key, item in value.items():
    wild = bool(path) and path[-1] in _DATA_KEYED
    paths |= key_paths(item, path + ('*' if wild else key,))
  return paths


def results_of(run):
  model_dir, trained = run[:2]
  assert trained.returncode == 0, trained.stderr[-3000:]
  with open(os.path.join(model_dir, 'results.json')) as f:
    return json.load(f)


@pytest.mark.slow
@pytest.mark.parametrize('run', ['kermany_run', 'chexpert_run'])
def test_results_json_is_format_2(run, request):
  """Each run's results.json: format 2's keys, every label's entry whole
  (thresholds with the reference's 0.5 and Youden's, chosen on val; each
  split's metrics with 'value', 'ci' and 'reason')."""
  results = results_of(request.getfixturevalue(run))
  assert results['format'] == 2
  assert set(results) == {'format', 'label_names', 'label_policy', 'views',
                          'label_methods', 'config', 'data', 'bootstrap',
                          'labels', 'macro', 'localization', 'training'}
  assert list(results['labels']) == results['label_names']
  for entry in results['labels'].values():
    if not entry['thresholds']:
      continue  # a label whose val held one class: no operating point
    assert {'fixed_0.5', 'youden'} <= set(entry['thresholds'])
    assert entry['thresholds']['youden']['chosen_on'] == 'val'
    for split in entry['splits'].values():
      assert set(split['auc']) == {'value', 'ci', 'reason'}


@pytest.mark.slow
def test_results_json_of_both_runs_have_one_layout(kermany_run, chexpert_run):
  """results.json of the class run (L = 1) and the multi-label run (L = 2)
  have the same keys at every level, label names aside."""
  kermany = key_paths(results_of(kermany_run))
  chexpert = key_paths(results_of(chexpert_run))
  assert kermany == chexpert, (sorted(kermany - chexpert),
                               sorted(chexpert - kermany))
