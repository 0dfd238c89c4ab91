"""The RSNA Pneumonia Detection Challenge's training set.

src/stage_2_train_images/<patientId>.dcm with the labels in
src/stage_2_train_labels.csv (Target 0 is NORMAL, 1 is PNEUMONIA; one row
per box, deduplicated here, the boxes kept) and, if present,
src/stage_2_detailed_class_info.csv (the detailed class). One pool,
re-split only (--resplit with counts or fractions per class). The patient
id is the patientId (the file's stem), which the writer stores only hashed.
"""

import dataclasses
import os

from xray_tfdata.sources import base
from xray_tfdata.sources import duplicates
from xray_tfdata.sources import splits
from xray_tfdata.sources import tables

SourceError = base.SourceError
IMAGES = 'stage_2_train_images'
LABELS = 'stage_2_train_labels.csv'
CLASS_INFO = 'stage_2_detailed_class_info.csv'
# RSNA's Target 0 and 1, under the class names of this project's datasets.
CLASS_NAMES = ('NORMAL', 'PNEUMONIA')


@dataclasses.dataclass
class Options(splits.CountOptions):
  """`splits.CountOptions`: RSNA is one pool, drawn by patient."""


def detect(src_dir):
  """Whether src_dir holds stage_2_train_images/ and its labels, and no
  split folders (then it is read as class folders)."""
  names = [e for e in os.listdir(src_dir) if not base.is_litter(e)]
  return (os.path.isdir(os.path.join(src_dir, IMAGES)) and
          os.path.isfile(os.path.join(src_dir, LABELS)) and
          not any(s in names and os.path.isdir(os.path.join(src_dir, s))
                  for s in base.SPLIT_FOLDERS))


def plan(src_dir, options, seed=0, progress=base.NO_PROGRESS):
  """Scans an RSNA tree, removes duplicates and draws the splits.

  Returns:
    A `base.Plan`.
  Raises:
    SourceError: no --resplit, see `splits.check_counts`, `scan` and
      `splits.draw_splits`.
  """
  options.check()
  found = scan(src_dir)
  if not options.resplit:
    raise SourceError(
        f'src_dir {src_dir} is an RSNA training set (one pool of images) '
        'with no split folders; add --resplit with --val_counts and '
        '--test_counts (or the fractions)')
  files, dropped = duplicates.find_duplicates(
      src_dir, found.files, prefer_evaluation_splits=False, progress=progress)
  drawn, split_counts = splits.draw_splits(
      files, options.targets(files, found.class_names), seed,
      class_names=found.class_names)
  return base.Plan(src_dir, found.layout, found.class_names, drawn, dropped,
                   found.ignored, len(found.files) + len(found.skipped),
                   split_counts, list(found.skipped))


def read_labels(labels_path):
  """patientId -> (Target, boxes) from stage_2_train_labels.csv, one entry
  per image however many box rows it has.

  Returns:
    {patientId: (Target 0 or 1, ((x, y, width, height), ...))}; boxes in
    the source image's pixels, in file order, none for Target 0.

  Raises:
    SourceError: the file is unreadable, lacks the patientId or Target
      column, has a Target other than 0/1, gives one image two Targets, or
      has a box that is not four numbers (or a Target 1 row without one).
  """
  rows = tables.read_table(labels_path, ('patientId', 'Target'),
                           'RSNA stage 2 labels file')
  labels = {}
  for line, row in rows:
    target = (row['Target'] or '').strip()
    if target not in ('0', '1'):
      raise SourceError(f'{labels_path} line {line}: Target must be 0 or 1, '
                        f'got {target!r}')
    previous, boxes = labels.setdefault(row['patientId'], (int(target), []))
    if previous != int(target):
      raise SourceError(f'{labels_path}: patientId {row["patientId"]} has '
                        'rows with Target 0 and 1; fix the labels file')
    box = _box(row)
    if box is None and target == '1':
      raise SourceError(f'{labels_path} line {line}: Target 1 needs a box '
                        '(x, y, width, height as numbers)')
    if box is not None:
      boxes.append(box)
  return {pid: (target, tuple(boxes))
          for pid, (target, boxes) in labels.items()}


def _box(row):
  """(x, y, width, height) of one label row; None if all four are blank
  (Target 0 rows) or any is not a number."""
  values = [(row.get(k) or '').strip() for k in ('x', 'y', 'width', 'height')]
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    return None


def read_classes(class_info_path):
  """patientId -> detailed class from stage_2_detailed_class_info.csv.

  Raises:
    SourceError: unreadable, lacks the patientId or class column, or gives
      one image two classes.
  """
  classes = {}
  for _, row in tables.read_table(class_info_path, ('patientId', 'class'),
                                  'RSNA stage 2 class file'):
    previous = classes.setdefault(row['patientId'], row['class'])
    if previous != row['class']:
      raise SourceError(f'{class_info_path}: patientId {row["patientId"]} '
                        f'has the classes {previous!r} and {row["class"]!r}; '
                        'fix the class file')
  return classes


def scan(src_dir):
  """Scans the RSNA layout: every entry of stage_2_train_images/, labelled
  from stage_2_train_labels.csv.

  An image without a label row is skipped with that reason; label rows
  without an image are listed in `ignored` (with their patientIds), so that
  nothing is dropped silently. The same for stage_2_detailed_class_info.csv,
  if present: an image missing from it gets the detailed class '' and is
  listed in `ignored`.

  Returns:
    A `Scan` with layout 'rsna' and class names NORMAL, PNEUMONIA; every file
    in the pool (source_split None), its patient id the file's stem (the
    writer stores a salted hash of it), its boxes and detailed class set.

  Raises:
    SourceError: see `read_labels` and `read_classes`; or no
      images.
  """
  labels_path = os.path.join(src_dir, LABELS)
  if not os.path.isfile(labels_path):
    raise SourceError(f'src_dir {src_dir} has no {LABELS}, which the '
                      'rsna layout needs')
  labels = read_labels(labels_path)
  class_info_path = os.path.join(src_dir, CLASS_INFO)
  classes = (read_classes(class_info_path)
             if os.path.isfile(class_info_path) else None)
  ignored = [base.display_path(e) + ('/' if os.path.isdir(
      os.path.join(src_dir, e)) else '')
             for e in sorted(os.listdir(src_dir))
             if e not in (IMAGES, LABELS, CLASS_INFO)]
  skipped = []
  found = base.walk_folder(src_dir, IMAGES, ignored, skipped)
  files, seen = [], set()
  for path, num_bytes in found:
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem not in labels:
      skipped.append({'path': base.display_path(path),
                      'reason': f'no row in {LABELS}'})
      continue
    seen.add(stem)
    label, boxes = labels[stem]
    detailed_class = None if classes is None else classes.get(stem, '')
    files.append(base.SourceFile(path, None, CLASS_NAMES[label], label, stem,
                            num_bytes, detailed_class, boxes, is_dicom=True))
  base.report_ids(ignored, sorted(set(labels) - seen),
              f'{LABELS}: {{}} label row(s) without an image in '
              f'{IMAGES}/')
  if classes is not None:
    base.report_ids(ignored, sorted(seen - set(classes)),
                f'{CLASS_INFO}: {{}} image(s) without a row (detailed '
                "class '')")
  if not files:
    raise SourceError(f'{os.path.join(src_dir, IMAGES)} has no labelled '
                      'images')
  files.sort(key=lambda f: f.path)
  skipped.sort(key=lambda item: item['path'])
  return base.Scan(src_dir, 'rsna', CLASS_NAMES, files, sorted(ignored),
              skipped)


