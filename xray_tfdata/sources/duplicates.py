"""Duplicate images: byte-identical files, and DICOM files with the same
stored pixels; one of each is kept.

No TensorFlow here; this runs before the writer imports it.
"""

import collections
import concurrent.futures
import hashlib
import os

from xray_tfdata import dicom
from xray_tfdata.sources import base

_HASH_THREADS = 8
_HASH_CHUNK = 512  # files hashed between two progress reports
# Evaluation sets stay as published: a duplicate is kept in test, then val.
_KEEP_RANK = {'test': 0, 'val': 1, 'train': 2, None: 3}


def find_duplicates(src_dir, files, prefer_evaluation_splits=True,
                    progress=base.NO_PROGRESS):
  """Finds duplicate images and keeps one of each.

  Two kinds: byte-identical files, and DICOM files with the same stored
  pixels (`dicom.pixel_digest`), since the same film is often re-encoded
  (another transfer syntax, other header values) and then shares no bytes.
  Other files are hashed (sha256) only if their sizes collide; every DICOM
  file is decoded once for its digest, as re-encoding changes the size.
  Hashing runs in threads (hashlib, file reads and the image decoders
  release the GIL). Empty files are left alone: they are all "identical"
  but are skipped later as unreadable; so are DICOM files that cannot be
  decoded, which the writer skips with the reason.

  Args:
    src_dir: the source folder.
    files: `SourceFile`s.
    prefer_evaluation_splits: keep the copy in test, then val, then train, so
      published evaluation sets stay whole; otherwise the first by path.
    progress: a `Progress` for the hashing.

  Returns:
    (kept files in the input order, duplicates [{'kept', 'dropped',
    'sha256', 'same'}] sorted by dropped path; 'same' is 'bytes' or
    'pixels').
  """
  progress.stage('looking for DICOM files (their pixels are hashed)',
                 len(files))
  is_dicom = {}
  for f in files:
    is_dicom[f.path] = dicom.is_dicom(os.path.join(src_dir, f.path))
    progress.update(len(is_dicom))
  progress.end()
  by_size = collections.defaultdict(list)
  for f in files:
    if f.num_bytes > 0 and not is_dicom[f.path]:
      by_size[f.num_bytes].append(f)
  candidates = [f for group in by_size.values() if len(group) > 1
                for f in group]
  candidates += [f for f in files if f.num_bytes > 0 and is_dicom[f.path]]

  def digest_of(f):
    path = os.path.join(src_dir, f.path)
    return _pixel_sha256(path) if is_dicom[f.path] else _sha256(path)

  progress.stage('hashing files of equal size for duplicates',
                 len(candidates))
  digests = []
  with concurrent.futures.ThreadPoolExecutor(_HASH_THREADS) as pool:
    # In chunks: one map of all the files would submit them all before the
    # first result, and report nothing until nearly the end.
    for start in range(0, len(candidates), _HASH_CHUNK):
      digests.extend(pool.map(digest_of,
                              candidates[start:start + _HASH_CHUNK]))
      progress.update(len(digests))
  progress.end()
  by_hash = collections.defaultdict(list)
  for f, digest in zip(candidates, digests):
    if digest is not None:  # unreadable now: the writer skips it with a reason
      # Pixel and byte digests never share a group.
      by_hash[(is_dicom[f.path], digest)].append(f)

  def keep_rank(f):
    if prefer_evaluation_splits:
      return (_KEEP_RANK[f.source_split], f.path)
    return (f.path,)

  dropped = set()
  duplicates = []
  for (pixels, digest), group in by_hash.items():
    group.sort(key=keep_rank)
    for f in group[1:]:
      dropped.add(f.path)
      duplicates.append({'kept': group[0].path, 'dropped': f.path,
                         'sha256': digest,
                         'same': 'pixels' if pixels else 'bytes'})
  duplicates.sort(key=lambda d: d['dropped'])
  return [f for f in files if f.path not in dropped], duplicates


def _pixel_sha256(path):
  """`dicom.pixel_digest`, or None if the file cannot be decoded (the
  writer skips it with the reason)."""
  try:
    return dicom.pixel_digest(path)
  except Exception:  # pylint: disable=broad-except  (reported by the writer)
    return None


def _sha256(path):
  """Hex digest of a file, or None if it cannot be read (deleted or made
  unreadable since the scan)."""
  digest = hashlib.sha256()
  try:
    with open(path, 'rb') as f:
      for block in iter(lambda: f.read(1 << 20), b''):
        digest.update(block)
  except OSError:
    return None
  return digest.hexdigest()


