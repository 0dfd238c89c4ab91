"""What every source shares: its error, progress lines, the scanned file,
the plan, and the walk of a source tree.

A walk skips OS litter (`__MACOSX/`, `._*`, `.DS_Store`, `Thumbs.db`, hidden
files) everywhere. Entries that cannot be read as files are skipped, each
with a reason, and counted as scanned: a name that is not valid UTF-8 (it
could not be stored as image/filename), a broken symbolic link or a link
loop, and anything that is not a regular file (a FIFO, whose open would
block, a socket, a device). Symbolic links to files are followed; symbolic
links to folders are not (they may loop, or pull in a whole other tree) and
are listed as ignored.

No TensorFlow here; this runs before the writer imports it.
"""

import dataclasses
import errno
import os
import stat
import sys
import time

from xray_tfdata import errors

SPLIT_FOLDERS = ('train', 'val', 'test')
# A class folder must hold at least one file with one of these extensions
# (the ones `flow_from_directory` accepts, plus .gif/.webp/.pgm PIL reads,
# and DICOM, decoded by xray_tfdata.dicom).
IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png', '.bmp', '.ppm', '.pgm', '.tif',
                    '.tiff', '.gif', '.webp', '.dcm', '.dicom')
_LITTER = frozenset({'__MACOSX', '.DS_Store', 'Thumbs.db', 'desktop.ini',
                     '$RECYCLE.BIN', '.Trashes', '.Spotlight-V100'})


# Planning a real NIH or CheXpert tree takes minutes; its stages report
# at most this often, and a stage that ends sooner says nothing.
PROGRESS_SECONDS = 10.0


class SourceError(errors.XrayError):
  """A problem with the source folder or the requested split (a user error)."""


class Progress:
  """Progress lines of a conversion's stages, on stderr: the planning's
  (scanning, reading label rows, hashing for duplicates, drawing splits)
  and the writer's decoding and writing; the converter's one progress
  facility.

  A stage prints '<stage>: <done> of <total> <unit> (<seconds> s, about
  <time> left)' at most every `interval` seconds (the time left, from the
  rate so far, where the total is known), and, if it printed one, a last
  line '... (<seconds> s) done' when it ends; a stage shorter than the
  interval prints nothing, so small conversions stay quiet. Lines, not a
  redrawn bar: a log file reads as well as a terminal. Cheap: one clock
  read per item.

    progress.stage('reading train.csv', len(rows), 'rows')
    for i, row in enumerate(rows, 1):
      ...
      progress.update(i)
    progress.end()

  Args:
    enabled: False prints nothing (`NO_PROGRESS`).
    interval: seconds between lines.
    stream: where the lines go (default sys.stderr).
  """

  def __init__(self, enabled=True, interval=PROGRESS_SECONDS, stream=None):
    self.enabled, self.interval, self.stream = enabled, interval, stream
    self._name, self._total, self._unit, self._done = '', None, '', 0
    self._start = self._last = 0.0
    self._printed = False

  def stage(self, name, total=None, unit='files'):
    """Starts a stage of `total` items (None: not known in advance)."""
    self._name, self._total, self._unit, self._done = name, total, unit, 0
    self._start = self._last = time.monotonic()
    self._printed = False
    return self

  def update(self, done):
    """Reports `done` items of the stage so far."""
    self._done = done
    if self.enabled and time.monotonic() - self._last >= self.interval:
      self._print()

  def advance(self, items=1):
    """Reports `items` more items of the stage."""
    self.update(self._done + items)

  def end(self):
    """Ends the stage: its last line, if it printed any."""
    if self._printed:
      self._print(' done')

  def _print(self, suffix=''):
    now = time.monotonic()
    self._last, self._printed = now, True
    elapsed = now - self._start
    of = f' of {self._total:,}' if self._total is not None else ''
    left = ''
    if not suffix and self._total is not None and 0 < self._done:
      seconds = elapsed * (self._total - self._done) / self._done
      left = (f', about {seconds:.0f} s left' if seconds < 120 else
              f', about {seconds / 60:.0f} min left')
    print(f'{self._name}: {self._done:,}{of} {self._unit} '
          f'({elapsed:.0f} s{left}){suffix}',
          file=self.stream or sys.stderr, flush=True)


NO_PROGRESS = Progress(enabled=False)


@dataclasses.dataclass(frozen=True)
class SourceFile:
  """One scanned file.

  Attributes:
    path: path relative to src_dir, '/'-separated (stored as image/filename).
    source_split: the split folder it came from, or None (pool layout).
    class_name: its class folder.
    label: class id (index of class_name in the sorted class names).
    patient_id: best-effort patient key parsed from the file name.
    num_bytes: file size.
    detailed_class: RSNA's detailed class; None in other layouts, or when
      the RSNA tree has no detailed class file.
    boxes: RSNA's, NIH's or VinDr-CXR's boxes, ((x, y, width, height), ...)
      in the source image's pixels; None where the source has none.
    box_labels, box_readers: a multi-label source's boxes' label indices
      and readers ('' where none is named), one per box; None for RSNA's
      (every box a lung opacity) and where there are no boxes.
    num_readers, marked_by: VinDr-CXR's readers of the image, and per label
      how many of them marked it (`schema.READER_FEATURES`); None
      elsewhere.
    is_dicom: a DICOM file, whose patient id is an identifier the writer
      stores only hashed (`writer.hashed_patient_id`).
    labels: a multi-label source's raw codes (`schema.LABEL_CODES`), one per
      label name; None in the single-label layouts (then class_name and
      label hold the class; in a multi-label plan they are '' and -1).
    view, sex, age_years, study_id: a multi-label record's
      `schema.MULTILABEL_FEATURES` (None: unknown).
    hash_ids: the patient and study ids identify persons: the writer
      stores them hashed, and replaces them in image/filename
      (`private_parts`).
    private_parts: ((text, id), ...): path segments (or file name stems, or
      the part of a stem before its first '_') equal to `text` are stored
      as the hash of `id`; an id of None drops the segment (a bucket
      folder named after the id's digits).
    label_method: how the image's labels were made, as the source says
      (PadChest's MethodLabel: 'Physician' or 'RNN_model'); stored as
      `schema.LABEL_METHOD`; None where the source does not say.
    stored_depth: a 16-bit file's (bits stored, window center, window
      width) as the source gives them, None each where it does not
      (`imaging.sixteen_bit_range`); None: the image's own depth.
    mask_rle: SIIM's EncodedPixels of the image's regions (`sources.rle`),
      () for an image without; the writer stores their union as the mask
      (`schema.MASK`). None in other layouts.
  """
  path: str
  source_split: str | None
  class_name: str
  label: int
  patient_id: str
  num_bytes: int
  detailed_class: str | None = None
  boxes: tuple | None = None
  is_dicom: bool = False
  labels: tuple | None = None
  view: str | None = None
  sex: str | None = None
  age_years: int | None = None
  study_id: str | None = None
  hash_ids: bool = False
  private_parts: tuple = ()
  label_method: str | None = None
  stored_depth: tuple | None = None
  box_labels: tuple | None = None
  box_readers: tuple | None = None
  num_readers: int | None = None
  marked_by: tuple | None = None
  mask_rle: tuple | None = None


@dataclasses.dataclass
class Scan:
  """What `scan` found: layout, classes, files (sorted by path), ignored,
  and entries of class folders skipped as unreadable ([{'path', 'reason'}],
  sorted by path)."""
  src_dir: str
  layout: str
  class_names: tuple
  files: list
  ignored: list  # relative paths of skipped top-level entries and OS litter
  skipped: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Plan:
  """What to write: `splits` maps split -> files sorted by path.

  Attributes:
    num_scanned: entries found in the class folders (litter excluded);
      equals the files in all splits plus the duplicates plus `skipped`.
    duplicates: [{'kept', 'dropped', 'sha256', 'same'}], relative paths;
      'same' is 'bytes' or, for DICOM files, 'pixels'.
    split_counts: {'requested': {split: {class: n}}, 'actual': ...} for a
      re-split, else None.
    skipped: [{'path', 'reason'}] of entries the scan could not use (see
      the module docstring); the writer adds the files it cannot decode.
    label_names: a labelled plan's labels (`tables.plan`), None
      for a single-label one.
    unlabelled: a multi-label plan's image files no label row names
      ([{'path', 'reason'}]).
    split_info: a multi-label plan's split method and what it did (see
      `tables.plan`).
  """
  src_dir: str
  layout: str
  class_names: tuple
  splits: dict
  duplicates: list
  ignored: list
  num_scanned: int
  split_counts: dict | None = None
  skipped: list = dataclasses.field(default_factory=list)
  label_names: tuple | None = None
  unlabelled: list = dataclasses.field(default_factory=list)
  split_info: dict | None = None


def is_litter(name):
  """Whether a file or folder name is OS litter or hidden."""
  return name in _LITTER or name.startswith('.')


def report_ids(ignored, ids, text):
  """Appends one line for `ids` (the first five shown) to `ignored`;
  `text` has a {} for their number."""
  if ids:
    shown = ', '.join(ids[:5]) + (', ...' if len(ids) > 5 else '')
    ignored.append(f'{text.format(len(ids))} ({shown})')


def display_path(path):
  """`path` printable and JSON-safe: bytes that are not UTF-8 (which Python
  carries as lone surrogates) shown as \\xNN escapes."""
  return os.fsencode(path).decode('utf-8', 'backslashreplace')


def is_utf8(name):
  try:
    name.encode('utf-8')
  except UnicodeEncodeError:
    return False
  return True


def walk_folder(src_dir, rel_root, ignored, skipped,
                       progress=NO_PROGRESS):
  """(relative path, size) of every usable non-litter file under one class
  folder; appends the others to `skipped` and litter and linked folders to
  `ignored`; advances `progress` (a stage the caller started) by each file
  looked at."""
  found = []
  for root, dirs, names in os.walk(os.path.join(src_dir, rel_root)):
    rel = os.path.relpath(root, src_dir).replace(os.sep, '/')
    for d in list(dirs):
      if is_litter(d) or os.path.islink(os.path.join(root, d)):
        dirs.remove(d)
        ignored.append(f'{display_path(rel)}/{display_path(d)}/')
    dirs.sort()
    for name in sorted(names):
      path = f'{rel}/{name}'
      if is_litter(name):
        ignored.append(display_path(path))
        continue
      reason, num_bytes = check_file(os.path.join(root, name), path)
      if reason:
        skipped.append({'path': display_path(path), 'reason': reason})
      else:
        found.append((path, num_bytes))
      progress.advance()
  return found


def check_file(full_path, rel_path):
  """(None, size) for a regular file with a UTF-8 name, else (reason, 0)."""
  if not is_utf8(rel_path):
    return 'file name is not valid UTF-8; rename the file', 0
  try:
    info = os.stat(full_path)  # follows symbolic links
  except OSError as e:
    if os.path.islink(full_path):
      if e.errno == errno.ELOOP:
        return 'symbolic link loop', 0
      return f'broken symbolic link ({e.strerror})', 0
    return f'cannot read: {e.strerror}', 0
  if not stat.S_ISREG(info.st_mode):
    kind = ('FIFO' if stat.S_ISFIFO(info.st_mode) else
            'socket' if stat.S_ISSOCK(info.st_mode) else
            'device' if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
            else 'special file')
    return f'not a regular file ({kind})', 0
  return None, info.st_size


def walk(src_dir, roots, progress=NO_PROGRESS):
  """{relative path: (size, reason or None)} of every non-litter file under
  the `roots` (relative folders), and the litter and linked folders
  (`ignored`)."""
  found, ignored = {}, []
  progress.stage('scanning ' + (f'{roots[0]}/' if len(roots) == 1 else
                                 f'{len(roots)} image folders'))
  for root in roots:
    if not os.path.isdir(os.path.join(src_dir, root)):
      continue
    unreadable = []
    for path, size in walk_folder(src_dir, root, ignored, unreadable,
                                  progress):
      found[path] = (size, None)
    for item in unreadable:
      found[item['path']] = (0, item['reason'])
  progress.end()
  return found, ignored


def image_size(full_path):
  """(height, width) of an image from its header, without decoding the
  pixels (a DICOM's Rows and Columns; PIL for the others); None when the
  header cannot be read (the writer then skips the file with the reason)."""
  from xray_tfdata import dicom  # pylint: disable=g-import-not-at-top
  try:
    if dicom.is_dicom(full_path):
      header = dicom.read_header(full_path)
      return int(header.Rows), int(header.Columns)
    from PIL import Image  # pylint: disable=g-import-not-at-top
    with Image.open(full_path) as image:
      return image.height, image.width
  except Exception:  # pylint: disable=broad-except  (any unreadable header)
    return None


def check_boxes(src_dir, files, label_names=(), progress=NO_PROGRESS):
  """Refuses a box that is empty or reaches outside its image (the
  image's own size, read from its header), before anything is written.

  Args:
    src_dir: the source folder.
    files: `SourceFile`s; those with boxes are checked.
    label_names: the labels `SourceFile.box_labels` index.
    progress: a `Progress`.

  Raises:
    SourceError: naming the image, the box, its label and reader.
  """
  boxed = [f for f in files if f.boxes]
  progress.stage('checking boxes', len(boxed), 'images')
  for f in boxed:
    size = image_size(os.path.join(src_dir, f.path))
    progress.advance()
    if size is None:
      continue
    height, width = size
    for index, (x, y, box_width, box_height) in enumerate(f.boxes):
      if (x >= 0 and y >= 0 and box_width > 0 and box_height > 0 and
          x + box_width <= width and y + box_height <= height):
        continue
      label = ('' if f.box_labels is None else
               f' of {label_names[f.box_labels[index]]!r}')
      reader = (f' by reader {f.box_readers[index]}'
                if f.box_readers and f.box_readers[index] else '')
      raise SourceError(
          f'{display_path(f.path)}: box (x_min {x:g}, y_min {y:g}, x_max '
          f'{x + box_width:g}, y_max {y + box_height:g}){label}{reader} is '
          f'empty or outside the image ({width} x {height} px); fix or drop '
          'its row in the box file')
  progress.end()


def check_out_dir(src_dir, out_dir):
  """Refuses an out_dir inside src_dir (it would be scanned next time) or
  containing it (overwriting would delete the source).

  Raises:
    SourceError: naming the fix.
  """
  src = os.path.realpath(src_dir)
  out = os.path.realpath(out_dir)
  if out == src or out.startswith(src + os.sep):
    raise SourceError(f'out_dir {out_dir} is inside src_dir {src_dir}; write '
                      'the TFRecords somewhere outside the image folders')
  if src.startswith(out + os.sep):
    raise SourceError(f'src_dir {src_dir} is inside out_dir {out_dir}; choose '
                      'an out_dir that does not contain the images')
