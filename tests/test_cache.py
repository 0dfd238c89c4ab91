"""The reader's cache: memory when the decoded split fits, local disk when it
does not (decoded once, reused by later runs, never trusted half-written).

Decodes are counted by a tf.py_function on every example that leaves
DatasetBuilder's decode stage, so a cache that let an epoch decode again
shows up as a count above the split's size."""

import json
import os
import socket
import subprocess
import sys
import threading

import pytest
import tensorflow as tf

from conftest import REPO_ROOT
from xray_tfdata import cache as cache_lib
from xray_tfdata import pipeline

import relabel
from records import H, W, write_dataset, write_multilabel_dataset

# The train split of write_dataset's default: 14 images of H*W bytes.
TRAIN = 14
SPLIT_BYTES = TRAIN * H * W
SMALL_LIMIT = SPLIT_BYTES // 2  # the split does not fit
# For the runs stopped mid-epoch: a split much larger than the shuffle
# buffer and tf.data's read-ahead, so the cache really is left half-written.
BIG = {'train': (100, 100)}
BIG_TRAIN = 200


@pytest.fixture(autouse=True)
def _fresh_lines(monkeypatch):
  # The cache's line is said once per process; each test sees its own.
  monkeypatch.setattr(cache_lib, '_said', set())


@pytest.fixture()
def decodes(monkeypatch):
  """A list that gets one entry per example decoded by any DatasetBuilder."""
  seen = []
  lock = threading.Lock()
  original = pipeline.DatasetBuilder._decode  # pylint: disable=protected-access

  def bump():
    with lock:
      seen.append(1)
    return True

  def counting(self, *args, **kwargs):
    ds = original(self, *args, **kwargs)
    return ds.map(lambda *e: (e, tf.py_function(bump, [], tf.bool))).map(
        lambda e, _: e)

  monkeypatch.setattr(pipeline.DatasetBuilder, '_decode', counting)
  return seen


def _epoch_values(ds):
  """The images of one pass, as their fill values (records.py: image i is
  filled with i), sorted."""
  return sorted(int(image[1, 1, 0]) for image, _ in ds.as_numpy_iterator())


def _train(root, cache_dir, **options):
  return pipeline.DatasetBuilder(root).as_dataset(
      'train', training=True, seed=0, cache_dir=cache_dir,
      cache_limit_bytes=options.pop('cache_limit_bytes', SMALL_LIMIT),
      **options)


def _runs(cache_dir):
  """{run folder: files} under every key folder of cache_dir."""
  found = {}
  for key in sorted(os.listdir(cache_dir)):
    for run in sorted(os.listdir(os.path.join(cache_dir, key))):
      path = os.path.join(cache_dir, key, run)
      if os.path.isdir(path):
        found[path] = sorted(os.listdir(path))
  return found


def test_split_over_the_limit_decodes_once_across_two_epochs(
    tmp_path, decodes, capsys):
  root, cache_dir = str(tmp_path / 'data'), str(tmp_path / 'cache')
  os.makedirs(root)
  write_dataset(root)
  ds = _train(root, cache_dir)
  line = capsys.readouterr().out
  assert f"cache of split 'train' of {root}: disk" in line
  assert 'does not fit' in line
  assert cache_dir in line
  # Unknown while written, so every consumer reads to the end (see the
  # test below); a complete cache keeps the count.
  assert int(ds.cardinality()) == tf.data.UNKNOWN_CARDINALITY
  assert _epoch_values(ds) == list(range(TRAIN))
  assert len(decodes) == TRAIN
  (run, files), = _runs(cache_dir).items()
  assert 'complete.json' in files and 'cache.index' in files
  assert not [f for f in files if 'lockfile' in f or 'tempstate' in f]
  # Epoch 2 of the same pipeline reads the disk cache: no decode.
  assert _epoch_values(ds) == list(range(TRAIN))
  assert len(decodes) == TRAIN
  # A later run (a new builder and pipeline) reads it too.
  again = _train(root, cache_dir)
  assert 'reading the complete cache' in capsys.readouterr().out
  assert int(again.cardinality()) == TRAIN
  assert _epoch_values(again) == list(range(TRAIN))
  assert len(decodes) == TRAIN
  assert list(_runs(cache_dir)) == [run]


def _keras_pass(ds):
  """One pass as Keras' fit (validation) and predict take it: the count of
  batches the dataset states, without asking for more; to the end when it
  states none."""
  count = int(ds.cardinality())
  it = iter(ds)
  if count < 0:
    return sum(1 for _ in it)
  for _ in range(count):
    next(it)
  return count


def test_a_pass_that_stops_at_the_count_completes_the_disk_cache(
    tmp_path, decodes):
  """Keras validates on exactly the batches a dataset says it has. Before,
  the disk cache stated the count, so the end was never asked for and
  tf.data never finished the cache: validation decoded every epoch and the
  evaluation wrote it again."""
  root, cache_dir = str(tmp_path / 'data'), str(tmp_path / 'cache')
  os.makedirs(root)
  write_dataset(root)

  images = pipeline.DatasetBuilder(root).info.num_examples('val')

  def val():
    # Full batches only: a partial last batch asks for the end itself.
    return pipeline.DatasetBuilder(root).as_dataset(
        'val', images, cache_dir=cache_dir, cache_limit_bytes=1)

  batches = 1
  assert _keras_pass(val()) == batches
  (run, files), = _runs(cache_dir).items()
  assert 'complete.json' in files
  reread = val()
  assert int(reread.cardinality()) == batches
  assert _keras_pass(reread) == batches
  assert len(decodes) == images  # decoded once
  assert list(_runs(cache_dir)) == [run]


def test_without_cache_dir_every_epoch_decodes_and_the_line_says_so(
    tmp_path, decodes, capsys):
  # The counter's control: the same two epochs with no cache decode twice.
  root = str(tmp_path)
  write_dataset(root)
  ds = _train(root, None)
  out = capsys.readouterr().out
  assert f"cache of split 'train' of {root}: none" in out
  assert 'pass --cache_dir=DIR' in out
  _epoch_values(ds)
  _epoch_values(ds)
  assert len(decodes) == 2 * TRAIN


def test_split_that_fits_is_cached_in_memory(tmp_path, decodes, capsys):
  root = str(tmp_path / 'data')
  os.makedirs(root)
  write_dataset(root)
  ds = _train(root, str(tmp_path / 'cache'), cache_limit_bytes=SPLIT_BYTES)
  assert f"'train' of {root}: memory" in capsys.readouterr().out
  _epoch_values(ds)
  _epoch_values(ds)
  assert len(decodes) == TRAIN
  assert not os.path.exists(tmp_path / 'cache')  # nothing on disk


def test_reconverted_dataset_does_not_read_the_old_cache(tmp_path, decodes):
  root, cache_dir = str(tmp_path / 'data'), str(tmp_path / 'cache')
  os.makedirs(root)
  write_dataset(root)
  _epoch_values(_train(root, cache_dir))
  # Converted again in place, with other images: other shards, another
  # fingerprint.
  new = write_dataset(root, learnable=True)
  assert len(decodes) == TRAIN
  ds = _train(root, cache_dir)
  got = sorted(image.tobytes() for image, _ in ds.as_numpy_iterator())
  assert got == sorted(p[..., None].tobytes() for p, _, _ in new['train'])
  assert len(decodes) == 2 * TRAIN
  assert len(_runs(cache_dir)) == 2  # one key folder per conversion


def test_relabelled_dataset_does_not_read_the_old_cache(tmp_path, capsys):
  """Issue 32: the same images converted again in place with other labels
  (every shard name, size and count kept; relabel.CASES) must not be
  served the old targets from the disk cache."""
  src, root = str(tmp_path / 'src'), str(tmp_path / 'data')
  cache_dir = str(tmp_path / 'cache')

  def targets(**options):
    # Every split: the relabelled images may be in any of them.
    builder = pipeline.DatasetBuilder(root)
    return {split: [y.tolist() for _, y in builder.as_dataset(
        split, label_policy='u_ones', cache_dir=cache_dir,
        cache_limit_bytes=1, **options).as_numpy_iterator()]
            for split in ('train', 'val', 'test')}

  relabel.convert(src, root)
  old = targets()
  assert targets() == old
  assert 'reading the complete cache' in capsys.readouterr().out
  for case, rows in sorted(relabel.CASES.items()):
    relabel.convert(src, root, rows)
    new = targets()
    out = capsys.readouterr().out
    assert out.count('writing it during the first epoch') == 3, (case, out)
    assert 'reading the complete cache' not in out, case
    assert new == targets(cache=False), case  # what the records hold now
    assert new != old, case  # a relabelling the targets show
  assert len(_runs(cache_dir)) == 3 * (1 + len(relabel.CASES))


def test_another_size_does_not_read_the_cache(tmp_path, decodes):
  root, cache_dir = str(tmp_path / 'data'), str(tmp_path / 'cache')
  os.makedirs(root)
  write_dataset(root)
  _epoch_values(_train(root, cache_dir))
  resized = _train(root, cache_dir, image_size=(6, 5), resize=True)
  shapes = {image.shape for image, _ in resized.as_numpy_iterator()}
  assert shapes == {(6, 5, 1)}
  assert len(decodes) == 2 * TRAIN
  # Three channels are the grey one widened after the cache: the same cache.
  rgb = _train(root, cache_dir, channels=3)
  assert {image.shape for image, _ in rgb.as_numpy_iterator()} == {(H, W, 3)}
  assert len(decodes) == 2 * TRAIN


def test_label_policy_labels_and_views_each_have_their_own_cache(tmp_path):
  root, cache_dir = str(tmp_path / 'data'), str(tmp_path / 'cache')
  os.makedirs(root)
  # Codes of labels A and B, and the view, of the four training images.
  rows = [((-1, 1), 'PA'), ((0, -2), 'LL'), ((1, 0), 'PA'), ((-2, -1), 'AP')]
  write_multilabel_dataset(root, ('A', 'B'), {'train': rows, 'val': rows[:2]},
                           num_shards=1)

  def targets(**options):
    ds = pipeline.DatasetBuilder(root).as_dataset(
        'train', cache_dir=cache_dir, cache_limit_bytes=1, **options)
    return [[float(t) for t in y] for _, y in ds.as_numpy_iterator()]

  # By hand from labels.py's table: u_ones reads uncertain (-1) as 1,
  # u_zeros as 0; not mentioned (-2) is 0 under both.
  assert targets(label_policy='u_ones') == [[1, 1], [0, 0], [1, 0], [0, 1]]
  # The decoded targets are in the cache: another policy, another order of
  # the labels or a view filter must not read the first one's.
  assert targets(label_policy='u_zeros') == [[0, 1], [0, 0], [1, 0], [0, 0]]
  assert targets(label_policy='u_ones', labels=('B', 'A')) == [
      [1, 1], [0, 0], [0, 1], [1, 0]]
  assert targets(label_policy='u_ones', views=('PA',)) == [[1, 1], [1, 0]]
  assert len(_runs(cache_dir)) == 4


def test_half_an_epoch_leaves_no_cache_a_later_run_trusts(tmp_path, decodes):
  root, cache_dir = str(tmp_path / 'data'), str(tmp_path / 'cache')
  os.makedirs(root)
  write_dataset(root, BIG)
  it = iter(_train(root, cache_dir, shuffle_buffer=4))
  for _ in range(5):
    next(it)
  assert len(decodes) < BIG_TRAIN  # the pass really stopped part-way
  del it  # the iterator is dropped mid-epoch
  (run, files), = _runs(cache_dir).items()
  assert 'complete.json' not in files
  before = len(decodes)
  ds = _train(root, cache_dir, shuffle_buffer=4)
  assert _epoch_values(ds) == list(range(BIG_TRAIN))
  assert len(decodes) == before + BIG_TRAIN  # decoded again, in full
  runs = _runs(cache_dir)
  complete = [r for r, f in runs.items() if 'complete.json' in f]
  assert len(complete) == 1 and complete[0] != run
  assert _epoch_values(_train(root, cache_dir)) == list(range(BIG_TRAIN))
  assert len(decodes) == before + BIG_TRAIN


_KILLED_WRITER = r'''
import os, sys
sys.path.insert(0, sys.argv[1])
from xray_tfdata import pipeline
ds = pipeline.DatasetBuilder(sys.argv[2]).as_dataset(
    'train', training=True, seed=0, cache_dir=sys.argv[3],
    cache_limit_bytes=int(sys.argv[4]), shuffle_buffer=4)
it = iter(ds)
for _ in range(5):
  next(it)
print('half written', flush=True)
os.kill(os.getpid(), 9)
'''


@pytest.mark.slow
def test_killed_writer_leaves_no_cache_a_later_run_trusts(tmp_path, decodes):
  root, cache_dir = str(tmp_path / 'data'), str(tmp_path / 'cache')
  os.makedirs(root)
  write_dataset(root, BIG)
  process = subprocess.run(
      [sys.executable, '-c', _KILLED_WRITER, REPO_ROOT, root, cache_dir,
       str(SMALL_LIMIT)], capture_output=True, text=True, timeout=120,
      check=False, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert process.returncode == -9, process.stderr[-2000:]
  (run, files), = _runs(cache_dir).items()
  # What tf.data leaves when killed: its lockfile, which would make a later
  # cache() of the same prefix fail with AlreadyExistsError.
  assert any(f.endswith('.lockfile') for f in files), files
  assert 'complete.json' not in files
  ds = _train(root, cache_dir, shuffle_buffer=4)
  assert _epoch_values(ds) == list(range(BIG_TRAIN))
  assert len(decodes) == BIG_TRAIN
  runs = _runs(cache_dir)
  assert run not in runs  # the dead writer's folder is cleaned up
  (new_run, new_files), = runs.items()
  assert 'complete.json' in new_files
  assert _epoch_values(_train(root, cache_dir)) == list(range(BIG_TRAIN))
  assert len(decodes) == BIG_TRAIN  # and the new cache is reused


def test_an_incomplete_or_foreign_marker_is_not_trusted(tmp_path):
  key = cache_lib.cache_key('f' * 32, 'train', {'size': [H, W], 'channels': 1},
                            None, 'spec')
  folder = cache_lib.key_dir(str(tmp_path), key)
  for name, files in {'run-a': {'cache.index': ''},  # no marker
                      'run-b': {'complete.json': '{"key": {}}',
                                'cache.index': ''},  # another key's
                      'run-c': {'complete.json': '{not json',
                                'cache.index': ''},
                      'run-d': {'complete.json': None}}.items():
    os.makedirs(os.path.join(folder, name))
    for f, text in files.items():
      if text is not None:
        with open(os.path.join(folder, name, f), 'w') as out:
          out.write(text)
  assert cache_lib.find_complete(folder, key) is None
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(folder, 'run-d', 'complete.json'), 'w') as out:
    json.dump({'key': key}, out)
  assert cache_lib.find_complete(folder, key) is None  # no cache.index
  with open(os.path.join(folder, 'run-d', 'cache.index'), 'w') as out:
    out.write('')
  assert cache_lib.find_complete(folder, key) == os.path.join(folder, 'run-d')


@pytest.mark.parametrize('cache, size, service, cache_dir, kind', [
    ('auto', 10, None, None, 'memory'),
    ('auto', 11, None, None, 'none'),
    ('auto', 11, None, 'DIR', 'disk'),
    ('auto', 11, 'localhost:5050', 'DIR', 'none'),
    (True, 11, None, 'DIR', 'memory'),
    (False, 1, None, 'DIR', 'none'),
])
def test_choose(tmp_path, cache, size, service, cache_dir, kind):
  key = cache_lib.cache_key('0' * 32, 'train', {'size': [2, 5],
                                                'channels': 1}, None, 's')
  cache_dir = str(tmp_path) if cache_dir else None
  choice = cache_lib.choose(cache, size, service, cache_dir, 10, key)
  assert choice.kind == kind
  assert (choice.path is not None) == (kind == 'disk')
  assert bool(choice.hint) == (kind == 'none' and cache == 'auto'
                               and not service)
  assert f"'train': {kind} (" in cache_lib.describe(choice, 'train')


def _run_folder(folder, name, owner=None, complete=False):
  run = os.path.join(folder, name)
  os.makedirs(run)
  if owner is not None:
    with open(os.path.join(run, 'owner.json'), 'w') as out:
      json.dump(owner, out)
  if complete:
    with open(os.path.join(run, 'complete.json'), 'w') as out:
      json.dump({'key': {}}, out)
  return run


def test_only_this_host_s_dead_writers_incomplete_folders_are_removed(
    tmp_path):
  """A live writer, another host's writer (its pid means nothing here), a
  complete cache and a folder without owner.json are all left alone."""
  folder = str(tmp_path)
  host = socket.gethostname()
  # A pid that surely ran and ended: a child process, waited for.
  child = subprocess.Popen([sys.executable, '-c', 'pass'])
  child.wait()
  dead = child.pid
  gone = _run_folder(folder, 'run-dead', {'host': host, 'pid': dead})
  kept = [
      _run_folder(folder, 'run-live', {'host': host, 'pid': os.getpid()}),
      _run_folder(folder, 'run-other-host',
                  {'host': host + '-elsewhere', 'pid': dead}),
      _run_folder(folder, 'run-complete', {'host': host, 'pid': dead},
                  complete=True),
      _run_folder(folder, 'run-no-owner'),
      _run_folder(folder, 'not-a-run', {'host': host, 'pid': dead}),
  ]
  assert cache_lib.remove_abandoned(folder) == [gone]
  assert sorted(os.listdir(folder)) == sorted(os.path.basename(k)
                                              for k in kept)


def test_each_input_pipeline_has_its_own_cache(tmp_path):
  """Two input pipelines read different parts of the split: the cache of
  one (a complete run folder) is not the other's, nor the unsharded one's."""
  decode = {'size': [H, W], 'channels': 1}
  keys = [cache_lib.cache_key('f' * 32, 'train', decode, shard, 'spec')
          for shard in ((2, 0), (2, 1), None)]
  assert len({cache_lib.key_dir(str(tmp_path), k) for k in keys}) == 3
  folder = cache_lib.key_dir(str(tmp_path), keys[0])
  run = _run_folder(folder, 'run-a')
  with open(os.path.join(run, 'cache.index'), 'w') as out:
    out.write('')
  with open(os.path.join(run, 'complete.json'), 'w') as out:
    json.dump({'key': keys[0]}, out)
  assert cache_lib.find_complete(folder, keys[0]) == run
  assert cache_lib.find_complete(folder, keys[1]) is None
  assert cache_lib.find_complete(folder, keys[2]) is None
