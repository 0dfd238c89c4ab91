"""tools/make_tfrecords and tools/make_synthetic, run as a user runs them."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from xray_tfdata import dataset_info
from xray_tfdata import schema
from xray_tfdata.synthetic import kermany as synthetic
from xray_tfdata import writer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGFILE = os.path.join(REPO, 'configs', 'kermany_tfrecords.flags')


def _run(tool, *args, timeout=120):
  return subprocess.run(
      [sys.executable, os.path.join('tools', tool), *args], cwd=REPO,
      capture_output=True, text=True, timeout=timeout, check=False)


def _assert_user_error(result, words):
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
  assert words in lines[0]


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('tool') / 'chest_xray')
  synthetic.make_synthetic_kermany(root, num_images=40, size_scale=0.03,
                                   num_workers=1)
  return root


@pytest.mark.slow
def test_converts_with_the_reference_flagfile_and_overrides(tree, tmp_path):
  out = str(tmp_path / 'data')
  result = _run('make_tfrecords', f'--flagfile={FLAGFILE}',
                f'--src_dir={tree}', f'--out_dir={out}',
                '--val_counts=NORMAL:2,PNEUMONIA:4',
                '--test_counts=NORMAL:2,PNEUMONIA:5', '--image_size=8',
                '--num_shards=2', '--num_workers=2')
  assert result.returncode == 0, result.stderr
  assert 'scanned 40 = written 38 + skipped 0 + duplicates 2' in result.stdout
  info = dataset_info.load_info(out).raw
  assert info['arguments']['resplit'] is True  # from the flagfile
  assert info['image']['height'] == 8  # later flags win
  assert {s: v['num_examples'] for s, v in info['splits'].items()} == {
      'train': 25, 'val': 6, 'test': 7}
  assert all(len(v['shards']) == 2 for v in info['splits'].values())
  # A second run must not replace it without --overwrite (the library tests
  # cover replacing).
  again = _run('make_tfrecords', f'--src_dir={tree}', f'--out_dir={out}')
  _assert_user_error(again, 'already holds a dataset; pass --overwrite')
  assert dataset_info.load_info(out).raw == info


def _populate(kind, root, tree):
  if kind == 'empty':
    os.makedirs(root)
  elif kind == 'files only':
    os.makedirs(root)
    with open(os.path.join(root, 'a.jpeg'), 'wb') as f:
      f.write(b'x')
  elif kind == 'one class':
    os.makedirs(os.path.join(root, 'NORMAL'))
    with open(os.path.join(root, 'NORMAL', 'a.jpeg'), 'wb') as f:
      f.write(b'x')
  elif kind == 'class without images':
    for name in ('NORMAL', 'PNEUMONIA'):
      os.makedirs(os.path.join(root, name))
    with open(os.path.join(root, 'NORMAL', 'a.jpeg'), 'wb') as f:
      f.write(b'x')
  elif kind == 'tree':
    os.symlink(tree, root)
  elif kind == 'own':
    _own_tree(root, ('NORMAL', 'PNEUMONIA'))
    folder = os.path.dirname(root)
    with open(os.path.join(folder, 'columns.csv'), 'w') as f:
      f.write('path,patient\nNORMAL/p000_0.png,1\n')
    with open(os.path.join(folder, 'partial.csv'), 'w') as f:
      f.write('path,patient_id\nNORMAL/p000_0.png,1\n')


def _own_tree(root, folders, patients=range(12), images=2):
  """A user's own names (p<patient>_<k>.png, which Kermany's patterns do
  not parse) in `folders` ('CLASS' or 'split/CLASS'); even patients are in
  the first class, odd ones in the second."""
  rng = np.random.default_rng(0)
  for i in patients:
    folder = folders[i % 2]
    os.makedirs(os.path.join(root, folder), exist_ok=True)
    for k in range(images):
      Image.fromarray(rng.integers(0, 256, (10, 12), np.uint8)).save(
          os.path.join(root, folder, f'p{i:03d}_{k}.png'))


@pytest.mark.parametrize('kind, extra, words', [
    ('missing', [], 'does not exist'),
    ('empty', [], 'has no folders'),
    ('files only', [], 'has no folders'),
    ('one class', [], 'class folder(s)'),
    ('class without images', [], 'has no images'),
    ('tree', ['--out_dir={src}/tfrecords'], 'inside src_dir'),
    ('tree', ['--resplit'], 'needs val counts'),
    ('tree', ['--resplit', '--val_counts=NORMAL=3',
              '--test_counts=NORMAL:1,PNEUMONIA:1'], 'cannot parse'),
    ('tree', [f'--flagfile={FLAGFILE}'], 'leave none for training'),
    ('tree', ['--val_counts=NORMAL:1,PNEUMONIA:1'], 'add --resplit'),
    ('own', ['--resplit', '--val_fraction=0.2', '--test_fraction=0.2',
             '--patient_id_regex=^p(\\d+'], 'is not a regular expression'),
    ('own', ['--resplit', '--val_fraction=0.2', '--test_fraction=0.2',
             '--patient_id_regex=^q(\\d+)_'],
     'does not match NORMAL/p000_0.png and 23 other file(s)'),
    ('own', ['--resplit', '--val_fraction=0.2', '--test_fraction=0.2',
             '--patient_csv={src}/../columns.csv'],
     "has no column 'patient_id'"),
    ('own', ['--resplit', '--val_fraction=0.2', '--test_fraction=0.2',
             '--patient_csv={src}/../partial.csv'],
     'has no row for NORMAL/p000_1.png and 22 other file(s)'),
])
@pytest.mark.slow
def test_bad_input_is_one_line(tree, tmp_path, kind, extra, words):
  src = str(tmp_path / 'src')
  _populate(kind, src, tree)
  args = [f'--src_dir={src}', f'--out_dir={tmp_path / "out"}']
  result = _run('make_tfrecords', *args, *[e.format(src=src) for e in extra])
  _assert_user_error(result, words)
  assert not os.path.exists(tmp_path / 'out')


@pytest.mark.slow
def test_keep_test_with_own_patient_names(tmp_path):
  src = str(tmp_path / 'My X-rays (2024)')
  _own_tree(src, ('train/NORMAL', 'train/PNEUMONIA'), range(0, 20))
  _own_tree(src, ('test/NORMAL', 'test/PNEUMONIA'), range(20, 26))
  # The same name in both class folders: two patients by default, one here.
  Image.new('L', (12, 10), 7).save(os.path.join(src, 'train/PNEUMONIA',
                                                'p000_9.png'))
  # Patient 21 of test/ is also in train/: left out of train.
  Image.new('L', (12, 10), 9).save(os.path.join(src, 'train/PNEUMONIA',
                                                'p021_9.png'))
  with open(os.path.join(src, 'train/NORMAL/p002_9.png'), 'wb') as f:
    f.write(b'not a png')  # drawn or not, counted as skipped
  out = str(tmp_path / 'data')
  result = _run('make_tfrecords', f'--src_dir={src}', f'--out_dir={out}',
                '--keep_test', '--val_fraction=0.25',
                r'--patient_id_regex=^p(\d+)_', '--image_size=8',
                '--num_shards=2', '--num_workers=1', '--progress=false')
  assert result.returncode == 0, result.stderr
  info = dataset_info.load_info(out).raw
  assert info['name'] == 'my_x_rays_2024'
  assert info['arguments']['keep_test'] is True
  records = {}
  for split, entry in info['splits'].items():
    records[split] = []
    for shard in entry['shards']:
      assert shard['filename'].startswith(f'my_x_rays_2024-{split}.')
      for raw in tf.data.TFRecordDataset(os.path.join(out, shard['filename'])):
        example = schema.parse(raw)
        records[split].append((example[schema.FILENAME].numpy().decode(),
                               example[schema.PATIENT_ID].numpy().decode(),
                               example[schema.CLASS_TEXT].numpy().decode()))
  # test/ as it is; val and train from train/ only.
  assert sorted(name for name, _, _ in records['test']) == sorted(
      f'test/{c}/{n}' for c in ('NORMAL', 'PNEUMONIA')
      for n in os.listdir(os.path.join(src, 'test', c)))
  assert all(name.startswith('train/') for s in ('train', 'val')
             for name, _, _ in records[s])
  split_of = {}
  for split, rows in records.items():
    for name, patient, _ in rows:
      assert patient == os.path.basename(name)[1:4]
      assert split_of.setdefault(patient, split) == split, patient
  assert 'train/PNEUMONIA/p021_9.png' in {s['path'] for s in info['skipped']}
  # split_counts: what the shards hold.
  for split, rows in records.items():
    held = {c: sum(1 for _, _, k in rows if k == c)
            for c in info['class_names']}
    assert info['split_counts']['actual'][split] == held
  counts = info['counts']
  assert counts['scanned'] == (counts['written'] + counts['skipped'] +
                               counts['duplicates'])


@pytest.mark.slow
def test_help_examples_are_one_per_line_with_real_flags():
  result = _run('make_tfrecords', '--helpfull')  # absl's help exits 1
  assert 'Traceback' not in result.stderr, result.stderr
  examples = [l.strip() for l in result.stdout.splitlines()
              if l.strip().startswith('tools/make_tfrecords ')]
  assert len(examples) >= 4
  known = set(re.findall(r'^  --(?:\[no\])?(\w+):', result.stdout, re.M))
  for line in examples:
    # Lines run together by a backslash in the docstring hold two commands
    # or the continuation's spaces.
    assert line.count('tools/make_tfrecords') == 1 and '   ' not in line, line
    for flag in re.findall(r'--(\w+)', line):
      assert flag in known, (flag, line)


@pytest.mark.slow
def test_missing_flag_is_a_usage_error(tmp_path):
  result = _run('make_tfrecords', f'--out_dir={tmp_path}')
  assert result.returncode != 0
  assert 'src_dir' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGKILL, signal.SIGINT])
def test_kill_9_or_ctrl_c_leaves_no_finished_looking_dataset(tmp_path, signum):
  """SIGKILL, or Ctrl-C (SIGINT to the tool and its workers, as a terminal
  sends it), mid-write: out_dir never appears; Ctrl-C ends in one line and
  exit code 130, with no traceback from the tool or its workers; the next
  run resumes."""
  src = str(tmp_path / 'src')
  synthetic.make_synthetic_kermany(src, num_images=30, size_scale=0.3,
                                   num_workers=1)
  # Many distinct files from few drawings: a trailing byte after the JPEG
  # end marker changes the hash but not the image.
  for folder, _, names in list(os.walk(src)):
    for name in names:
      with open(os.path.join(folder, name), 'rb') as f:
        data = f.read()
      for k in range(20):
        with open(os.path.join(folder, f'copy{k}-{name}'), 'wb') as f:
          f.write(data + bytes([k]))
  out = str(tmp_path / 'data')
  partial = out + '.partial'
  args = [sys.executable, os.path.join('tools', 'make_tfrecords'),
          f'--src_dir={src}', f'--out_dir={out}', '--num_workers=2',
          '--noprogress']
  stderr_path = tmp_path / 'stderr'
  stderr = open(stderr_path, 'w')  # pylint: disable=consider-using-with
  # SIGINT's default action restored for the tool: a shell without job
  # control starts background jobs (a CI runner's, say) with SIGINT ignored,
  # children inherit that, and Python then leaves Ctrl-C ignored too.
  process = subprocess.Popen(
      args, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
      stderr=stderr,
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  try:
    deadline = time.monotonic() + 180  # generous: CI machines are shared
    # Wait for one finished shard's progress record (renamed into place
    # after the shard), so the rerun has a shard to keep.
    progress = os.path.join(partial, '_progress')
    while not (os.path.isdir(progress) and
               any(n.endswith('.json') for n in os.listdir(progress))):
      assert process.poll() is None, 'finished before it could be killed'
      assert time.monotonic() < deadline
      time.sleep(0.01)
  finally:
    os.killpg(process.pid, signum)  # the tool and its workers
    try:
      process.wait(timeout=60)
    finally:
      if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
      stderr.close()
  if signum == signal.SIGINT:
    assert process.returncode == 130
    # Not counting TensorFlow's C++ start-up lines (as assert_one_line_error).
    lines = [l for l in stderr_path.read_text().splitlines()
             if l.strip() and not l.startswith(('WARNING', 'I0000', 'E0000'))]
    assert lines == ['interrupted; rerun the same command to resume']
  assert not os.path.exists(out)
  assert not os.path.exists(os.path.join(partial, schema.INFO_FILENAME))

  result = subprocess.run(args[:-1], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  # Some shards were kept and some converted anew, so both paths show below.
  kept, total = map(int, re.search(r'resuming: (\d+) of (\d+) shards',
                                   result.stdout).groups())
  assert 0 < kept < total
  assert not os.path.exists(partial)
  with open(os.path.join(out, schema.INFO_FILENAME)) as f:
    info = json.load(f)
  counts = info['counts']
  assert counts['scanned'] == 30 * 21 and counts['skipped'] == 0
  assert counts['duplicates'] == 2 * 21  # the tree's 2, copied with it
  assert counts['written'] == 30 * 21 - 2 * 21

  if signum != signal.SIGKILL:
    return  # the resumed bytes are compared once, after SIGKILL
  # Byte for byte what an uninterrupted conversion writes.
  reference = str(tmp_path / 'reference')
  reference_info = writer.convert(src, reference, num_workers=2,
                                  progress=False)
  assert info['splits'] == reference_info['splits']
  shards = sorted(n for n in os.listdir(reference) if n.startswith('src-'))
  assert len(shards) == total
  assert sorted(n for n in os.listdir(out) if n.startswith('src-')) == \
      shards
  for name in shards:
    with open(os.path.join(out, name), 'rb') as a, \
        open(os.path.join(reference, name), 'rb') as b:
      assert a.read() == b.read(), name


@pytest.mark.slow
def test_make_synthetic_tool(tmp_path):
  out = str(tmp_path / 'xray')
  result = _run('make_synthetic', f'--out_dir={out}', '--num_images=12',
                '--size_scale=0.02', '--seed=3', '--num_workers=1')
  assert result.returncode == 0, result.stderr
  assert 'wrote 12 images' in result.stdout
  assert sum(len(files) for _, _, files in os.walk(out)) == 12
  _assert_user_error(_run('make_synthetic', f'--out_dir={out}',
                          '--num_images=12'), 'not empty')
  result = _run('make_synthetic', f'--out_dir={tmp_path / "b"}',
                '--num_images=5')
  assert result.returncode != 0 and 'Traceback' not in result.stderr
