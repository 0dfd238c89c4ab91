"""Class folders: one folder of images per class.

  kaggle    src/{train,val,test}/<class>/...   (the Kaggle "chest-xray-pneumonia")
  mendeley  src/{train,test}/<class>/...       (Mendeley Data v3)
  pool      src/<class>/...                    (one pool of class folders)

Class ids are as `flow_from_directory` assigns them (sorted folder names:
NORMAL=0, PNEUMONIA=1); patient ids are parsed from the file names (a DICOM
file's from its PatientID; `patients`), or given by the user; duplicates
are removed (`duplicates`); the splits are kept, re-drawn by patient
(--resplit) or val drawn beside the kept test/ (--keep_test).

Only the class folders are scanned (recursively), so the Kaggle zip's nested
`chest_xray/chest_xray/` copy and its `__MACOSX/` folder, which sit at the top
level, are not double counted; they are reported as ignored. Every other
file in a class folder is scanned: whether it is an image is decided by
decoding it (`imaging.decode_and_resize`); unreadable entries are skipped
with a reason (`base.walk_folder`).

No TensorFlow here; this runs before the writer imports it.
"""

import collections
import dataclasses
import os

from xray_tfdata import dicom
from xray_tfdata.sources import base
from xray_tfdata.sources import duplicates
from xray_tfdata.sources import patients
from xray_tfdata.sources import splits

SourceError = base.SourceError
LAYOUTS = ('kaggle', 'mendeley', 'pool')


@dataclasses.dataclass
class Options(splits.CountOptions):
  """`splits.CountOptions`, and:

  Attributes:
    keep_test: keep the source's test/ folder as it is and draw val from
      the rest (train/, and val/ if there is one) by patient; images of a
      patient who is also in test/ are left out of train and val (skipped,
      with that reason), so that no patient spans two splits.
    patient_id_regex, patient_csv: the patients of a user's own file names
      (see `patients.assign_patient_ids`); default: parsed from Kermany's
      names.
  """
  keep_test: bool = False
  patient_id_regex: str | None = None
  patient_csv: str | None = None

  def check(self):
    """Raises SourceError: see `splits.check_counts`, and a bad patient
    regex or CSV (checked before the long scan of a large tree)."""
    super().check()
    if self.patient_id_regex:
      patients.compile_patient_id_regex(self.patient_id_regex)
    elif self.patient_csv:
      patients.read_patient_csv(self.patient_csv)

  def arguments(self):
    return dict(super().arguments(), patient_csv=(
        os.path.abspath(self.patient_csv) if self.patient_csv else None))


def detect(src_dir):
  """Never first: class folders are what a tree is when no other source
  recognises it."""
  del src_dir
  return False


def scan(src_dir, layout='auto'):
  """Finds the class folders and files of a source tree.

  Args:
    src_dir: the source folder.
    layout: 'auto', 'kaggle', 'mendeley' or 'pool' (see module
      docstring).

  Returns:
    A `Scan`.

  Raises:
    SourceError: src_dir missing or empty, layout not found, fewer than two
      class folders, split folders with different classes, or a class folder
      without images.
  """
  if layout not in ('auto',) + LAYOUTS:
    raise SourceError(f'layout must be one of {LAYOUTS}, got {layout!r}')
  if not os.path.isdir(src_dir):
    raise SourceError(
        f'src_dir {src_dir} does not exist or is not a folder; pass the folder '
        'that holds train/ val/ test/ or the class folders')
  entries = sorted(os.listdir(src_dir))
  folders = [e for e in entries if not base.is_litter(e) and
             os.path.isdir(os.path.join(src_dir, e))]
  if not folders:
    raise SourceError(
        f'src_dir {src_dir} has no folders; it should hold train/ val/ test/ '
        'or class folders (NORMAL/ PNEUMONIA/)')

  split_folders = [s for s in base.SPLIT_FOLDERS if s in folders]
  if layout == 'auto':
    if {'train', 'test'} <= set(split_folders):
      layout = 'kaggle' if 'val' in split_folders else 'mendeley'
    elif split_folders:
      raise SourceError(
          f'src_dir {src_dir} has {"/ ".join(split_folders)}/ but not both '
          'train/ and test/; add the missing split folder, or pass the class '
          'folders as one pool (layout pool)')
    else:
      layout = 'pool'
  if layout == 'pool':
    splits = [None]
  else:
    splits = ['train', 'val', 'test'] if layout == 'kaggle' else ['train', 'test']
    missing = [s for s in splits if s not in folders]
    if missing:
      raise SourceError(f'src_dir {src_dir} has no {"/ ".join(missing)}/ '
                        f'folder, which the {layout} layout needs')

  scanned = folders if layout == 'pool' else splits
  ignored = [base.display_path(e) +
             ('/' if os.path.isdir(os.path.join(src_dir, e)) else '')
             for e in entries if e not in scanned]

  class_folders = {}  # split -> sorted class names
  for split in splits:
    split_dir = os.path.join(src_dir, split) if split else src_dir
    names = []
    for e in sorted(os.listdir(split_dir)):
      if not base.is_litter(e) and os.path.isdir(os.path.join(split_dir, e)):
        names.append(e)
      elif split:
        ignored.append(f'{split}/{base.display_path(e)}')
    class_folders[split] = names

  class_names = sorted({c for names in class_folders.values() for c in names})
  for c in class_names:
    if not base.is_utf8(c):
      raise SourceError(
          f'class folder name {base.display_path(c)!r} is not valid UTF-8; '
          'rename the folder')
  if len(class_names) < 2:
    hint = ''
    if len(class_names) == 1 and splits == [None]:
      inner = os.path.join(src_dir, class_names[0])
      if any(os.path.isdir(os.path.join(inner, s)) for s in base.SPLIT_FOLDERS):
        hint = f'; did you mean --src_dir={inner}?'
    raise SourceError(
        f'src_dir {src_dir} has {len(class_names)} class folder(s) '
        f'{class_names}; a classifier needs at least two (e.g. NORMAL/ '
        f'PNEUMONIA/){hint}')
  for split, names in class_folders.items():
    if names != class_names:
      raise SourceError(
          f'{split}/ has class folders {names} but the dataset has '
          f'{class_names}; every split folder needs the same class folders')

  files = []
  skipped = []
  for split in splits:
    for label, class_name in enumerate(class_names):
      rel_root = f'{split}/{class_name}' if split else class_name
      found = base.walk_folder(src_dir, rel_root, ignored, skipped)
      if not any(p.lower().endswith(base.IMAGE_EXTENSIONS) for p, _ in found):
        raise SourceError(
            f'class folder {os.path.join(src_dir, rel_root)} has no images '
            f'({", ".join(base.IMAGE_EXTENSIONS[:3])}, ...); add images or '
            'remove the folder')
      for path, num_bytes in found:
        full_path = os.path.join(src_dir, path)
        if dicom.is_dicom(full_path):
          files.append(base.SourceFile(path, split, class_name, label,
                                  patients.dicom_patient_id(full_path, path),
                                  num_bytes, is_dicom=True))
        else:
          files.append(base.SourceFile(path, split, class_name, label,
                                  patients.patient_id(path), num_bytes))
  files.sort(key=lambda f: f.path)
  skipped.sort(key=lambda s: s['path'])
  return base.Scan(src_dir, layout, tuple(class_names), files, sorted(ignored),
              skipped)


def plan(src_dir, options, seed=0, progress=base.NO_PROGRESS):
  """Scans `src_dir`, removes duplicates and assigns every file a split:
  the split folders as they are, a re-split (`options.resplit`) or val
  drawn beside the kept test/ (`options.keep_test`).

  Returns:
    A `base.Plan`.

  Raises:
    SourceError: see `Options.check`, `scan`, `patients.assign_patient_ids`
      and `splits.draw_splits`; also a pool layout without a re-split (it
      has no splits to keep), and keep_test without a test folder.
  """
  options.check()
  found = scan(src_dir, options.layout)
  if not options.resplit and not options.keep_test and found.layout == 'pool':
    raise SourceError(
        f'src_dir {src_dir} is one pool of class folders with no split '
        'folders; add --resplit with --val_counts and --test_counts (or the '
        'fractions)')
  scanned = patients.assign_patient_ids(found.files, options.patient_id_regex,
                                        options.patient_csv)
  files, dropped = duplicates.find_duplicates(
      src_dir, scanned, prefer_evaluation_splits=not options.resplit,
      progress=progress)
  skipped = list(found.skipped)
  split_counts = None
  if options.resplit:
    drawn, split_counts = splits.draw_splits(
        files, options.targets(files, found.class_names), seed,
        class_names=found.class_names)
  elif options.keep_test:
    drawn, split_counts, left_out = _keep_test_splits(
        src_dir, found, files, options.val_counts, options.val_fraction, seed)
    skipped = sorted(skipped + left_out, key=lambda item: item['path'])
  else:
    drawn = {s: [f for f in files if f.source_split == s]
             for s in base.SPLIT_FOLDERS
             if any(f.source_split == s for f in found.files)}
  return base.Plan(src_dir, found.layout, found.class_names, drawn, dropped,
                   found.ignored, len(found.files) + len(found.skipped),
                   split_counts, skipped)


def _keep_test_splits(src_dir, found, files, val_counts, val_fraction, seed):
  """test/ as it is, val drawn by patient from the rest (see `plan`).

  Returns:
    (splits, split_counts, [{'path', 'reason'}] of the files left out).
  """
  if found.layout not in ('kaggle', 'mendeley'):
    raise SourceError(f'src_dir {src_dir} has no test/ folder to keep '
                      f'({found.layout} layout); use --resplit')
  test = [f for f in files if f.source_split == 'test']
  test_patients = {f.patient_id for f in test}
  pool, left_out = [], []
  for f in files:
    if f.source_split == 'test':
      continue
    if f.patient_id in test_patients:
      left_out.append({'path': base.display_path(f.path), 'reason': (
          'its patient is also in test/, which is kept as it is; left out '
          'so that no patient spans two splits')})
    else:
      pool.append(f)
  if val_fraction is not None:
    val_counts = splits.counts_from_fraction(pool, found.class_names,
                                             val_fraction)
  drawn, split_counts = splits.draw_splits(pool, {'val': val_counts}, seed,
                                           class_names=found.class_names)
  test_counts = collections.Counter(f.class_name for f in test)
  split_counts['actual']['test'] = {c: test_counts[c]
                                    for c in found.class_names}
  kept = {'train': drawn['train'], 'val': drawn['val'],
          'test': sorted(test, key=lambda f: f.path)}
  return kept, split_counts, left_out

