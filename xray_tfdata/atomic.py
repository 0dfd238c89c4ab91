"""Atomic state files and disk-full errors (no TensorFlow).

State files (the converter's progress records, the trainer's config and
resume metadata, results) are read back by later runs, so a file cut short
by a full disk or a kill -9 must never be taken for a complete one:

  * `write_text` / `write_json` write a temporary file in the same folder,
    flush and fsync it, and rename it over the target (a rename within one
    file system is atomic), then fsync the folder so the rename survives a
    power cut. A reader sees the old file or the new one, never a part.
  * `read_json` raises `DamagedStateError` (one line naming the file) for a
    file that is empty or not JSON, so callers can report it and rebuild the
    state instead of trusting it.

A full disk shows up in different shapes: OSError with errno ENOSPC from
Python, an h5py OSError, a TensorFlow error whose message says "No space
left on device". `no_space` recognizes all of them (anywhere in an
exception's chain), and `NoSpaceError` carries the path being written, so
the tools can print one line naming it.
"""

import contextlib
import errno
import fcntl
import json
import os
import tempfile

from xray_tfdata import errors

_NO_SPACE_TEXT = 'no space left on device'


class DamagedStateError(errors.XrayError):
  """A state file is empty, cut short or not valid JSON."""


class NoSpaceError(OSError):
  """The disk filled up while writing `filename` (errno ENOSPC)."""

  def __init__(self, path):
    super().__init__(errno.ENOSPC, 'No space left on device', path)

  def __str__(self):
    return (f'no space left on device writing {self.filename}; free some '
            'space, then rerun the same command to resume')


def no_space(error):
  """Whether `error`, or an exception in its chain, is a full disk.

  Args:
    error: any exception.

  Returns:
    True for ENOSPC (and EDQUOT, a full quota) or a message that says "No
    space left on device" (h5py, TensorFlow).
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC,
                                                       errno.EDQUOT):
      return True
    if _NO_SPACE_TEXT in str(error).lower():
      return True
    error = error.__cause__ or error.__context__
  return False


class naming:  # pylint: disable=invalid-name  (used like a function)
  """Context manager: a full disk inside becomes NoSpaceError(path).

  Wraps writes that libraries do for us (h5py, numpy, TensorFlow), whose
  errors may not name the file.
  """

  def __init__(self, path):
    self.path = path

  def __enter__(self):
    return self

  def __exit__(self, kind, error, traceback):
    if error is not None and not isinstance(error, NoSpaceError) and (
        no_space(error)):
      raise NoSpaceError(self.path) from error
    return False


def write_bytes(path, data):
  """Replaces `path` with `data` atomically and durably.

  Args:
    path: the file to write; its folder must exist.
    data: bytes.

  Raises:
    NoSpaceError: the disk is full; `path` is unchanged and no temporary
      file is left.
    OSError: any other failure to write, likewise leaving `path` unchanged.
  """
  directory = os.path.dirname(os.path.abspath(path))
  with naming(path):
    fd, tmp = tempfile.mkstemp(dir=directory,
                               prefix='.' + os.path.basename(path) + '.',
                               suffix='.tmp')
    try:
      # mkstemp makes 0600 files; the result should have the mode any new
      # file gets, as the user's umask says.
      os.fchmod(fd, _new_file_mode())
      with os.fdopen(fd, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
    except BaseException:
      try:
        os.unlink(tmp)
      except OSError:
        pass
      raise
  fsync_dir(directory)


def _new_file_mode():
  """0o666 less the process umask: what open(path, 'w') would create."""
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


def write_text(path, text):
  """`write_bytes` of `text` in UTF-8."""
  write_bytes(path, text.encode('utf-8'))


def write_json(path, value, **kwargs):
  """`write_text` of `json.dumps(value, **kwargs)` and a final newline."""
  write_text(path, json.dumps(value, **kwargs) + '\n')


def read_json(path):
  """Reads a JSON state file.

  Returns:
    The parsed value.

  Raises:
    DamagedStateError: the file is empty or not valid JSON (a write cut
      short by a full disk or a crash, or an edit).
    OSError: the file cannot be read (missing, permissions).
  """
  with open(path, 'rb') as f:
    data = f.read()
  try:
    return json.loads(data.decode('utf-8'))
  except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
    what = 'empty' if not data else f'not valid JSON ({e})'
    raise DamagedStateError(f'{path} is damaged: {what}') from None


def fsync_file(path):
  """Flushes a file someone else wrote (a TFRecord shard) to the disk."""
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def fsync_dir(directory):
  """Makes renames and new files in `directory` durable (where supported)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return  # e.g. a platform without directory fds; the rename still holds
  try:
    os.fsync(fd)
  except OSError:
    pass  # some file systems refuse fsync on folders
  finally:
    os.close(fd)


class LockedError(errors.XrayError):
  """Another process holds the lock of what this one was to write."""


@contextlib.contextmanager
def exclusive(path, what):
  """Holds an exclusive lock file while the body runs; fails at once if
  another process holds it.

  The lock is `flock` on `path`, released by the kernel when its holder
  exits, so a killed run never leaves a lock that blocks the rerun; the file
  (which names the holder's pid) is removed on the way out. After locking,
  the file is checked to still be the one at `path`: a holder that was just
  removing it would otherwise let two processes in.

  Args:
    path: the lock file, e.g. `<out_dir>.lock`.
    what: what the lock protects, for the error (e.g. 'out_dir /data/x').

  Raises:
    LockedError: another process holds the lock.
  """
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      holder = ''
      try:
        with open(path) as f:
          holder = f.read().strip()
      except OSError:
        pass
      raise LockedError(
          f'another run{f" (pid {holder})" if holder else ""} is writing '
          f'{what}; wait for it to end or stop it, then rerun') from None
    try:
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)  # locked a file its holder had just removed: again
  try:
    try:
      os.ftruncate(fd, 0)
      os.write(fd, f'{os.getpid()}\n'.encode())
    except OSError:
      pass  # the pid only makes the error friendlier (a full disk, say)
    yield
  finally:
    try:
      os.unlink(path)
    except FileNotFoundError:
      pass
    os.close(fd)
