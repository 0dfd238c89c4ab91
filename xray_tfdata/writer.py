"""Converting chest X-ray image folders into TFRecord shards.

`convert(src_dir, out_dir)` scans and plans (`sources`), decodes and resizes
in worker processes (`imaging`), and writes TFDS-named shards
(`schema.shard_filename`) plus TFDS' metadata (`dataset_info.json`,
`features.json`), so that `tfds.builder_from_directory(out_dir)` reads it,
and our own, `xray_info.json`.

How the output is laid out:
  * Within a split, examples are in a seeded order that depends only on the
    seed and the file names (`sources.stable_order`), so every shard mixes
    classes and patients, and the same inputs and seed give byte-identical
    shards (no timestamps or worker ids inside them).
  * Shards of a split get even slices of that order. Files that fail to
    decode are only known afterwards, so a shard with a skipped file holds
    one example fewer; the exact count of every shard is in
    xray_info.json (and TFDS' dataset_info.json).
  * Shards per split: `num_shards` if given, else
    max(ceil(num_examples * height * width / 128 MiB), min(8, num_examples)):
    at least 8 so reads interleave and split across up to 8 workers, and
    no shard over about 128 MiB (the uncompressed size bounds the PNG size).

Safety: everything is written into `<out_dir>.partial/`, xray_info.json
last, and the folder is renamed into place only when complete. An interrupted
run (Ctrl-C, kill -9) leaves at most the `.partial` folder, never an out_dir
that looks finished. An existing dataset is replaced only with `overwrite`,
and only after the new one is complete. out_dir must be a local path (the
reader takes any tf.io.gfile path). Two runs must not write the same out_dir
at the same time.

Resume: each shard is written as `<shard>.tmp`, fsynced and renamed when
closed, and then recorded in `.partial/_progress/` with its examples and
skipped files (written atomically, `atomic.write_json`), next to a
fingerprint of the arguments and of every source file (path, size,
modification time). A damaged record (a write cut short) is reported and
its shard converted again. A full disk ends the run with
`atomic.NoSpaceError` naming the file, removes the unfinished `.tmp` and
keeps the finished shards. A rerun with the same fingerprint keeps the recorded
shards and converts only the rest; any other `.partial` folder is removed.
Shards do not depend on each other, so a resumed dataset is byte-identical
to an uninterrupted one.

Content hash: as each shard is written its records are folded into a
SHA-256 (`dataset_info.ShardContentHash`), kept in its progress record and
in xray_info.json's shard entry ('content_sha256'), so the dataset's
fingerprint (`DatasetInfo.fingerprint`: the disk cache's key and the
resume check) follows the labels and pixels, not only the shards' sizes.

RSNA extras and privacy: an RSNA dataset's records also carry the detailed
class and the boxes (`schema.RSNA_FEATURES`), the boxes scaled to the stored
image (`imaging.stored_box`); a SIIM dataset's records carry the union of
each image's pneumothorax regions as a mask at the stored size
(`schema.MASK`, `sources.rle`). A DICOM file's patient id (its PatientID;
RSNA's patientId, which is also the file name) is never copied into the
shards: image/patient_id holds `hashed_patient_id(patient id, salt)`
(HMAC-SHA256, 16 hex digits), and where the file stem is that id
(RSNA), image/filename has the hash in its place. The salt is
`patient_id_salt` if given (kept by the user, never written: the same salt
gives the same keys in every conversion, and lets its owner find one
patient's records), else drawn at random per conversion and kept only in
`.partial/_progress/` for a resume, deleted with it: then the keys group the
dataset's images and link to nothing outside it, not even for whoever
converted it. Kermany's keys (parsed from file names such as person12_...)
are stored as they are.

Multi-label sets (NIH, CheXpert, MIMIC-CXR-JPG, a labelled CSV;
`sources.tables`): the records hold `schema.LABELS` (raw codes) and the
`schema.MULTILABEL_FEATURES` instead of the class; the patient and study ids,
and the path segments that hold them, are hashed as DICOM patient ids are.
xray_info.json adds 'label_names' (also its 'class_names'), per split
'label_code_counts' and, as 'class_counts', the positives per label;
'unlabelled' (image files no label row names), 'split' (the method and what
it did) and 'patient_overlap', counted again just before the dataset is
finished and refused unless 0. The same shards, `.partial` folder, resume
and fingerprint (which covers the labels read from the CSVs) as above.

Speed: decoding runs in `num_workers` processes started with 'spawn' (this
process has TensorFlow loaded, whose threads do not survive a fork; the
workers import only `xray_tfdata.imaging`). Results come back in order
through `Pool.imap`, and this process only serializes and writes them, so
memory stays flat.
"""

import dataclasses
import datetime
import hashlib
import hmac
import json
import math
import multiprocessing
import os
import re
import secrets
import shutil
import sys
import time
import unicodedata

from xray_tfdata import atomic
from xray_tfdata import checks
from xray_tfdata import dataset_info
from xray_tfdata import dicom
from xray_tfdata import errors
from xray_tfdata import imaging
from xray_tfdata import reference
from xray_tfdata import runtime
from xray_tfdata import schema
from xray_tfdata import sources
from xray_tfdata.sources import rle

PARTIAL_SUFFIX = '.partial'
# Next to out_dir while a conversion writes it (see atomic.exclusive).
LOCK_SUFFIX = '.lock'
_PROGRESS_DIR = '_progress'  # in .partial: fingerprint and finished shards
_TARGET_SHARD_BYTES = 128 << 20
_MIN_SHARDS = 8
# Tasks per worker round trip: big enough to keep the pipe's overhead small
# next to a decode (BUILD_NOTES.md), small enough for load balance.
_CHUNKSIZE = 4
_LIST_LIMIT = 10  # skipped files and duplicates listed in the printed summary
# Largest stored side: a decode holds a few float copies of the image per
# worker, about 0.3 GB at 4096 px but 160 GB at 100000.
MAX_IMAGE_SIZE = 4096
# In .partial/_progress: the random patient id salt of a run without a given
# one, so that a resumed run hashes as the interrupted one did.
_SALT_FILENAME = 'patient_id_salt'
# Decoding packages whose versions go into xray_info.json for DICOM sources.
_DECODING_PACKAGES = ('pydicom', 'pillow', 'numpy', 'pylibjpeg',
                      'pylibjpeg-libjpeg', 'pylibjpeg-openjpeg',
                      'pylibjpeg-rle', 'pyjpegls', 'python-gdcm')


class OutputError(errors.XrayError):
  """A problem with out_dir or the output arguments (a user error)."""


@dataclasses.dataclass
class WriteOptions:
  """How a conversion writes, whatever the source.

  Attributes:
    image_size: stored size, an int (square) or (height, width).
    num_shards: shards per split; None for automatic (module docstring).
    num_workers: decoding processes; None for all cores, 1 for none (all in
      this process). Workers are spawned, so a script that calls `convert`
      needs the usual `if __name__ == '__main__':` guard.
    seed: orders examples within splits and seeds the split drawer.
    overwrite: replace a dataset already in out_dir.
    name: dataset name, the prefix of the shard file names; None derives
      it from the source folder's name (`dataset_name`).
    resume: keep the finished shards of an interrupted run with the same
      inputs and arguments (and keep this run's if it is interrupted);
      otherwise start from scratch and clean up on failure.
    progress: print progress lines (stderr, `sources.Progress`: planning
      and decoding stages longer than its interval) and a summary (stdout).
    voi: VOI step for DICOM files (`checks.VOI_POLICIES`): 'auto' (the
      file's VOI LUT, else its window, else the full stored range),
      'window' (the window, else the full range) or 'full'.
    patient_id_salt: secret for the hashed patient ids (module docstring);
      None draws a random one, discarded at the end.
  """
  image_size: int | tuple = reference.IMAGE_SIZE
  num_shards: int | None = None
  num_workers: int | None = None
  seed: int = 0
  overwrite: bool = False
  name: str | None = None
  resume: bool = True
  progress: bool = True
  voi: str = 'auto'
  patient_id_salt: str | None = None


# xray_info.json records these split and patient arguments for every source
# (as it always has), the source's own values over them.
_RECORDED_SOURCE_ARGUMENTS = {
    'resplit': False, 'keep_test': False, 'val_counts': None,
    'test_counts': None, 'val_fraction': None, 'test_fraction': None,
    'patient_id_regex': None, 'patient_csv': None}


def convert(src_dir, out_dir, source=None, write=None, **options):
  """Converts a source tree into TFRecord shards, TFDS' metadata and
  xray_info.json.

    convert('chest_xray', 'data/kermany_224')
    convert('NIH', 'data/nih_224', sources.nih.Options(split='resplit'),
            WriteOptions(image_size=256))
    convert('chest_xray', 'data/k', resplit=True, val_counts={...},
            test_counts={...}, image_size=224)   # the tool's flags by name

  Args:
    src_dir: the source folder (`sources`: class folders, RSNA, NIH,
      CheXpert, MIMIC or a labelled folder).
    out_dir: local output folder; created, must not hold a dataset unless
      `overwrite`.
    source: the source's options (a `sources.<module>.Options`); None
      builds them from `options` (`sources.options`: the layout detected
      unless `layout` is given).
    write: a `WriteOptions`; None builds it from `options`.
    **options: instead of `source` and `write`, their fields by name, as
      tools/make_tfrecords' flags: `WriteOptions`' and the source's.

  Returns:
    The xray_info.json contents as a dict.

  Raises:
    sources.SourceError: bad source folder, split or source options (a
      flag the source does not take).
    OutputError: out_dir holds a dataset (without overwrite) or other
      files, its folder cannot be created, or bad image_size, num_shards,
      num_workers, name, voi or patient_id_salt.
    atomic.NoSpaceError: the disk filled up; the finished shards are kept
      (with resume) and a rerun after freeing space resumes.
    atomic.LockedError: another conversion is writing out_dir.
  """
  start = time.perf_counter()
  created = datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds')
  if write is None:
    write = WriteOptions(**{f.name: options.pop(f.name)
                            for f in dataclasses.fields(WriteOptions)
                            if f.name in options})
  if source is None:
    source = sources.options(src_dir, **options)
  elif options:
    raise TypeError(f'give the source\'s options in `source`, not as '
                    f'{", ".join(options)}')
  name = dataset_name(src_dir) if write.name is None else write.name
  stored_size = _check_arguments(write.image_size, write.num_shards,
                                 write.num_workers, name)
  source.check()
  voi, progress, seed = write.voi, write.progress, write.seed
  patient_id_salt = write.patient_id_salt
  if voi not in checks.VOI_POLICIES:
    raise OutputError(f'voi must be one of {", ".join(checks.VOI_POLICIES)}, '
                      f'got {voi!r}')
  if patient_id_salt is not None and not patient_id_salt:
    raise OutputError('patient_id_salt is empty; give a secret, or none for '
                      'a random one')
  num_workers = _workers_that_fit(write.num_workers or runtime.cpu_count(),
                                  stored_size, progress)
  out_dir = os.path.abspath(out_dir)
  sources.check_out_dir(src_dir, out_dir)
  _check_existing_out_dir(out_dir, write.overwrite)
  parent = os.path.dirname(out_dir)
  try:
    os.makedirs(parent, exist_ok=True)
  except OSError as e:
    raise OutputError(f'cannot create the folder {parent} of out_dir: '
                      f'{e.strerror}; choose another out_dir') from None
  # One converter per out_dir: a second would write into the first's
  # .partial folder, and remove it when it failed.
  with atomic.exclusive(out_dir + LOCK_SUFFIX, f'out_dir {out_dir}'):
    # Again, under the lock: a run that held it may have just finished.
    _check_existing_out_dir(out_dir, write.overwrite)
    # One facility for every stage's progress lines: planning's and the
    # decoding's below.
    report = sources.Progress(progress)
    plan = sources.plan(src_dir, source, seed, report)
    shards = plan_shards(plan, name, write.num_shards, seed, stored_size)
    recorded = dict(_RECORDED_SOURCE_ARGUMENTS, **source.arguments())
    # In the order xray_info.json has always listed them.
    arguments = {'image_size': list(stored_size),
                 **{k: recorded.pop(k) for k in _RECORDED_SOURCE_ARGUMENTS},
                 'num_shards': write.num_shards, 'seed': seed, 'name': name,
                 'layout': recorded.pop('layout'), 'voi': voi,
                 # Whether one was given; the salt itself is never written.
                 'patient_id_salt': 'given' if patient_id_salt else 'random',
                 **recorded}
    partial = out_dir + PARTIAL_SUFFIX
    fingerprint = _fingerprint(plan, shards, arguments)
    if patient_id_salt:
      # Another salt gives other keys: its shards must not be mixed with these.
      fingerprint += hmac.new(patient_id_salt.encode(), b'fingerprint',
                              'sha256').hexdigest()
    finished = _prepare_partial(partial, fingerprint, write.resume)
    salt = _patient_id_salt(partial, patient_id_salt)
    if finished and progress:
      print(f'resuming: {len(finished)} of {len(shards)} shards were finished '
            f'by an interrupted run in {partial}')
    num_tasks = sum(len(files) for _, filename, files in shards
                    if filename not in finished)
    pool = None
    if num_workers > 1 and num_tasks > _CHUNKSIZE:
      # spawn, not fork: this process is about to load TensorFlow, whose
      # threads do not survive a fork. Started before that import, so the
      # workers' interpreters start up while it runs.
      pool = multiprocessing.get_context('spawn').Pool(
          min(num_workers, math.ceil(num_tasks / _CHUNKSIZE)),
          initializer=imaging.ignore_interrupts)
    try:
      # Imported before the timed stage, so images_per_second compares worker
      # counts fairly (the import takes seconds).
      import tensorflow as tf  # pylint: disable=g-import-not-at-top,unused-import
      stage_start = time.perf_counter()
      written, skipped, content = _write_shards(
          plan, shards, partial, stored_size, pool, report, finished, voi,
          salt)
      timing = {'elapsed_seconds': round(time.perf_counter() - start, 2),
                'decode_write_seconds': round(time.perf_counter() - stage_start,
                                              2)}
      info = _dataset_info(plan, shards, partial, written, skipped, stored_size,
                           name, arguments, created, timing, num_workers,
                           content)
      shutil.rmtree(os.path.join(partial, _PROGRESS_DIR))
      # TFDS' metadata (imports TFDS here, never in the workers), then ours.
      schema.write_tfds_metadata(partial, info)
      # Written last: its presence is what marks a dataset as finished.
      atomic.write_json(os.path.join(partial, schema.INFO_FILENAME), info,
                        indent=1)
      _move_into_place(partial, out_dir)
    except BaseException:
      if not write.resume:
        shutil.rmtree(partial, ignore_errors=True)
      raise
    finally:
      if pool is not None:
        pool.terminate()  # all results are in, or we are failing: stop now
        pool.join()
  if progress:
    print_summary(info, out_dir)
  return info


def dataset_name(src_dir):
  """A dataset name from the source folder's name, as TFDS names datasets:
  lower case letters, digits and '_', starting with a letter.

  'chest_xray' -> 'chest_xray'; 'My X-rays (2024)' -> 'my_x_rays_2024';
  '2024-scans' -> 'd2024_scans'; a name with no letter or digit -> 'dataset'.

  Args:
    src_dir: the source folder (a trailing '/' and '.' are resolved).
  """
  folder = os.path.basename(os.path.abspath(src_dir))
  # 'Röntgen' -> 'rontgen': accents dropped, not the letters.
  folder = unicodedata.normalize('NFKD', folder).encode(
      'ascii', 'ignore').decode()
  name = re.sub(r'[^a-z0-9]+', '_', folder.lower()).strip('_')
  if not name:
    return 'dataset'
  return name if name[0].isalpha() else 'd' + name


def _fingerprint(plan, shards, arguments):
  """A digest of everything the shards depend on: arguments, format, and
  every source file's path, size and modification time, in shard order."""
  digest = hashlib.sha256(json.dumps(
      [schema.FORMAT_VERSION, imaging.RESIZE_FILTER, arguments,
       os.path.abspath(plan.src_dir)], sort_keys=True).encode())
  for _, filename, files in shards:
    digest.update(filename.encode())
    for f in files:
      try:
        mtime = os.stat(os.path.join(plan.src_dir, f.path)).st_mtime_ns
      except OSError:
        mtime = -1  # gone since the scan: its decode reports why
      # The patient id is stored, and may come from a CSV that changed.
      digest.update(f'\0{f.path}\0{f.num_bytes}\0{mtime}\0{f.patient_id}'
                    .encode())
      if f.labels is not None:
        # So are a multi-label record's labels and fields, from CSVs.
        digest.update(json.dumps(
            [f.labels, f.view, f.sex, f.age_years, f.study_id]).encode())
      if f.label_method is not None or f.stored_depth is not None:
        # And PadChest's method and depth (the latter sets the pixels).
        digest.update(json.dumps([f.label_method, f.stored_depth]).encode())
      if f.mask_rle is not None:
        digest.update(json.dumps(f.mask_rle).encode())  # SIIM's regions
  return digest.hexdigest()


def hashed_patient_id(patient_id, salt):
  """The key stored for a patient id that must not be copied (module
  docstring): HMAC-SHA256 of the id under the salt, 16 hex digits (64
  bits: among a million patients, two share a key with a chance of about
  3 in 10^8).

  Args:
    patient_id: the source's patient id (RSNA's patientId).
    salt: the secret, a non-empty string.

  Returns:
    A 16-character hex string.
  """
  return hmac.new(salt.encode('utf-8'), patient_id.encode('utf-8'),
                  'sha256').hexdigest()[:16]


def _patient_id_salt(partial, given):
  """The given salt, or the random one of this (possibly resumed) run,
  kept in .partial/_progress/ only."""
  if given:
    return given
  path = os.path.join(partial, _PROGRESS_DIR, _SALT_FILENAME)
  if os.path.isfile(path):
    with open(path, encoding='utf-8') as f:
      salt = f.read()
    if salt:
      return salt
  salt = secrets.token_hex(16)
  atomic.write_text(path, salt)
  return salt


def _stored_identity(f, salt):
  """(filename, patient_id) as stored for source file `f`: a DICOM file's
  patient id hashed, and in its file name too where the stem is that id
  (RSNA); a multi-label file's (`hash_ids`) hashed, its `private_parts`
  replaced in the file name; other files' as scanned."""
  if f.hash_ids:
    return (_private_path(f.path, f.private_parts, salt),
            hashed_patient_id(f.patient_id, salt))
  if not f.is_dicom:
    return f.path, f.patient_id
  key = hashed_patient_id(f.patient_id, salt)
  folder, name = os.path.split(f.path)
  stem, extension = os.path.splitext(name)
  name = key + extension if stem == f.patient_id else name
  return f'{folder}/{name}' if folder else name, key


def _stored_mask(f, original_size, stored_size):
  """The PNG of file `f`'s mask at the stored size (`sources.rle`), None
  for a file without one (not SIIM), or the reason it cannot be made (the
  image's size changed since the scan checked the runs against it)."""
  if f.mask_rle is None:
    return None
  try:
    mask = rle.union(f.mask_rle, *original_size)
  except rle.RleError as e:
    return f'mask: {e} (changed since the scan?)'
  return imaging.encode_png(rle.stored_mask(mask, stored_size))


def _stored_study_id(f, salt):
  """The study id as stored: hashed where the file's ids identify a
  person; '' when the source has none."""
  if not f.study_id:
    return ''
  return hashed_patient_id(f.study_id, salt) if f.hash_ids else f.study_id


def _private_path(path, private_parts, salt):
  """`path` with each segment named in `private_parts` ((text, id)) as
  the hash of its id: a whole segment, a file name's stem, or the part of a
  stem before its first '_' (NIH's 00000001_000.png); an id of None drops
  the segment."""
  table = dict(private_parts)
  segments = []
  for segment in path.split('/'):
    stem, extension = os.path.splitext(segment)
    prefix, sep, rest = stem.partition('_')
    if segment in table:
      if table[segment] is not None:
        segments.append(hashed_patient_id(table[segment], salt))
    elif stem in table and table[stem] is not None:
      segments.append(hashed_patient_id(table[stem], salt) + extension)
    elif sep and prefix in table and table[prefix] is not None:
      segments.append(hashed_patient_id(table[prefix], salt) + sep + rest +
                      extension)
    else:
      segments.append(segment)
  return '/'.join(segments)


def _decoding_packages():
  """{package: version} of the installed DICOM decoding packages."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  versions = {}
  for package in _DECODING_PACKAGES:
    try:
      versions[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      pass
  return versions


def _prepare_partial(partial, fingerprint, resume):
  """Creates the `.partial` folder, or reuses one an interrupted run left.

  Finished shards are reused only if the run had the same fingerprint and
  the shard file still has the size recorded when it was closed. A damaged
  record (empty or not JSON: a write cut short) is reported on stderr and
  its shard converted again; a damaged fingerprint starts over.

  A record without a content hash (written by a version before them) is
  not reused: its shard is converted again, so that every shard of the
  dataset has one (`dataset_info.ShardContentHash`).

  Returns:
    {shard filename: {'written': [paths], 'skipped': [...], 'num_bytes',
    'content_sha256'}}.

  Raises:
    atomic.NoSpaceError: the disk is full.
  """
  progress_dir = os.path.join(partial, _PROGRESS_DIR)
  fingerprint_path = os.path.join(progress_dir, 'fingerprint')
  if os.path.isdir(partial):
    finished = {}
    if resume and os.path.isfile(fingerprint_path):
      with open(fingerprint_path, 'rb') as f:
        same = f.read() == fingerprint.encode()
      for name in sorted(os.listdir(progress_dir)) if same else ():
        if not name.endswith('.json'):
          continue
        record_path = os.path.join(progress_dir, name)
        try:
          record = atomic.read_json(record_path)
          if not isinstance(record, dict):
            raise atomic.DamagedStateError(
                f'{record_path} is damaged: not a record')
        except atomic.DamagedStateError as e:
          print(f'warning: {e}; converting that shard again',
                file=sys.stderr)
          os.remove(record_path)
          continue
        shard = os.path.join(partial, name[:-len('.json')])
        if (os.path.isfile(shard) and
            os.path.getsize(shard) == record.get('num_bytes') and
            dataset_info.CONTENT_KEY in record):
          finished[name[:-len('.json')]] = record
      if same:
        return finished
    shutil.rmtree(partial)  # another run's leftovers: start over
  os.makedirs(progress_dir)
  atomic.write_text(fingerprint_path, fingerprint)
  return {}


def _check_arguments(image_size, num_shards, num_workers, name):
  if isinstance(image_size, int):
    image_size = (image_size, image_size)
  if (len(image_size) != 2 or
      not all(isinstance(s, int) and s >= 1 for s in image_size)):
    raise OutputError(f'image_size must be a positive int or (height, width), '
                      f'got {image_size!r}')
  if max(image_size) > MAX_IMAGE_SIZE:
    raise OutputError(f'image_size {image_size!r} is over {MAX_IMAGE_SIZE} '
                      'pixels a side; choose a smaller --image_size')
  if num_shards is not None and num_shards < 1:
    raise OutputError(f'num_shards must be at least 1, got {num_shards}')
  if num_workers is not None and num_workers < 1:
    raise OutputError(f'num_workers must be at least 1, got {num_workers}')
  if not name or '/' in name or os.sep in name or name.startswith('.'):
    raise OutputError(f'name {name!r} cannot prefix a file name; use letters, '
                      'digits, - and _')
  return tuple(image_size)


def _check_existing_out_dir(out_dir, overwrite):
  """Refuses to touch an existing dataset (without overwrite) or folder that
  is not a dataset (ever: overwrite must not delete someone's files)."""
  if not os.path.exists(out_dir):
    return
  if not os.path.isdir(out_dir):
    raise OutputError(f'out_dir {out_dir} is a file; choose a folder')
  entries = os.listdir(out_dir)
  if not entries:
    return
  # Format 1 datasets have only dataset_info.json (then ours).
  if schema.INFO_FILENAME in entries or schema.TFDS_INFO_FILENAME in entries:
    if not overwrite:
      raise OutputError(f'out_dir {out_dir} already holds a dataset; pass '
                        '--overwrite to replace it, or choose another out_dir')
    return
  raise OutputError(f'out_dir {out_dir} exists, is not empty and holds no '
                    f'{schema.INFO_FILENAME}; choose another out_dir (this '
                    'tool does not delete folders it did not write)')


def plan_shards(plan, name, num_shards, seed, stored_size):
  """Orders each split and cuts it into shards.

  Returns:
    [(split, shard filename, [SourceFile])] in split and shard order.
  """
  height, width = stored_size
  shards = []
  for split, files in plan.splits.items():
    if not files:
      continue
    by_path = {f.path: f for f in files}
    order = [by_path[p] for p in sources.stable_order(by_path, seed, split)]
    count = num_shards or max(
        math.ceil(len(order) * height * width / _TARGET_SHARD_BYTES),
        min(_MIN_SHARDS, len(order)))
    count = min(count, len(order))  # no empty shards
    for i in range(count):
      shards.append((split, schema.shard_filename(name, split, i, count),
                     order[i * len(order) // count:
                           (i + 1) * len(order) // count]))
  return shards


def _write_shards(plan, shards, folder, stored_size, pool, progress,
                  finished, voi='auto', salt=None):
  """Decodes the files and writes the shards not in `finished` into `folder`.

  DICOM files are decoded with VOI policy `voi`; their patient ids are
  hashed with `salt` (`_stored_identity`).

  Decoding runs in `pool`, or in this process if it is None; results come
  back in task order. `progress` (a `sources.Progress`) reports the images
  done, a stage of its own.

  Returns:
    ({shard filename: [SourceFile written]}, [{'path', 'reason'}],
    {shard filename: its content hash, `dataset_info.ShardContentHash`}).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  todo = [(split, filename, files) for split, filename, files in shards
          if filename not in finished]
  tasks = [(os.path.join(plan.src_dir, f.path), stored_size, voi,
            f.stored_depth) for _, _, files in todo for f in files]
  written = {}
  content = {}
  skipped = list(plan.skipped)  # unreadable entries found by the scan
  for _, filename, files in shards:
    if filename in finished:
      done = set(finished[filename]['written'])
      written[filename] = [f for f in files if f.path in done]
      skipped += finished[filename]['skipped']
      content[filename] = finished[filename][dataset_info.CONTENT_KEY]
  progress.stage('decoding and writing', len(tasks), 'images')
  if pool is not None:
    results = pool.imap(imaging.decode_and_resize, tasks, _CHUNKSIZE)
  else:
    results = map(imaging.decode_and_resize, tasks)
  for _, filename, files in todo:
    path = os.path.join(folder, filename)
    shard_written, shard_skipped = [], []
    # Folded here, as the records are written, so no reader ever hashes.
    shard_content = dataset_info.ShardContentHash()
    try:
      with atomic.naming(path + '.tmp'):
        with tf.io.TFRecordWriter(path + '.tmp') as shard:
          for f in files:
            result = next(results)
            progress.advance()
            if isinstance(result, str):
              shard_skipped.append({'path': f.path, 'reason': result})
              continue
            png, original_height, original_width = result
            filename_stored, patient_id = _stored_identity(f, salt)
            boxes = None if f.boxes is None else [
                imaging.stored_box(box, (original_height, original_width),
                                   stored_size) for box in f.boxes]
            if f.labels is None:
              record = schema.encode_example(
                  png, stored_size[0], stored_size[1], f.label,
                  f.class_name, filename_stored, patient_id,
                  original_height, original_width, f.detailed_class,
                  boxes)
            else:
              mask = _stored_mask(f, (original_height, original_width),
                                  stored_size)
              if isinstance(mask, str):
                shard_skipped.append({'path': f.path, 'reason': mask})
                continue
              record = schema.encode_example(
                  png, stored_size[0], stored_size[1], None, None,
                  filename_stored, patient_id, original_height,
                  original_width, labels=f.labels, view=f.view,
                  sex=f.sex, age_years=f.age_years,
                  study_id=_stored_study_id(f, salt),
                  label_method=f.label_method, boxes=boxes,
                  box_labels=f.box_labels if boxes is not None else None,
                  box_readers=f.box_readers, num_readers=f.num_readers,
                  marked_by=f.marked_by, mask=mask)
            shard.write(record)
            shard_content.update(record)
            shard_written.append(f)
        atomic.fsync_file(path + '.tmp')
    except BaseException:
      # Never complete, so never reused: free its space (a full disk) now.
      _remove_quietly(path + '.tmp')
      raise
    os.replace(path + '.tmp', path)
    # The shard's record, for a resumed run: after the rename, so a
    # record always describes a complete shard.
    atomic.write_json(
        os.path.join(folder, _PROGRESS_DIR, filename + '.json'),
        {'written': [f.path for f in shard_written],
         'skipped': shard_skipped, 'num_bytes': os.path.getsize(path),
         dataset_info.CONTENT_KEY: shard_content.hexdigest()})
    written[filename] = shard_written
    content[filename] = shard_content.hexdigest()
    skipped += shard_skipped
  progress.end()
  skipped.sort(key=lambda s: s['path'])
  return written, skipped, content


def _dataset_info(plan, shards, folder, written, skipped, stored_size, name,
                  arguments, created, timing, num_workers, content):
  """Counts what the conversion wrote and fills in the xray_info.json
  layout (`dataset_info.build_info`); each shard's entry holds its content
  hash (`content`: {shard filename: hex}, from `_write_shards`).

  images_per_second is measured over the decode-and-write stage (workers
  started to last shard closed), without scanning and the TensorFlow import;
  elapsed_seconds is the whole call.
  """
  splits = {}
  label_names = plan.label_names
  for split, filename, _ in shards:
    entry = splits.setdefault(split, {
        'num_examples': 0,
        'class_counts': dict.fromkeys(plan.class_names, 0),
        'shards': []})
    if label_names is not None and 'label_code_counts' not in entry:
      entry['label_code_counts'] = {
          name: {str(code): 0 for code in schema.LABEL_CODES}
          for name in label_names}
    examples = written[filename]
    entry['num_examples'] += len(examples)
    for f in examples:
      if label_names is None:
        entry['class_counts'][f.class_name] += 1
        continue
      if f.marked_by is not None:
        # VinDr-CXR: images per number of readers, and per label per
        # number of readers who marked it (0 included).
        readers = entry.setdefault('reader_counts', {})
        readers[str(f.num_readers)] = readers.get(str(f.num_readers), 0) + 1
        marked = entry.setdefault('marked_by_counts', {
            name: {} for name in label_names})
        for name, k in zip(label_names, f.marked_by):
          marked[name][str(k)] = marked[name].get(str(k), 0) + 1
      for name, code in zip(label_names, f.labels):
        entry['label_code_counts'][name][str(code)] += 1
        # class_counts of a multi-label split: the positives per label.
        entry['class_counts'][name] += code == schema.POSITIVE
    entry['shards'].append({
        'filename': filename,
        'num_examples': len(examples),
        'num_bytes': os.path.getsize(os.path.join(folder, filename)),
        dataset_info.CONTENT_KEY: content[filename]})
  num_written = sum(len(v) for v in written.values())
  all_files = [f for _, _, files in shards for f in files]
  extra_features = []
  if any(f.detailed_class is not None for f in all_files):
    extra_features.append(schema.DETAILED_CLASS)
  if any(f.boxes is not None for f in all_files):
    extra_features.extend(schema.BOX_KEYS)
  if any(f.label_method is not None for f in all_files):
    extra_features.append(schema.LABEL_METHOD)
  if any(f.box_labels is not None for f in all_files):
    extra_features.extend((schema.BOX_LABEL, schema.BOX_READER))
  if any(f.num_readers is not None for f in all_files):
    extra_features.extend(schema.READER_FEATURES)
  if any(f.mask_rle is not None for f in all_files):
    extra_features.append(schema.MASK)
  dicom_sources = any(f.path.lower().endswith(dicom.EXTENSIONS)
                      for f in all_files)
  patient_id = None
  if any(f.hash_ids for f in all_files):
    patient_id = (
        'hashed, as image/study_id and the ids in image/filename: HMAC-SHA256 '
        'of the source id, 16 hex digits, salt '
        + ('given by the user (not stored)' if
           arguments['patient_id_salt'] == 'given' else
           'random and discarded'))
  elif any(f.is_dicom for f in all_files):
    patient_id = (
        'hashed: HMAC-SHA256 of the source id, 16 hex digits, salt '
        + ('given by the user (not stored)' if
           arguments['patient_id_salt'] == 'given' else
           'random and discarded'))
  return dataset_info.build_info(
      name=name, class_names=plan.class_names, stored_size=stored_size,
      resize_filter=imaging.RESIZE_FILTER, splits=splits,
      src_dir=plan.src_dir, layout=plan.layout, arguments=arguments,
      split_counts=_written_split_counts(plan, splits),
      counts={'scanned': plan.num_scanned, 'written': num_written,
              'skipped': len(skipped), 'duplicates': len(plan.duplicates),
              **({'unlabelled': len(plan.unlabelled)}
                 if label_names is not None else {})},
      skipped=skipped, duplicates=plan.duplicates, ignored=plan.ignored,
      created=created, timing=timing, num_workers=num_workers,
      extra_features=extra_features,
      dicom_voi=arguments['voi'] if dicom_sources else None,
      decoding_packages=_decoding_packages() if dicom_sources else None,
      patient_id=patient_id, label_names=label_names,
      unlabelled=plan.unlabelled if label_names is not None else None,
      split_info=_written_split_info(plan, splits))


def _written_split_info(plan, splits):
  """A multi-label plan's split_info with the patient overlap counted
  again, over every planned file (a superset of those written), just before
  the dataset is finished, and the images of each split as written (None
  for single-label plans).

  Raises:
    sources.SourceError: a patient in two written splits (refused: the
      dataset is not finished).
  """
  if plan.split_info is None:
    return None
  info = dict(plan.split_info)
  if 'images' in info:
    info['images'] = dict(info['images'], actual={
        split: entry['num_examples'] for split, entry in splits.items()})
  info['patient_overlap'] = sources.splits.check_patient_overlap(
      plan.splits)
  if info['patient_overlap']['patients_in_more_than_one_split']:
    raise sources.SourceError('a patient is in two splits; this is a bug of '
                              'the split planning: please report it')
  return info


def _written_split_counts(plan, splits):
  """The plan's split counts with 'actual' as the shards hold them and,
  where a drawn split holds fewer than requested, 'short' by how many per
  class (a file that failed to decode, or no patient that fit the gap);
  None without a drawn split."""
  if plan.split_counts is None:
    return None
  requested = plan.split_counts['requested']
  actual = {split: dict(entry['class_counts'])
            for split, entry in splits.items()}
  short = {}
  for split, counts in requested.items():
    gaps = {c: n - actual.get(split, {}).get(c, 0) for c, n in counts.items()}
    if any(gap > 0 for gap in gaps.values()):
      short[split] = {c: max(gap, 0) for c, gap in gaps.items()}
  result = {'requested': requested, 'actual': actual}
  if short:
    result['short'] = short
  return result


def _move_into_place(partial, out_dir):
  """Renames the finished `partial` folder to out_dir (replacing a dataset
  there only now, when the new one is complete)."""
  if os.path.isdir(out_dir):
    old = f'{out_dir}.old-{os.getpid()}'
    os.rename(out_dir, old)
    os.rename(partial, out_dir)
    shutil.rmtree(old)
  else:
    os.rename(partial, out_dir)


def print_summary(info, out_dir):
  """Prints what a conversion did (counts, splits, skipped files)."""
  counts = info['counts']
  lines = [
      f'converted {info["src_dir"]} ({info["layout"]} layout) -> {out_dir} in '
      f'{info["elapsed_seconds"]:.1f} s; decode and write: '
      f'{info["decode_write_seconds"]:.1f} s, {info["images_per_second"]:.0f} '
      f'images/s with {info["num_workers"]} worker(s)',
      f'  scanned {counts["scanned"]} = written {counts["written"]} + skipped '
      f'{counts["skipped"]} + duplicates {counts["duplicates"]}']
  if 'unlabelled' in info:
    lines[-1] += f'; unlabelled images {counts["unlabelled"]}'
  for split, entry in info['splits'].items():
    per_class = ', '.join(f'{c} {n}' for c, n in entry['class_counts'].items())
    what = 'positives: ' if 'label_names' in info else ''
    lines.append(f'  {split}: {entry["num_examples"]} ({what}{per_class}) in '
                 f'{len(entry["shards"])} shards')
  if 'patient_overlap' in info:
    moved = (info.get('split') or {}).get('source_overlap') or {}
    lines.append(
        '  patients in more than one split: '
        f'{info["patient_overlap"]["patients_in_more_than_one_split"]}' +
        (f' (the source split put {moved["patients"]} patient(s) in two; '
         f'{moved["images_moved"]} image(s) moved to the evaluation split)'
         if moved.get('patients') else ''))
  short = (info.get('split_counts') or {}).get('short', {})
  for split, gaps in short.items():
    asked = info['split_counts']['requested'][split]
    lines.append(
        f'  warning: {split} holds fewer than requested: ' + ', '.join(
            f'{c} {asked[c] - gap} of {asked[c]}'
            for c, gap in gaps.items() if gap) +
        ' (files that failed to decode, or no patient fitted the rest; see '
        'skipped)')
  images = (info.get('split') or {}).get('images')
  for split in sources.splits.far_off_splits(images) if images else ():
    lines.append(
        f'  warning: {split} holds {images["actual"].get(split, 0)} images, '
        f'{images["requested"][split]} requested ({split}_fraction '
        f'{info["split"][f"{split}_fraction"]} of {images["pool"]}): '
        'patients are taken whole and each label\'s positives spread first, '
        'so a small set lands far from its fractions')
  for title, items, text in (
      ('skipped', info['skipped'], lambda s: f'{s["path"]}: {s["reason"]}'),
      ('duplicates', info['duplicates'],
       lambda d: f'{d["dropped"]} (same {d.get("same", "bytes")} as '
                 f'{d["kept"]}' + ('; its labels differ, the first row\'s '
                                   'are kept' if d.get('labels_differ')
                                   else '') + ')'),
      ('unlabelled', info.get('unlabelled', []),
       lambda s: f'{s["path"]}: {s["reason"]}'),
      ('ignored', info['ignored'], str)):
    if items:
      lines.append(f'  {title}:')
      lines.extend(f'    {text(item)}' for item in items[:_LIST_LIMIT])
      if len(items) > _LIST_LIMIT:
        lines.append(f'    ... and {len(items) - _LIST_LIMIT} more, see '
                     f'{schema.INFO_FILENAME}')
  print('\n'.join(lines))


def _remove_quietly(path):
  try:
    os.remove(path)
  except OSError:
    pass


def worker_memory_bytes(stored_size):
  """An estimate of one decoding worker's peak memory: its interpreter with
  numpy and Pillow (about 150 MB), and the float32 copies a decode holds,
  about six of the stored size (the resize's input, at JPEG draft scale
  about twice the output per side, and its output)."""
  height, width = stored_size
  return 150 * 2**20 + 6 * 4 * height * width


def _available_memory_bytes():
  """MemAvailable from /proc/meminfo, or None where there is none."""
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return None


def _workers_that_fit(num_workers, stored_size, verbose):
  """Lowers num_workers to what the free memory holds, saying so.

  Raises:
    OutputError: not even one worker fits.
  """
  available = _available_memory_bytes()
  if available is None:
    return num_workers
  per_worker = worker_memory_bytes(stored_size)
  fit = min(num_workers, available // per_worker)
  if fit < 1:
    raise OutputError(
        f'a decoding worker at {stored_size[0]}x{stored_size[1]} needs about '
        f'{per_worker / 2**30:.1f} GB and {available / 2**30:.1f} GB is free; '
        'choose a smaller --image_size or free memory')
  if fit < num_workers and verbose:
    print(f'using {fit} decoding workers, not {num_workers}: each needs about '
          f'{per_worker / 2**30:.1f} GB at {stored_size[0]}x{stored_size[1]} '
          f'and {available / 2**30:.1f} GB is free')
  return fit
