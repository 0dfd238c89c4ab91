"""Splits drawn by patient: one drawer for counts and fractions.

`draw_splits` takes a patient's images whole, so no patient spans two
splits, and fills each drawn split in a seeded order that depends only on
the seed and the keys (`stable_order`). Its targets are either
  counts     {split: {class: images}}: exact per class where the patients'
             sizes allow, stratified by class (class folders, RSNA);
  fractions  {split: fraction}: stratified by each label's positives
             (the labelled sources).
The two fill rules are kept as they were, so that a conversion writes the
same shards as before the sources were split into modules.

Also here: the checks of how a split is asked for (`check_counts`,
`check_fractions`), and an official split's patients that the source puts
in two splits (`resolve_source_overlap`).
"""

import collections
import dataclasses
import hashlib
import math
import re

import numpy as np

from xray_tfdata.sources import base

SourceError = base.SourceError
SPLIT_METHODS = ('official', 'resplit')
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.1
# Where two splits of an official split file claim a patient, the first
# of these wins.
EVALUATION_FIRST = ('test', 'val', 'train')


def parse_class_counts(text):
  """Parses 'NORMAL:150,PNEUMONIA:400' into {'NORMAL': 150, 'PNEUMONIA': 400}.

  Raises:
    SourceError: malformed text or a negative count.
  """
  counts = {}
  for item in text.split(','):
    name, sep, number = item.strip().rpartition(':')
    if not sep or not name or not re.fullmatch(r'\d+', number.strip()):
      raise SourceError(f'cannot parse class counts {text!r}; write them as '
                        'CLASS:COUNT,CLASS:COUNT, e.g. NORMAL:150,PNEUMONIA:400')
    if name in counts:
      raise SourceError(f'class {name} appears twice in {text!r}')
    counts[name] = int(number)
  return counts


def stable_order(keys, seed, salt=''):
  """A seeded shuffle that depends only on the keys and the seed.

  Sorting by a hash of (seed, salt, key) gives the same order on every Python
  and numpy version and whatever order the keys arrive in.
  """
  return sorted(keys, key=lambda k: hashlib.sha256(
      f'{seed}:{salt}:{k}'.encode('utf-8')).digest())


def draw_splits(files, targets, seed=0, class_names=None, num_labels=None,
                progress=base.NO_PROGRESS):
  """Draws patient-grouped val and test; the rest is train.

  Args:
    files: `SourceFile`s (deduplicated).
    targets: {split: {class: images}} for every class of `class_names`
      (drawn in the given order, test first), or {split: fraction}
      (fractions of all images, label-stratified over `num_labels` labels).
    seed: the draw is a function of the seed and the files only.
    class_names: the classes of count targets.
    num_labels: the labels of fraction targets.
    progress: a `base.Progress` for the patients placed (fractions).

  Returns:
    ({split: files sorted by path}, split counts): with count targets
    {'requested': {...}, 'actual': {split: {class: n}}}; with fractions None.

  Raises:
    SourceError: count targets that miss or add a class, or leave no
      training image of a class.
  """
  if all(isinstance(t, dict) or t is None for t in targets.values()):
    return _draw_counts(files, class_names, targets, seed)
  return _draw_fractions(files, num_labels, targets, seed, progress), None


def _draw_counts(files, class_names, targets, seed):
  """Draws the splits of `targets` ({split: {class: n}}, in drawing order)
  by patient; the rest is train.

  Greedy over the patients in a seeded order (see `_fill`): a patient's
  images are taken whole and only if no class overshoots its target, so
  each class is filled separately (stratified). Counts are exact unless no
  remaining patient fits the gap; then they fall short and the actual
  counts say by how much.
  """
  available = collections.Counter(f.class_name for f in files)
  for split, counts in targets.items():
    if counts is None:
      raise SourceError(f'a re-split needs {split} counts for every class, '
                        f'e.g. --{split}_counts=NORMAL:150,PNEUMONIA:400')
    unknown = sorted(set(counts) - set(class_names))
    missing = [c for c in class_names if c not in counts]
    if unknown or missing:
      raise SourceError(
          f'{split} counts {counts} do not match the classes {list(class_names)}'
          f'; give one count for each class, e.g. --{split}_counts='
          + ','.join(f'{c}:N' for c in class_names))
  for c in class_names:
    asked = sum(counts[c] for counts in targets.values())
    if asked >= available[c]:
      wanted = ' + '.join(f'{split} {counts[c]}'
                          for split, counts in targets.items())
      raise SourceError(
          f'{wanted} {c} images leave none for training: there are '
          f'{available[c]} (after removing duplicates); ask for fewer')

  groups = collections.defaultdict(list)
  for f in files:
    groups[f.patient_id].append(f)
  group_counts = {pid: collections.Counter(f.class_name for f in fs)
                  for pid, fs in groups.items()}
  remaining = stable_order(groups, seed, 'patients')
  splits = {}
  actual = {}
  for split, split_targets in targets.items():
    chosen, taken = _fill(remaining, group_counts, split_targets)
    remaining = [p for p in remaining if p not in chosen]
    splits[split] = sorted((f for pid in chosen for f in groups[pid]),
                           key=lambda f: f.path)
    actual[split] = taken
  splits['train'] = sorted((f for pid in remaining for f in groups[pid]),
                           key=lambda f: f.path)
  train_counts = collections.Counter(f.class_name for f in splits['train'])
  actual['train'] = {c: train_counts[c] for c in class_names}
  requested = {s: dict(targets[s]) for s in base.SPLIT_FOLDERS if s in targets}
  return ({s: splits[s] for s in base.SPLIT_FOLDERS if s in splits},
          {'requested': requested,
           'actual': {s: actual[s] for s in base.SPLIT_FOLDERS if s in actual}})


def _fill(order, group_counts, targets):
  """Chooses patients whose class counts add up to `targets` (at most).

  Greedy in the seeded `order`, adding a patient only if no class overshoots;
  then the smallest patients first to close the gaps; then swaps of a chosen
  patient for a larger remaining one while that closes more of the gap.

  Returns:
    (chosen patient ids in an ordered dict, {class: images taken}).
  """
  taken = collections.Counter()
  chosen = {}  # an ordered set

  def fits(add, remove=()):
    total = taken + add
    total.subtract(remove)
    return all(total[c] <= targets[c] for c in total)

  by_size = sorted(order, key=lambda p: sum(group_counts[p].values()))
  for candidates in (order, by_size):
    for pid in candidates:
      if pid not in chosen and fits(group_counts[pid]):
        chosen[pid] = True
        taken += group_counts[pid]
  gap = sum(targets.values()) - sum(taken.values())
  while gap:
    swap = next(((old, new) for old in chosen for new in by_size
                 if new not in chosen and
                 sum(group_counts[new].values()) >
                 sum(group_counts[old].values()) and
                 fits(group_counts[new], group_counts[old])), None)
    if swap is None:
      break
    old, new = swap
    del chosen[old]
    chosen[new] = True
    taken.subtract(group_counts[old])
    taken += group_counts[new]
    gap = sum(targets.values()) - sum(taken.values())
  return chosen, {c: taken[c] for c in targets}


def _draw_fractions(files, num_labels, fractions, seed, progress):
  """Draws patient-grouped splits with per-label positives spread evenly.

  Greedy iterative stratification: every split wants its fraction of the
  images and of each label's positives (code 1). Patients are taken whole,
  in a seeded order (`stable_order`), those with the rarest positive label
  first; each goes to the split that lacks the largest share of its target
  of that label's positives (ties: the split lacking the largest share of
  its images, then train, val, test). Patients without a positive go to
  the split lacking the largest share of its images. A patient is never
  split, so the counts are as even as the patients' sizes allow.

  Returns:
    {split: files sorted by path} for train and the drawn splits.
  """
  groups = collections.defaultdict(list)
  for f in files:
    groups[f.patient_id].append(f)
  names = ['train'] + [s for s in ('val', 'test') if s in fractions]
  share = np.array([1 - sum(fractions.values())] +
                   [fractions[s] for s in names[1:]])
  positives = {p: np.sum([np.asarray(f.labels) == 1 for f in fs], axis=0)
               .reshape(num_labels) for p, fs in groups.items()}
  # Started from zeros: with no files the sum of an empty list is a scalar.
  total_pos = sum(positives.values(), np.zeros(num_labels))
  total = len(files)
  rarity = np.where(total_pos > 0, total_pos, np.inf)

  def rarest(p):
    has = positives[p] > 0
    return int(np.argmin(np.where(has, rarity, np.inf))) if has.any() else -1

  # The salt keeps its old name: the same seed draws the same patients.
  order = stable_order(groups, seed, 'multilabel')
  order.sort(key=lambda p: (rarity[rarest(p)] if rarest(p) >= 0 else np.inf))
  taken_pos = np.zeros((len(names), num_labels))
  taken = np.zeros(len(names))
  chosen = {s: [] for s in names}
  progress.stage('drawing splits by patient', len(order), 'patients')
  for done, p in enumerate(order, start=1):
    # Needs relative to the targets, so that a small split gets its share
    # of a rare label too (absolute needs would give it all to train).
    image_need = 1 - taken / (share * total)
    label = rarest(p)
    if label >= 0:
      need = 1 - taken_pos[:, label] / (share * total_pos[label])
      best = max(range(len(names)), key=lambda i: (need[i], image_need[i], -i))
    else:
      best = max(range(len(names)), key=lambda i: (image_need[i], -i))
    chosen[names[best]].append(p)
    taken[best] += len(groups[p])
    taken_pos[best] += positives[p]
    progress.update(done)
  progress.end()
  return {s: sorted((f for p in chosen[s] for f in groups[p]),
                    key=lambda f: f.path) for s in names}


def requested_images(fractions, pool, splits):
  """{'pool', 'requested', 'actual'}: the images each drawn split was asked
  for (its fraction of the `pool` images it was drawn from, rounded) and
  the images of every split. `draw_splits` takes patients whole and spreads
  each label's positives first, so on a small set a split can land far
  from its request (`far_off_splits`)."""
  return {'pool': pool,
          'requested': {s: math.floor(f * pool + 0.5)
                        for s, f in fractions.items()},
          'actual': {s: len(fs) for s, fs in splits.items()}}


def far_off_splits(images):
  """The drawn splits of `requested_images` whose image count is off by
  more than a quarter of the request (and more than one image), or empty
  where images were asked for."""
  far = []
  for split, asked in images['requested'].items():
    got = images['actual'].get(split, 0)
    if (abs(got - asked) > max(1, asked / 4) or
        (got == 0) != (asked == 0)):
      far.append(split)
  return far


def check_counts(resplit=False, val_counts=None, test_counts=None,
                 keep_test=False, val_fraction=None, test_fraction=None):
  """Checks how the splits are asked for, before anything is scanned.

  Raises:
    SourceError: a re-split and keep_test together, a split to draw with
      neither counts nor a fraction, counts and a fraction
      for one split, a fraction outside (0, 1) or fractions adding up to 1
      or more, test counts or a test fraction with keep_test, or counts or
      fractions without a split to draw.
  """
  if resplit and keep_test:
    raise SourceError('--resplit draws val and test anew, --keep_test keeps '
                      'the test folder: give one of them')
  for split, counts, fraction in (('val', val_counts, val_fraction),
                                  ('test', test_counts, test_fraction)):
    if counts is not None and fraction is not None:
      raise SourceError(f'give --{split}_counts or --{split}_fraction, not '
                        'both')
    if fraction is not None and not 0 < fraction < 1:
      raise SourceError(f'{split}_fraction must be between 0 and 1 '
                        f'(exclusive), got {fraction}')
  if (val_fraction or 0) + (test_fraction or 0) >= 1:
    raise SourceError(f'val_fraction {val_fraction} + test_fraction '
                      f'{test_fraction} leave nothing for training; ask for '
                      'less')
  asked = any(v is not None for v in (val_counts, test_counts, val_fraction,
                                      test_fraction))
  if keep_test and (test_counts is not None or test_fraction is not None):
    raise SourceError('--keep_test keeps the test folder as it is: drop '
                      '--test_counts/--test_fraction')
  if resplit:
    for split, counts, fraction in (('val', val_counts, val_fraction),
                                    ('test', test_counts, test_fraction)):
      if counts is None and fraction is None:
        raise SourceError(
            f'a re-split needs {split} counts for every class, e.g. '
            f'--{split}_counts=NORMAL:150,PNEUMONIA:400, or '
            f'--{split}_fraction')
  if keep_test and val_counts is None and val_fraction is None:
    raise SourceError('--keep_test draws val from train: add --val_counts '
                      'or --val_fraction')
  if not resplit and not keep_test and asked:
    raise SourceError('val/test counts and fractions only apply to a '
                      're-split; add --resplit (or --keep_test for val '
                      'alone) or drop them')


def counts_from_fraction(files, class_names, fraction):
  """{class: round(fraction * images of the class in `files`)}."""
  available = collections.Counter(f.class_name for f in files)
  return {c: math.floor(fraction * available[c] + 0.5) for c in class_names}


def check_fractions(layout, split_method, val_fraction, test_fraction,
                    official=True, official_val=False):
  """The fractions of a labelled source's split, checked.

  Args:
    layout: the source's name, for messages.
    split_method: 'official' or 'resplit'.
    val_fraction, test_fraction: as given (None: the default).
    official: whether the source publishes a split.
    official_val: whether its official split has its own val (MIMIC).

  Returns:
    (val_fraction, test_fraction), either None where it does not apply.
  Raises:
    SourceError: an unknown method, an official split the source does not
      publish, a test fraction with an official split (a val fraction
      with one that has its own val), a fraction outside (0, 1), or
      fractions leaving nothing for training.
  """
  if split_method not in SPLIT_METHODS:
    raise SourceError(f'split must be one of {", ".join(SPLIT_METHODS)}, got '
                      f'{split_method!r}')
  if split_method == 'official':
    if not official:
      raise SourceError(f'the {layout} layout has no official split; pass '
                        '--resplit (with --val_fraction and --test_fraction)')
    if test_fraction is not None:
      raise SourceError(f'the official {layout} split keeps its test set: '
                        'drop --test_fraction, or pass --resplit')
    if official_val and val_fraction is not None:
      raise SourceError(f'the official {layout} split has its own val (its '
                        'split file\'s validate): drop --val_fraction, or '
                        'pass --resplit')
  for name, value in (('val_fraction', val_fraction),
                      ('test_fraction', test_fraction)):
    if value is not None and not 0 < value < 1:
      raise SourceError(f'{name} must be between 0 and 1 (exclusive), got '
                        f'{value}')
  if val_fraction is None and not (official_val and
                                   split_method == 'official'):
    val_fraction = DEFAULT_VAL_FRACTION
  if split_method == 'resplit' and test_fraction is None:
    test_fraction = DEFAULT_TEST_FRACTION
  if (val_fraction or 0) + (test_fraction or 0) >= 1:
    raise SourceError(f'val_fraction {val_fraction} + test_fraction '
                      f'{test_fraction} leave nothing for training; ask for '
                      'less')
  return val_fraction, test_fraction


def resolve_source_overlap(files):
  """Moves each patient an official split puts in two splits to the
  evaluation split among them (module docstring).

  Returns:
    (files, {'patients': n, 'images_moved': m}).
  """
  by_patient = collections.defaultdict(set)
  for f in files:
    by_patient[f.patient_id].add(f.source_split)
  target = {p: next(s for s in EVALUATION_FIRST if s in splits)
            for p, splits in by_patient.items() if len(splits) > 1}
  moved = 0
  result = []
  for f in files:
    if f.patient_id in target and f.source_split != target[f.patient_id]:
      f = dataclasses.replace(f, source_split=target[f.patient_id])
      moved += 1
    result.append(f)
  return result, {'patients': len(target), 'images_moved': moved}




@dataclasses.dataclass
class CountOptions:
  """How a class source (class folders, RSNA) is split: its flags,
  `check`ed before scanning.

  Attributes:
    layout: --layout as given, recorded.
    resplit: pool all images and draw val and test anew by patient.
    val_counts, test_counts: {class: images} of a re-split.
    val_fraction, test_fraction: instead of the counts, a fraction of each
      class's images (after removing duplicates) in (0, 1).
  """
  layout: str = 'auto'
  resplit: bool = False
  val_counts: dict | None = None
  test_counts: dict | None = None
  val_fraction: float | None = None
  test_fraction: float | None = None

  def check(self):
    """Raises SourceError: see `check_counts`."""
    check_counts(self.resplit, self.val_counts, self.test_counts,
                 getattr(self, 'keep_test', False), self.val_fraction,
                 self.test_fraction)

  def arguments(self):
    """The options as xray_info.json records them."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  def targets(self, files, class_names):
    """{'test': counts, 'val': counts} of a re-split of `files`, from the
    counts or the fractions."""
    val_counts, test_counts = self.val_counts, self.test_counts
    if self.val_fraction is not None:
      val_counts = counts_from_fraction(files, class_names, self.val_fraction)
    if self.test_fraction is not None:
      test_counts = counts_from_fraction(files, class_names,
                                         self.test_fraction)
    return {'test': test_counts, 'val': val_counts}


def check_patient_overlap(splits):
  """{'checked': True, 'patients_in_more_than_one_split': n}."""
  seen = collections.defaultdict(set)
  for split, files in splits.items():
    for f in files:
      seen[f.patient_id].add(split)
  return {'checked': True, 'patients_in_more_than_one_split':
          sum(len(s) > 1 for s in seen.values())}


