"""Faults and hostile input in the converter: damaged state files, a full
disk at every write, and source entries that are not plain image files."""

import errno
import os
import shutil
import signal
import subprocess

import pytest

from records import shard_bytes
from xray_tfdata import atomic
from xray_tfdata import imaging
from xray_tfdata import runtime
from xray_tfdata import schema
from xray_tfdata.sources import class_folders
from xray_tfdata.synthetic import kermany as synthetic
from xray_tfdata import writer

SIZE = 8


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('src') / 'xray')
  synthetic.make_synthetic_kermany(root, num_images=24, size_scale=0.03,
                                   num_workers=1)
  return root


def _convert(src, out, **kwargs):
  return writer.convert(src, out, image_size=SIZE, num_shards=2,
                        num_workers=1, progress=False, **kwargs)


@pytest.fixture(scope='module')
def reference(tree, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('ref') / 'data')
  _convert(tree, out)
  return shard_bytes(out)


# --- atomic state files ----------------------------------------------------


def _no_space(*args):
  del args
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize('umask', [0o022, 0o002, 0o077])
def test_atomic_files_get_the_mode_the_umask_gives(tmp_path, umask):
  previous = os.umask(umask)
  try:
    path = str(tmp_path / 'config.json')
    atomic.write_json(path, {'a': 1})
    plain = str(tmp_path / 'plain.json')
    with open(plain, 'w') as f:
      f.write('{}')
  finally:
    os.umask(previous)
  assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
  assert os.stat(path).st_mode & 0o777 == os.stat(plain).st_mode & 0o777


def test_atomic_write_keeps_the_old_file_when_the_disk_is_full(
    tmp_path, monkeypatch):
  path = str(tmp_path / 'state.json')
  atomic.write_json(path, {'epoch': 1})
  monkeypatch.setattr(os, 'fsync', _no_space)
  with pytest.raises(atomic.NoSpaceError, match='no space left') as caught:
    atomic.write_json(path, {'epoch': 2})
  assert path in str(caught.value)
  assert atomic.read_json(path) == {'epoch': 1}
  assert os.listdir(tmp_path) == ['state.json']  # no temporary file left


@pytest.mark.parametrize('data, words', [(b'', 'empty'),
                                         (b'{"epoch": 1', 'not valid JSON'),
                                         (b'\xff\xfe', 'not valid JSON')])
def test_damaged_state_file_is_one_clear_error(tmp_path, data, words):
  path = tmp_path / 'state.json'
  path.write_bytes(data)
  with pytest.raises(atomic.DamagedStateError, match=words) as caught:
    atomic.read_json(str(path))
  assert str(path) in str(caught.value)
  assert '\n' not in str(caught.value)


def test_no_space_is_recognized_in_every_shape():
  assert atomic.no_space(OSError(errno.ENOSPC, 'No space left on device'))
  assert atomic.no_space(RuntimeError('/x/shard.tmp; No space left on device'))
  try:
    try:
      raise OSError(errno.ENOSPC, 'full')
    except OSError as inner:
      raise RuntimeError('save failed') from inner
  except RuntimeError as outer:
    assert atomic.no_space(outer)
  assert not atomic.no_space(OSError(errno.EACCES, 'Permission denied'))
  assert not atomic.no_space(ValueError('bad'))


class _Interrupter:
  """Stands in for imaging.decode_and_resize; Ctrl-C after `limit` calls."""

  def __init__(self, limit):
    self.decode = imaging.decode_and_resize
    self.limit = limit
    self.calls = 0

  def __call__(self, task):
    self.calls += 1
    if self.limit is not None and self.calls > self.limit:
      raise KeyboardInterrupt
    return self.decode(task)


@pytest.mark.parametrize('damage', [b'', b'{"written": ['])
def test_damaged_progress_record_is_reported_and_rebuilt(
    tree, reference, tmp_path, monkeypatch, capsys, damage):
  out = str(tmp_path / 'data')
  progress = os.path.join(out + writer.PARTIAL_SUFFIX, '_progress')
  decode = _Interrupter(limit=15)
  monkeypatch.setattr(imaging, 'decode_and_resize', decode)
  with pytest.raises(KeyboardInterrupt):
    _convert(tree, out)
  records = sorted(n for n in os.listdir(progress) if n.endswith('.json'))
  assert records
  with open(os.path.join(progress, records[0]), 'wb') as f:
    f.write(damage)  # what a full disk or kill -9 left before writes were atomic

  decode.limit = None
  _convert(tree, out)
  assert shard_bytes(out) == reference
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and records[0] in lines[0], lines
  assert 'damaged' in lines[0] and 'again' in lines[0]


# --- a full disk -----------------------------------------------------------


class _FullDiskAt:
  """os.fsync that fails with ENOSPC at its `at`-th call (every write of
  the converter ends in an fsync: shards, progress records, the
  fingerprint and dataset_info.json)."""

  def __init__(self, at):
    self.at = at
    self.calls = 0
    self.fsync = os.fsync

  def __call__(self, fd):
    self.calls += 1
    if self.calls == self.at:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return self.fsync(fd)


def test_full_disk_at_every_write_loses_nothing_and_a_rerun_completes(
    tree, reference, tmp_path, monkeypatch):
  at = 0
  while True:
    at += 1
    out = str(tmp_path / f'data{at}')
    full = _FullDiskAt(at)
    monkeypatch.setattr(os, 'fsync', full)
    try:
      _convert(tree, out)
    except atomic.NoSpaceError as e:
      message = str(e)
      assert 'no space left' in message and '\n' not in message
      assert out + writer.PARTIAL_SUFFIX in message  # names the file
      partial = out + writer.PARTIAL_SUFFIX
      assert not [n for n in os.listdir(partial) if n.endswith('.tmp')]
      finished = {n for n in os.listdir(partial)
                  if schema.parse_shard_filename(n)}
      monkeypatch.setattr(os, 'fsync', full.fsync)  # space freed
      _convert(tree, out)
      assert shard_bytes(out) == reference
      # shards finished before the disk filled were kept, not redone
      assert finished <= set(shard_bytes(out))
    else:
      if full.calls < at:
        break  # no write left to fail: every one has been tried
      assert shard_bytes(out) == reference  # the fsync of a folder: harmless
    shutil.rmtree(out, ignore_errors=True)
  assert at > 8  # fingerprint, 6 shards and their records, dataset_info.json


def test_full_disk_for_real_on_a_small_tmpfs(tree, reference, tmp_path):
  """A real full disk where this machine lets us mount a tmpfs (root)."""
  mount = str(tmp_path / 'tmpfs')
  os.makedirs(mount)
  made = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=12k', 'tmpfs',
                         mount], capture_output=True, check=False)
  if made.returncode:
    pytest.skip('cannot mount a tmpfs here; the simulated full disk covers it')
  try:
    out = os.path.join(mount, 'data')
    with pytest.raises(atomic.NoSpaceError, match='no space left'):
      _convert(tree, out)
    subprocess.run(['mount', '-o', 'remount,size=4m', mount], check=True)
    _convert(tree, out)
    assert shard_bytes(out) == reference
  finally:
    subprocess.run(['umount', mount], check=False)


def test_tools_end_a_full_disk_or_ctrl_c_in_one_line(capsys):
  with pytest.raises(SystemExit) as caught:
    with runtime.tool_errors():
      raise atomic.NoSpaceError('/data/x.partial/shard.tmp')
  assert str(caught.value.code).startswith('error: no space left')
  assert '/data/x.partial/shard.tmp' in str(caught.value.code)
  with pytest.raises(SystemExit) as caught:
    with runtime.tool_errors():
      raise RuntimeError('/m/backup/w.h5; No space left on device')
  assert 'no space left' in str(caught.value.code)
  with pytest.raises(SystemExit) as caught:
    with runtime.tool_errors(writer.OutputError):
      raise writer.OutputError('bad out_dir')
  assert caught.value.code == 'error: bad out_dir'
  with pytest.raises(SystemExit) as caught:
    with runtime.tool_errors():
      raise KeyboardInterrupt
  assert caught.value.code == 130
  assert capsys.readouterr().err == (
      'interrupted; rerun the same command to resume\n')
  with pytest.raises(SystemExit) as caught:
    with runtime.tool_errors():
      os.kill(os.getpid(), signal.SIGTERM)
  assert caught.value.code == 130
  with pytest.raises(ValueError):  # a bug keeps its traceback
    with runtime.tool_errors(writer.OutputError):
      raise ValueError('a bug')


# --- source entries that are not plain image files -------------------------


def _add_hostile_entries(root):
  """Adds entries of every awkward kind to train/NORMAL; returns
  {displayed path: words of the reason}."""
  folder = os.path.join(root, 'train', 'NORMAL')
  image = sorted(n for n in os.listdir(folder) if n.endswith('.jpeg'))[0]
  with open(os.path.join(folder, image), 'rb') as f:
    data = f.read() + b'\1'  # a distinct file, not a duplicate
  with open(os.path.join(os.fsencode(folder), b'caf\xe9.jpeg'), 'wb') as f:
    f.write(data)  # Latin-1 name: not valid UTF-8
  os.symlink('missing.jpeg', os.path.join(folder, 'broken.jpeg'))
  os.symlink('loop.jpeg', os.path.join(folder, 'loop.jpeg'))
  os.mkfifo(os.path.join(folder, 'pipe.jpeg'))
  os.symlink(os.path.join(root, 'test', 'NORMAL'),
             os.path.join(folder, 'linked'))
  return {'train/NORMAL/caf\\xe9.jpeg': 'not valid UTF-8',
          'train/NORMAL/broken.jpeg': 'broken symbolic link',
          'train/NORMAL/loop.jpeg': 'symbolic link loop',
          'train/NORMAL/pipe.jpeg': 'not a regular file (FIFO)'}


def test_hostile_entries_are_skipped_with_a_reason(tree, tmp_path):
  root = str(tmp_path / 'src')
  shutil.copytree(tree, root)
  expected = _add_hostile_entries(root)
  found = class_folders.scan(root)
  reasons = {s['path']: s['reason'] for s in found.skipped}
  assert set(reasons) == set(expected)
  for path, words in expected.items():
    assert words in reasons[path]
  assert 'train/NORMAL/linked/' in found.ignored  # a linked folder: listed


def test_every_entry_is_accounted_for(tree, tmp_path, monkeypatch, capsys):
  root = str(tmp_path / 'src')
  shutil.copytree(tree, root)
  expected = _add_hostile_entries(root)
  # One more file that disappears while the conversion runs.
  folder = os.path.join(root, 'train', 'PNEUMONIA')
  doomed = sorted(os.listdir(folder))[-1]
  decode = imaging.decode_and_resize

  def delete_then_decode(task):
    if task[0].endswith(doomed):
      os.remove(task[0])
    return decode(task)

  monkeypatch.setattr(imaging, 'decode_and_resize', delete_then_decode)
  # A FIFO that is opened blocks for ever; fail instead of hanging.
  signal.alarm(60)
  try:
    info = writer.convert(root, str(tmp_path / 'out'), image_size=SIZE,
                          num_workers=1, progress=True)
  finally:
    signal.alarm(0)
  counts = info['counts']
  assert counts['scanned'] == 24 + len(expected)  # the deleted one is of the 24
  assert counts['scanned'] == (counts['written'] + counts['skipped'] +
                               counts['duplicates'])
  reasons = {s['path']: s['reason'] for s in info['skipped']}
  assert set(reasons) == set(expected) | {f'train/PNEUMONIA/{doomed}'}
  assert 'No such file' in reasons[f'train/PNEUMONIA/{doomed}']
  summary = capsys.readouterr().out
  assert 'caf\\xe9.jpeg: file name is not valid UTF-8' in summary
