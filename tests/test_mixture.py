"""mixture: several datasets read as one, in the vocabulary's label space.

Targets are checked against a recount from the codes written (records.py),
under the policy's table (labels.policy_table), mapped by hand.
"""

import json
import os

import keras
import numpy as np
import pytest

from records import write_dataset
from records import write_multilabel_dataset
from xray_tfdata import labels as labels_lib
from xray_tfdata import losses
from xray_tfdata import mixture
from xray_tfdata import schema
from xray_tfdata.dataset_info import DatasetError

P, N, U, M = (schema.POSITIVE, schema.NEGATIVE, schema.UNCERTAIN,
              schema.NOT_MENTIONED)
MASKED = labels_lib.MASKED


def _relayout(root, layout):
  path = os.path.join(root, schema.INFO_FILENAME)
  with open(path) as f:
    info = json.load(f)
  info['layout'] = layout
  with open(path, 'w') as f:
    json.dump(info, f)


def _rows(codes_by_split):
  return {split: [(codes, 'PA') for codes in rows]
          for split, rows in codes_by_split.items()}


# NIH spells it Effusion and has no Support Devices; CheXpert spells it
# Pleural Effusion; the PadChest-like source has two names for Atelectasis.
NIH_NAMES = ('Effusion', 'Atelectasis', 'Fibrosis')
CHEXPERT_NAMES = ('Pleural Effusion', 'Support Devices')
PADCHEST_NAMES = ('pleural effusion', 'atelectasis', 'laminar atelectasis',
                  'COPD signs')
NIH_CODES = {'train': [[P, N, N], [N, P, N], [N, N, P], [P, P, N]],
             'val': [[P, N, N], [N, N, N]], 'test': [[N, P, N], [P, N, N]]}
CHEXPERT_CODES = {'train': [[P, M], [U, P], [N, N]],
                  'val': [[N, P], [P, N]], 'test': [[M, P], [P, U]]}
PADCHEST_CODES = {'train': [[P, N, P, N], [N, N, N, P], [N, P, N, N],
                            [N, U, N, N], [N, N, N, N]],
                  'val': [[P, N, N, N], [N, N, P, N]],
                  'test': [[N, P, N, N], [P, N, N, P]]}


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
  root = tmp_path_factory.mktemp('mix')
  out = {}
  for name, layout, names, codes in (
      ('nih', 'nih', NIH_NAMES, NIH_CODES),
      ('chexpert', 'chexpert', CHEXPERT_NAMES, CHEXPERT_CODES),
      ('padchest', 'padchest', PADCHEST_NAMES, PADCHEST_CODES)):
    folder = str(root / name)
    os.makedirs(folder)
    write_multilabel_dataset(folder, list(names), _rows(codes))
    _relayout(folder, layout)
    out[name] = folder
  kermany = str(root / 'kermany')
  os.makedirs(kermany)
  written = write_dataset(kermany, {'train': (3, 4), 'val': (1, 2),
                                    'test': (2, 1)})
  _relayout(kermany, 'kaggle')
  out['kermany'] = kermany
  out['kermany_labels'] = {filename: label for split in written.values()
                           for _, label, filename in split}
  return out


def _expected(names, codes, mapping, union, policy='u_ones'):
  """The union targets of one source, by hand: each union label from the
  source's names the mapping gives it (any positive, all negative)."""
  table = labels_lib.policy_table(policy)
  targets = table[np.asarray(codes) - labels_lib.OFFSET]
  out = np.full((len(codes), len(union)), MASKED, np.float32)
  for j, label in enumerate(union):
    columns = [names.index(n) for n, v in mapping.items() if v == label]
    if not columns:
      continue
    picked = targets[:, columns]
    out[:, j] = np.where((picked == 1).any(1), 1.0,
                         np.where((picked == 0).all(1), 0.0, MASKED))
  return out


def test_union_in_vocabulary_order_and_unmapped_named(sources):
  mix = mixture.Mixture([sources['nih'], sources['chexpert'],
                         sources['padchest']])
  assert mix.label_names() == ('Atelectasis', 'Fibrosis', 'Effusion',
                             'Support Devices')
  assert mix.unmapped == {'padchest': ['COPD signs']}
  (line,) = mix.unmapped_lines()
  assert 'COPD signs' in line


@pytest.mark.parametrize('split', ['train', 'val', 'test'])
def test_each_sources_targets_equal_a_recount(sources, split):
  mix = mixture.Mixture([sources['nih'], sources['chexpert'],
                         sources['padchest']])
  union = mix.label_names()
  maps = {
      'nih': (NIH_NAMES, NIH_CODES, {'Effusion': 'Effusion',
                                     'Atelectasis': 'Atelectasis',
                                     'Fibrosis': 'Fibrosis'}),
      'chexpert': (CHEXPERT_NAMES, CHEXPERT_CODES,
                   {'Pleural Effusion': 'Effusion',
                    'Support Devices': 'Support Devices'}),
      'padchest': (PADCHEST_NAMES, PADCHEST_CODES,
                   {'pleural effusion': 'Effusion',
                    'atelectasis': 'Atelectasis',
                    'laminar atelectasis': 'Atelectasis'})}
  for index, source in enumerate(mix.sources):
    names, codes, mapping = maps[source.name]
    got = np.concatenate([t for _, t in mix.source_dataset(
        index, split, 8).as_numpy_iterator()])
    np.testing.assert_array_equal(
        got, _expected(list(names), codes[split], mapping, union),
        err_msg=source.name)


def test_a_label_absent_from_a_source_adds_nothing(sources):
  mix = mixture.Mixture([sources['nih'], sources['chexpert']])
  assert mix.label_names() == ('Atelectasis', 'Fibrosis', 'Effusion',
                             'Support Devices')
  counts = mix.target_counts('train')
  # Support Devices: CheXpert's train codes M, P, N under u_ones -> 0, 1, 0;
  # NIH's 4 rows do not report it and count as nothing (as negatives they
  # would make 6).
  assert counts['Support Devices'] == {'positive': 1, 'negative': 2}
  # Effusion from both: NIH P, N, N, P; CheXpert P, U(->1), N.
  assert counts['Effusion'] == {'positive': 4, 'negative': 3}
  assert counts['Fibrosis'] == {'positive': 1, 'negative': 3}
  # The loss and the metric: an NIH batch's Support Devices column is
  # masked, so no prediction for it changes either.
  (_, targets), = mix.source_dataset(0, 'train', 4).take(1).as_numpy_iterator()
  assert (targets[:, 3] == MASKED).all()
  rng = np.random.default_rng(0)
  probs = rng.uniform(0.05, 0.95, targets.shape).astype(np.float32)
  other = probs.copy()
  other[:, 3] = 1 - other[:, 3]
  loss = losses.MaskedBinaryCrossentropy()
  assert float(loss(targets, probs)) == float(loss(targets, other))
  for p in (probs, other):
    metric = losses.MaskedAUC(len(mix.label_names()))
    metric.update_state(targets, p)
  aucs = []
  for p in (probs, other):
    metric = losses.MaskedAUC(len(mix.label_names()))
    metric.update_state(targets, p)
    aucs.append(float(metric.result()))
  assert aucs[0] == aucs[1]


def test_several_names_of_one_label_are_counted_combined(sources):
  mix = mixture.Mixture([sources['nih'], sources['padchest']])
  counts = mix.target_counts('train')
  # PadChest Atelectasis = atelectasis OR laminar atelectasis: rows
  # (N,P) (N,N) (P,N) (U->1,N) (N,N) -> 1, 0, 1, 1, 0; NIH N, P, N, P.
  assert counts['Atelectasis'] == {'positive': 3 + 2, 'negative': 2 + 2}


def test_a_class_dataset_is_its_positive_class(sources, tmp_path):
  nih = str(tmp_path / 'nih')
  os.makedirs(nih)
  write_multilabel_dataset(nih, ['Effusion', 'Pneumonia'], _rows({
      'train': [[P, N], [N, P]], 'val': [[P, N]], 'test': [[N, P]]}))
  _relayout(nih, 'nih')
  mix = mixture.Mixture([sources['kermany'], nih])
  assert mix.label_names() == ('Effusion', 'Pneumonia')
  assert mix.sources[0].own_names == ('PNEUMONIA',)
  targets, names = [], []
  for _, t, meta in mix.source_dataset(0, 'train', 8, with_metadata=True
                                       ).as_numpy_iterator():
    targets.append(t)
    names += [f.decode() for f in meta['filename']]
  targets = np.concatenate(targets)
  # The class id written (PNEUMONIA = 1) is the Pneumonia target.
  np.testing.assert_array_equal(
      targets[:, 1], [sources['kermany_labels'][n] for n in names])
  assert (targets[:, 0] == MASKED).all()
  assert mix.target_counts('train') == {
      'Pneumonia': {'positive': 4 + 1, 'negative': 3 + 1},
      'Effusion': {'positive': 1, 'negative': 1}}


def test_one_pass_draws_every_example_once(sources):
  mix = mixture.Mixture([sources['nih'], sources['chexpert'],
                         sources['padchest']])
  seen = []
  for _, _, meta in mix.as_dataset('train', 3, training=False,
                                   with_metadata=True).as_numpy_iterator():
    seen += [p.decode() for p in meta['patient_id']]
  assert len(seen) == 4 + 3 + 5
  # Patients are kept apart by source: every id names its source.
  assert {s.split('/')[0] for s in seen} == {'nih', 'chexpert', 'padchest'}
  # Training without weights: each example once per pass, mixed.
  drawn = []
  for _, _, meta in mix.as_dataset('train', 1, training=True, seed=3,
                                   with_metadata=True).as_numpy_iterator():
    drawn += [f.decode() for f in meta['filename']]
  assert len(drawn) == 12


def test_weights_draw_by_weight_with_replacement(sources):
  mix = mixture.Mixture([sources['nih'], sources['chexpert']],
                        weights=[3, 1])
  ds = mix.as_dataset('train', 50, training=True, seed=0, repeat=True,
                      with_metadata=True)
  drawn = np.concatenate([m['source'] for _, _, m in
                          ds.take(8).as_numpy_iterator()])
  share = (drawn == 0).mean()
  # 400 draws at p = 0.75: SE 0.022; 4 SE either side.
  assert abs(share - 0.75) < 4 * np.sqrt(0.75 * 0.25 / drawn.size)


def test_weights_of_the_sizes_shares_read_as_no_weights(sources):
  # nih has 4 train examples, chexpert 3: weights 8:6 are their shares, so
  # a pass draws each example once and ends; 3:1 draws with replacement
  # and does not end.
  def pass_of(weights):
    mix = mixture.Mixture([sources['nih'], sources['chexpert']],
                          weights=weights)
    ds = mix.as_dataset('train', 1, training=True, seed=0,
                        with_metadata=True)
    return [(int(m['source'][0]), m['filename'][0].decode())
            for _, _, m in ds.take(20).as_numpy_iterator()]
  once = pass_of([8, 6])
  assert len(once) == len(set(once)) == 4 + 3
  assert len(pass_of([3, 1])) == 20


def test_bad_input_gets_one_line(sources, tmp_path):
  cases = [
      (lambda: mixture.Mixture([sources['nih']]), 'two or more'),
      (lambda: mixture.Mixture([sources['nih'], sources['nih']]),
       'named twice'),
      (lambda: mixture.Mixture([sources['nih'], sources['chexpert']],
                               labels=['Efusion']), 'Efusion'),
      (lambda: mixture.Mixture([sources['nih'], sources['chexpert']],
                               weights=[1, 2, 3]), '3 value'),
      (lambda: mixture.Mixture([sources['kermany'], sources['chexpert']]),
       'share no label'),
  ]
  for make, needle in cases:
    with pytest.raises(DatasetError, match=needle) as e:
      make()
    assert '\n' not in str(e.value)


def test_different_sizes_need_an_image_size(sources, tmp_path):
  big = str(tmp_path / 'big')
  os.makedirs(big)
  write_multilabel_dataset(big, ['Effusion'], _rows({
      'train': [[P], [N]], 'val': [[P]], 'test': [[N]]}), size=(16, 14))
  _relayout(big, 'nih')
  with pytest.raises(DatasetError, match='--image_size'):
    mixture.Mixture([big, sources['chexpert']])
  mix = mixture.Mixture([big, sources['chexpert']], image_size=8)
  images, _ = next(mix.as_dataset('val', 3).as_numpy_iterator())
  assert images.shape == (3, 8, 8, 1)
  images, _ = next(mix.as_dataset('val', 3, image_size=4).as_numpy_iterator())
  assert images.shape == (3, 4, 4, 1)


# tools/train and tools/evaluate across datasets: three small sources whose
# shared label (Effusion, under each one's spelling, first so that records.py
# draws its band in the same rows) is in the pixels.
ACROSS = (('nih', 'nih', ('Effusion', 'Atelectasis')),
          ('chexpert', 'chexpert', ('Pleural Effusion', 'Support Devices')),
          ('padchest', 'padchest', ('pleural effusion', 'COPD signs')))
ACROSS_COUNTS = {'train': 48, 'val': 24, 'test': 24}
TRAIN_ARGS = ('--image_size=16', '--batch_size=16', '--epochs=2',
              '--backbone=mini_vgg', '--weights=none', '--frozen_blocks=0',
              '--dense_units=16,8', '--bootstrap_resamples=100',
              '--policy=float32', '--learning_rate=3e-3',
              '--early_stopping_patience=2', '--verbose=2')


def _tool(name, *args, **kwargs):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import REPO_ROOT  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  argv = [sys.executable, os.path.join(REPO_ROOT, 'tools', name), *args]
  if kwargs.pop('background', False):
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=REPO_ROOT, env=env)
  return subprocess.run(argv, capture_output=True, text=True, timeout=600,
                        cwd=REPO_ROOT, env=env, **kwargs)


@pytest.fixture(scope='module')
def across(tmp_path_factory):
  """{source name: data_dir} of three learnable sources, and a tools/train
  run on all three killed with SIGKILL after its first saved epoch, then
  rerun to the end: (dirs, model_dir, the rerun's CompletedProcess)."""
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('across')
  rng = np.random.default_rng(0)
  dirs = {}
  for seed, (name, layout, names) in enumerate(ACROSS):
    rows = {split: [([rng.choice([P, N]), rng.choice([P, N])], 'PA')
                    for _ in range(n)] for split, n in ACROSS_COUNTS.items()}
    folder = str(root / name)
    os.makedirs(folder)
    write_multilabel_dataset(folder, list(names), rows, size=(16, 16),
                             learnable=True, seed=seed)
    _relayout(folder, layout)
    dirs[name] = folder
  model_dir = str(root / 'all')
  args = (f'--data_dir={",".join(dirs.values())}', f'--model_dir={model_dir}',
          *TRAIN_ARGS)
  process = _tool('train', *args, background=True)
  state_path = os.path.join(model_dir, 'backup', 'state.json')
  saved, deadline = 0, time.time() + 300
  while time.time() < deadline and process.poll() is None and not saved:
    try:
      with open(state_path) as f:
        saved = json.load(f)['epoch']
    except (OSError, ValueError, KeyError):
      pass  # not yet, or caught mid-rename
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert saved >= 1, 'the run ended or timed out before saving an epoch'
  assert not os.path.exists(os.path.join(model_dir, 'results.json'))
  rerun = _tool('train', *args)
  return dirs, model_dir, rerun, saved


@pytest.mark.slow
def test_train_across_datasets_resumes_and_scores_each_source(across):
  dirs, model_dir, rerun, saved = across
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  with open(os.path.join(model_dir, 'config.json')) as f:
    config = json.load(f)
  assert f'resuming {model_dir} after epoch {saved}' in rerun.stdout
  # The union's labels in the vocabulary's order (PadChest's 'COPD signs'
  # is outside the vocabulary: named in one line, not an output), each
  # source's policy and layout recorded.
  assert config['label_names'] == ['Atelectasis', 'Effusion',
                                   'Support Devices']
  assert 'outside the vocabulary' in rerun.stdout
  assert [s['layout'] for s in config['dataset']['sources']] == [
      'nih', 'chexpert', 'padchest']
  assert {s['label_policy'] for s in config['dataset']['sources']} == {
      'u_ones'}
  with open(os.path.join(model_dir, 'results.json')) as f:
    results = json.load(f)
  by_source = results['sources']['by_source']
  assert list(by_source) == list(dirs)
  for name, entry in by_source.items():
    # Every source reports Effusion; a label it does not report is not
    # scored there.
    effusion = entry['labels']['Effusion']['splits']['test']['auc']['value']
    assert effusion > 0.8, (name, effusion)
    reported = {'nih': {'Effusion', 'Atelectasis'},
                'chexpert': {'Effusion', 'Support Devices'},
                'padchest': {'Effusion'}}[name]
    assert set(entry['labels']) == reported
  over = results['sources']['macro_over_sources']['test']
  assert over['auc'] == pytest.approx(np.mean(
      [e['macro']['test']['auc'] for e in by_source.values()]))
  with open(os.path.join(model_dir, 'results.md')) as f:
    assert '## AUC per source' in f.read()


@pytest.mark.slow
def test_transfer_table_equals_tools_evaluate_pair_by_pair(across, tmp_path):
  """tools/evaluate --model_dir=RUN --data_dir=DIR1,DIR2,DIR3 writes the
  table; each cell's AUC is tools/evaluate's on that pair alone."""
  from xray_tfdata import transfer  # pylint: disable=g-import-not-at-top
  from xray_tfdata.evaluation import run as evaluation_run  # pylint: disable=g-import-not-at-top
  dirs, model_dir, rerun, _ = across
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  out = str(tmp_path / 'transfer')
  made = _tool('evaluate', f'--model_dir={model_dir}',
               f'--data_dir={",".join(dirs.values())}', f'--out_dir={out}')
  assert made.returncode == 0, made.stderr[-3000:]
  with open(os.path.join(out, transfer.TRANSFER_JSON)) as f:
    table = json.load(f)
  assert os.path.getsize(os.path.join(out, transfer.TRANSFER_PNG)) > 0
  row = os.path.basename(model_dir)
  for name, data_dir in dirs.items():
    alone = evaluation_run.evaluate_run(model_dir, data_dir, split='test',
                                        out_dir=str(tmp_path / name))
    auc = alone['labels']['Effusion']['splits']['test']['auc']['value']
    assert table['cells']['Effusion'][row][name]['auc'] == pytest.approx(
        auc, abs=1e-6)
    assert table['cells']['macro'][row][name]['auc'] == pytest.approx(
        alone['macro']['test']['auc'], abs=1e-6)
  # A label a dataset does not report: blank, with the reason.
  nih_devices = table['cells']['Support Devices'][row]['nih']
  assert nih_devices['auc'] is None
  assert nih_devices['reason'] == 'nih does not report it'


@pytest.mark.slow
def test_train_across_datasets_bad_input_writes_nothing(across, tmp_path):
  from conftest import assert_one_line_error  # pylint: disable=g-import-not-at-top
  dirs, _, _, _ = across
  both = ','.join(list(dirs.values())[:2])
  model_dir = str(tmp_path / 'run')
  small = str(tmp_path / 'small')
  os.makedirs(small)
  write_multilabel_dataset(small, ['Effusion'], _rows({
      'train': [[P], [N]], 'val': [[P]], 'test': [[N]]}), size=(12, 12))
  _relayout(small, 'nih')
  sizes = [a for a in TRAIN_ARGS if not a.startswith('--image_size')]
  result = _tool('train', f'--data_dir={dirs["chexpert"]},{small}',
                 f'--model_dir={model_dir}', *sizes)
  assert_one_line_error(result, 'stored at different sizes',
                        '--image_size')
  assert not os.path.exists(model_dir)
  for args, needles in (
      ((f'--data_dir={both}', '--labels=Pleural Effusion'),
       ("'Pleural Effusion' not in the label vocabulary",)),
      ((f'--data_dir={both}', '--dataset_weights=1,2,3'),
       ('--dataset_weights has 3 value(s) for 2 datasets',))):
    result = _tool('train', *args, f'--model_dir={model_dir}', *TRAIN_ARGS)
    assert_one_line_error(result, *needles)
    assert not os.path.exists(model_dir)
