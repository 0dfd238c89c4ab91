"""Where the reader keeps the decoded split: memory, local disk, or nowhere.

From its second epoch on the training pipeline should read decoded uint8
images, not PNGs, whatever the split's size. `DatasetBuilder.as_dataset`
asks `choose` which cache to use, `apply` puts it in the pipeline, and one
line (`describe`) says which and why:

  memory  the decoded split fits the budget (`ReadConfig.cache_limit_bytes`,
          by default `DEFAULT_CACHE_LIMIT_BYTES`): `Dataset.cache()`.
  disk    it does not fit, and `cache_dir` is given: `Dataset.cache(prefix)`
          on local disk, reused by later runs of the same dataset, split,
          size and channels.
  none    it does not fit and no cache_dir was given (every epoch decodes
          again; the line says to pass --cache_dir), or cache=False, or the
          tf.data service reads the split.

What `Dataset.cache(filename)` does with a pass that does not finish (TF
2.21, checked by tests/test_cache.py; tensorflow#28798, #30825): the writer
keeps `<prefix>_0.lockfile` and a `.tempstate` file while it writes, and
renames them to `<prefix>.index` and `<prefix>.data-*` at the end of the
pass. An iterator dropped before the end discards what it wrote and its
lockfile. A killed process leaves both, and a later `cache(prefix)` then
fails with AlreadyExistsError ("concurrent caching iterator running") until
someone deletes the lockfile. So a disk cache is never written in place:

  <cache_dir>/xray_tfdata-<split>-<H>x<W>x<C>-<digest>/
      key.json                 what the cache holds (readable)
      run-<uuid>/owner.json    the writing process (host, pid)
      run-<uuid>/cache.index, cache.data-*       tf.data's files
      run-<uuid>/complete.json the key again, written atomically last

Each run that finds no complete cache writes its own `run-<uuid>`, so a
killed writer's lockfile never blocks another run, and two runs at once do
not collide. `complete.json` is written, after tf.data has renamed its files
and they are fsynced, by an empty dataset concatenated after the cache, which
tf.data reaches only when the cache has seen the whole split. A run reuses
only a `run-*` folder with `complete.json` and `cache.index` whose key matches
its own: the dataset's fingerprint (`DatasetInfo.fingerprint`: a
conversion with other images or labels has other shard content hashes), the
split, the output size and channels, the
resize, the labels and metadata decoded, the input-pipeline shard and the
element structure. Folders left by dead writers on this host are deleted.
"""

import dataclasses
import hashlib
import json
import os
import socket
import tempfile
import uuid
from typing import Optional

import tensorflow as tf

from xray_tfdata import atomic
from xray_tfdata import errors

# Cache decoded images in memory when the split is at most this large. The
# full Kermany training split at 224 px is about 240 MB.
DEFAULT_CACHE_LIMIT_BYTES = 4 * 1024**3

MEMORY, DISK, NONE = 'memory', 'disk', 'none'
_PREFIX = 'cache'
_COMPLETE = 'complete.json'
_OWNER = 'owner.json'
_KEY = 'key.json'

# Lines already printed by this process: as_dataset is called again for
# the same split (evaluation, predictions), and one line says it.
_said = set()
# The run folders this process's disk caches write (`choose`), so that a full
# disk while tf.data writes one is named as it (`folder_named_by`).
_writing = set()


class CacheError(errors.XrayError):
  """A cache_dir that cannot be used (a user error)."""


def check_cache_dir(cache_dir):
  """Checks that a disk cache can be written under cache_dir, before a run
  writes anything else: creates the folder if needed and a file in it.

  Args:
    cache_dir: the folder, or '' / None (no disk cache: nothing to check).

  Raises:
    CacheError: the folder cannot be created or written (read-only, not a
      folder, no permission), in one line naming it and the fix.
    atomic.NoSpaceError: its disk is full.
  """
  if not cache_dir:
    return
  try:
    os.makedirs(cache_dir, exist_ok=True)
    # Permission bits do not tell (root, read-only mounts): try a write.
    with tempfile.TemporaryFile(dir=cache_dir):
      pass
  except OSError as e:
    if atomic.no_space(e):
      raise atomic.NoSpaceError(cache_dir) from None
    raise CacheError(
        f'--cache_dir {cache_dir} cannot be written ({e.strerror or e}); pass '
        'a local folder you can write, or no --cache_dir') from None


def folder_named_by(error):
  """The run folder of this process's disk cache that `error` (or an
  exception in its chain; tf.data's message names the file) was writing,
  or None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    text = str(error)
    for run in sorted(_writing):
      if run + os.sep in text:
        return run
    error = error.__cause__ or error.__context__
  return None


@dataclasses.dataclass(frozen=True)
class CacheChoice:
  """Which cache a pipeline uses.

  Attributes:
    kind: MEMORY, DISK or NONE.
    reason: why, in words.
    path: DISK: the run folder whose `cache` prefix is read or written.
    reused: DISK: an earlier run's complete cache is read (no decode).
    hint: NONE when a disk cache would have helped: what to pass.
    announce: whether `say` prints it; not for cache=False, which the
      caller chose (a one-batch preview beside a cached run's pipelines).
  """
  kind: str
  reason: str
  path: Optional[str] = None
  reused: bool = False
  hint: Optional[str] = None
  announce: bool = True

  @property
  def prefix(self):
    return os.path.join(self.path, _PREFIX) if self.path else None


def cache_key(fingerprint, split, decode, input_shard, element_spec):
  """The dict a disk cache is keyed and checked on.

  Args:
    fingerprint: `DatasetInfo.fingerprint()` of the converted dataset.
    split: the split's name.
    decode: a JSON-ready dict of what shaped the decoded examples (output
      size, channels, resize, labels, metadata).
    input_shard: (input pipelines, this pipeline's id), or None.
    element_spec: the decoded dataset's `element_spec`.

  Returns:
    A JSON-ready dict.
  """
  return {'fingerprint': fingerprint, 'split': split, 'decode': decode,
          'input_shard': list(input_shard) if input_shard else None,
          'element_spec': repr(element_spec)}


def _digest(key):
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def key_dir(cache_dir, key):
  """The folder of one key's caches under cache_dir."""
  size = key['decode'].get('size') or ('?', '?')
  channels = key['decode'].get('channels', '?')
  return os.path.join(
      cache_dir, f'xray_tfdata-{key["split"]}-{size[0]}x{size[1]}x{channels}'
      f'-{_digest(key)[:16]}')


def find_complete(folder, key):
  """The newest run folder in `folder` holding a complete cache of `key`,
  or None. A folder whose complete.json is unreadable or of another key
  (a digest collision, an edited file) is not trusted."""
  if not os.path.isdir(folder):
    return None
  found = []
  for name in os.listdir(folder):
    run = os.path.join(folder, name)
    marker = os.path.join(run, _COMPLETE)
    if not (name.startswith('run-') and os.path.isfile(marker) and
            os.path.isfile(os.path.join(run, _PREFIX + '.index'))):
      continue
    try:
      with open(marker) as f:
        saved = json.load(f)
    except (OSError, ValueError):
      continue
    if saved.get('key') == key:
      found.append((os.stat(marker).st_mtime, run))
  return max(found)[1] if found else None


def _pid_alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def remove_abandoned(folder):
  """Deletes the incomplete run folders whose writer is gone: a process of
  this host that no longer runs (its lockfile would block nobody, but its
  partial files take disk). Others' hosts' folders are left alone."""
  if not os.path.isdir(folder):
    return []
  removed = []
  host = socket.gethostname()
  for name in os.listdir(folder):
    run = os.path.join(folder, name)
    if not name.startswith('run-') or os.path.exists(
        os.path.join(run, _COMPLETE)):
      continue
    try:
      with open(os.path.join(run, _OWNER)) as f:
        owner = json.load(f)
    except (OSError, ValueError):
      continue  # being created right now, or not ours to judge
    if owner.get('host') == host and not _pid_alive(int(owner.get('pid', 0))):
      tf.io.gfile.rmtree(run)
      removed.append(run)
  return removed


def choose(cache, decoded_bytes, data_service, cache_dir, limit_bytes, key):
  """Which cache a pipeline uses; see the module docstring.

  Args:
    cache: ReadConfig.cache: True (memory), False (none) or 'auto'.
    decoded_bytes: the decoded split's size.
    data_service: the tf.data service address, or None.
    cache_dir: local folder for disk caches, or None.
    limit_bytes: the memory budget; None: DEFAULT_CACHE_LIMIT_BYTES.
    key: `cache_key(...)` of this pipeline.

  Returns:
    A CacheChoice. For DISK, creates the key's folder and, unless a complete
    cache is reused, a new run folder with its owner.json.

  Raises:
    CacheError: cache_dir cannot be written (see `check_cache_dir`).
    atomic.NoSpaceError: its disk is full.
  """
  limit = DEFAULT_CACHE_LIMIT_BYTES if limit_bytes is None else limit_bytes
  size = f'{decoded_bytes / 1024**2:.0f} MiB decoded'
  budget = f'{limit / 1024**2:.0f} MiB'
  if cache is True:
    return CacheChoice(MEMORY, f'{size}, cache=True')
  if cache is False:
    return CacheChoice(NONE, 'cache=False', announce=False)
  if data_service:
    # The service is for splits too large to cache, and a cache here would
    # freeze a trainer's share of the first epoch of a shared job.
    return CacheChoice(NONE, 'read by the tf.data service')
  if decoded_bytes <= limit:
    return CacheChoice(MEMORY, f'{size} fits the {budget} memory budget')
  if not cache_dir:
    return CacheChoice(
        NONE, f'{size} does not fit the {budget} memory budget and no '
        'cache_dir was given, so every epoch decodes again',
        hint=f'pass --cache_dir=DIR (local disk, {size} free) to decode '
        'once and read a disk cache from the second epoch on')
  check_cache_dir(cache_dir)
  folder = key_dir(cache_dir, key)
  os.makedirs(folder, exist_ok=True)
  atomic.write_json(os.path.join(folder, _KEY), key, indent=2,
                    sort_keys=True)
  remove_abandoned(folder)
  why = f'{size} does not fit the {budget} memory budget'
  run = find_complete(folder, key)
  if run:
    return CacheChoice(DISK, f'{why}; reading the complete cache', run,
                       reused=True)
  run = os.path.join(folder, f'run-{uuid.uuid4().hex[:12]}')
  os.makedirs(run)
  atomic.write_json(os.path.join(run, _OWNER),
                    {'host': socket.gethostname(), 'pid': os.getpid()})
  _writing.add(run)
  return CacheChoice(DISK, f'{why}; writing it during the first epoch', run)


def describe(choice, split, data_dir=None):
  """The one line that says which cache a split's pipeline uses and why
  (two when a cache_dir would help)."""
  where = f' at {choice.path}' if choice.path else ''
  of = f' of {data_dir}' if data_dir else ''
  line = (f'cache of split {split!r}{of}: {choice.kind} ({choice.reason})'
          f'{where}')
  return line + (f'\n  {choice.hint}' if choice.hint else '')


def say(choice, split, data_dir=None, log=print):
  """Logs `describe` once per process and line, for the choices to
  announce."""
  if not choice.announce:
    return
  line = describe(choice, split, data_dir)
  if line not in _said:
    _said.add(line)
    log(line)


def apply(ds, choice, key):
  """The decoded dataset `ds` with the chosen cache after it.

  Args:
    ds: the decoded examples (a whole split, or this input pipeline's part).
    choice: from `choose`.
    key: the same key `choose` got (recorded in complete.json).

  Returns:
    The dataset. For DISK, its cardinality is kept where `ds` knows it when
    a complete cache is read, and unknown while the cache is written: a
    consumer told the count (Keras' validation, `predict`) stops after the
    last element without asking for the end, so tf.data would never finish
    the cache (each epoch decoding again); without a count it reads to the
    end.
  """
  if choice.kind == MEMORY:
    return ds.cache()
  if choice.kind == NONE:
    return ds
  cardinality = int(ds.cardinality())
  cached = ds.cache(choice.prefix)
  if choice.reused:
    return cached  # cache() keeps the count
  run = choice.path

  def commit():
    # tf.data renamed its files when the cache saw the end of the split;
    # only then is this reached. The marker goes last, atomically, after the
    # files are on disk.
    marker = os.path.join(run, _COMPLETE)
    if not os.path.exists(marker) and os.path.exists(
        os.path.join(run, _PREFIX + '.index')):
      for name in os.listdir(run):
        if name.startswith(_PREFIX + '.'):
          atomic.fsync_file(os.path.join(run, name))
      atomic.write_json(marker, {'key': key}, indent=2, sort_keys=True)
    return True

  spec = ds.element_spec
  marker_ds = (tf.data.Dataset.range(1)
               .map(lambda _: tf.py_function(commit, [], tf.bool))
               .filter(lambda ok: tf.logical_not(ok))
               # Never reached (the filter drops the one element): gives the
               # empty dataset the examples' structure, to concatenate.
               .map(lambda ok: tf.nest.map_structure(
                   lambda s: tf.zeros([d or 0 for d in s.shape], s.dtype),
                   spec)))
  # Its cardinality stays unknown (see Returns).
  return cached.concatenate(marker_ds)
