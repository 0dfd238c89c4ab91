"""Label policies: a multi-label record's raw codes to training targets.

A multi-label dataset stores each label's raw code (`schema.LABEL_CODES`:
1 positive, 0 negative, -1 uncertain, -2 not mentioned), never a policy, so
changing the policy needs no re-conversion. The reader applies one of
`checks.LABEL_POLICIES` to every record; a target of `MASKED` takes no part
in the loss or the metrics.

  u_ones    uncertain -> 1, not mentioned -> 0 (CheXpert's U-Ones)
  u_zeros   uncertain -> 0, not mentioned -> 0 (U-Zeros)
  u_ignore  uncertain -> masked, not mentioned -> 0 (U-Ignore)
  txv       torchxrayvision's targets: first, where No Finding is 1, every
            other label becomes 0 (CheXpert: every one but Support Devices,
            as its CheX_Dataset; MIMIC: every one, as its MIMIC_Dataset);
            then uncertain and not mentioned -> masked. NIH stores no No
            Finding column (its 'No Finding' rows are all 0 already), and a
            csv-layout dataset's columns are the user's: there txv is the
            masking alone.

A dataset that keeps every reader (VinDr-CXR: `schema.READER_FEATURES`,
per image the readers and per label how many marked it) first makes each
label's code from those counts under a reader policy
(`checks.READER_POLICIES`), then applies the label policy to it:

  any       1 where at least one reader marked it (torchxrayvision's
            union; the code the records store)
  majority  1 where more than half of the image's readers marked it
  all       1 where every reader marked it
  else 0. An image read by one reader (VinDr's test consensus) gets its
  marks as they are under every policy.

The u_* policies never read No Finding: its own target follows its code
like any label's. `TargetRule` holds a policy's rule for one dataset; the
reader's decode (`pipeline`, whose targets the evaluation scores) and the
class counts (`Selection.target_counts`) apply it.

No TensorFlow and no Keras: the reader gathers from the rule's arrays.
"""

import dataclasses

import numpy as np

from xray_tfdata import checks
from xray_tfdata import schema

MASKED = -1.0
NO_FINDING = 'No Finding'

# Each of checks.LABEL_POLICIES -> its targets of (positive, negative,
# uncertain, not mentioned).
_TARGETS = {
    'u_ones': (1.0, 0.0, 1.0, 0.0),
    'u_zeros': (1.0, 0.0, 0.0, 0.0),
    'u_ignore': (1.0, 0.0, MASKED, 0.0),
    'txv': (1.0, 0.0, MASKED, MASKED),
}
# Policy -> {source layout: the labels a No Finding of 1 leaves alone}; a
# layout not named has no No Finding step. torchxrayvision 1.5.7,
# datasets.py: CheX_Dataset skips "Support Devices" when it zeroes the
# labels of healthy rows, MIMIC_Dataset zeroes them all.
_NO_FINDING_KEEPS = {
    'txv': {'chexpert': ('Support Devices',), 'mimic': ()},
}
# Codes run from NOT_MENTIONED (-2) to POSITIVE (1): code - OFFSET indexes
# a policy table.
OFFSET = schema.NOT_MENTIONED


# Each of checks.READER_POLICIES as (a, b, c): a label marked by m of an
# image's n readers is 1 where m >= 1 and a * m > b * n + c (all: m > n - 1,
# that is m = n), else 0. Declared once: `reader_codes` and the reader's
# decoder (`pipeline`) both evaluate it.
READER_RULES = {'any': (1, 0, 0), 'majority': (2, 1, 0), 'all': (1, 1, -1)}


def reader_codes(marked_by, num_readers, reader_policy):
  """numpy: the raw codes (1 or 0) of int [N, L] marks by [N] readers
  under `reader_policy` (module docstring).

  Raises:
    ValueError: an unknown reader policy.
  """
  if reader_policy not in checks.READER_POLICIES:
    raise ValueError(f'reader policy {reader_policy!r} is not one of '
                     f'{", ".join(checks.READER_POLICIES)}')
  a, b, c = READER_RULES[reader_policy]
  marked_by = np.asarray(marked_by, np.int64)
  num_readers = np.asarray(num_readers, np.int64)[:, None]
  chosen = (marked_by >= 1) & (a * marked_by > b * num_readers + c)
  return chosen.astype(np.int64)


def policy_table(policy):
  """The float32 targets of codes -2, -1, 0, 1 (index code - OFFSET).

  Raises:
    ValueError: an unknown policy.
  """
  if policy not in _TARGETS:
    raise ValueError(f'label policy {policy!r} is not one of '
                     f'{", ".join(checks.LABEL_POLICIES)}')
  by_code = dict(zip(schema.LABEL_CODES, _TARGETS[policy]))
  return np.array([by_code[code] for code in range(OFFSET, OFFSET + 4)],
                  np.float32)


def apply_policy(codes, policy):
  """numpy: the per-code targets of an int array of raw codes under
  `policy`, without the No Finding step (`TargetRule.apply` has it)."""
  return policy_table(policy)[np.asarray(codes, np.int64) - OFFSET]


@dataclasses.dataclass(frozen=True)
class TargetRule:
  """How one dataset's raw codes become targets under one policy.

  Attributes:
    policy: the `checks.LABEL_POLICIES` policy.
    table: float32 [4], the targets of codes -2..1 (`policy_table`).
    no_finding: the index of No Finding among the dataset's labels when a
      No Finding of 1 sets other labels to 0, else None.
    cleared: one bool per dataset label: set to 0 where No Finding is 1
      (all False without a No Finding step).
    reader_policy: a dataset that keeps every reader: the
      `checks.READER_POLICIES` policy its codes are made with from the
      readers' marks (`reader_codes`); None for the others.
  """
  policy: str
  table: np.ndarray
  no_finding: int | None
  cleared: tuple
  reader_policy: str | None = None

  def apply(self, codes, marked_by=None, num_readers=None):
    """numpy: float32 [N, L] targets of int raw codes [N, L] of all the
    dataset's labels, in its order; with a reader policy, the codes are
    made from marked_by [N, L] and num_readers [N] instead."""
    if self.reader_policy is not None:
      codes = reader_codes(marked_by, num_readers, self.reader_policy)
    codes = np.asarray(codes, np.int64)
    targets = self.table[codes - OFFSET]
    if self.no_finding is not None:
      healthy = codes[:, self.no_finding] == 1
      targets[healthy[:, None] & np.array(self.cleared)[None, :]] = 0.0
    return targets

  def key(self):
    """The rule as JSON-ready values (a cache key's part)."""
    key = {'table': [float(t) for t in self.table]}
    if self.reader_policy is not None:
      key['reader_policy'] = self.reader_policy
    if self.no_finding is not None:
      key.update(no_finding=self.no_finding, cleared=list(self.cleared))
    return key


def target_rule(policy, label_names, layout, reader_policy=None):
  """The `TargetRule` of `policy` for a dataset.

  Args:
    policy: one of `checks.LABEL_POLICIES`.
    label_names: the dataset's labels, in the records' order.
    layout: the source layout it was converted from (`DatasetInfo.layout`:
      'chexpert', 'mimic', 'nih', 'csv'), or None.
    reader_policy: for a dataset that keeps every reader, one of
      `checks.READER_POLICIES`; None for the others.

  Raises:
    ValueError: an unknown policy or reader policy.
  """
  if reader_policy is not None and reader_policy not in (
      checks.READER_POLICIES):
    raise ValueError(f'reader policy {reader_policy!r} is not one of '
                     f'{", ".join(checks.READER_POLICIES)}')
  table = policy_table(policy)
  keeps = _NO_FINDING_KEEPS.get(policy, {}).get(layout)
  label_names = tuple(label_names)
  if keeps is None or NO_FINDING not in label_names:
    return TargetRule(policy, table, None, (False,) * len(label_names),
                      reader_policy)
  cleared = tuple(name != NO_FINDING and name not in keeps
                  for name in label_names)
  return TargetRule(policy, table, label_names.index(NO_FINDING), cleared,
                    reader_policy)


def count_targets(targets):
  """{'positive': n, 'negative': n} of a float target column."""
  targets = np.asarray(targets)
  return {'positive': int((targets == 1.0).sum()),
          'negative': int((targets == 0.0).sum())}
