"""Label policies: a multi-label record's raw codes to training targets.

A multi-label dataset stores each label's raw code (`schema.LABEL_CODES`:
1 positive, 0 negative, -1 uncertain, -2 not mentioned), never a policy, so
changing the policy needs no re-conversion. The reader applies one of
`checks.LABEL_POLICIES` to every code; a target of `MASKED` takes no part in
the loss or the metrics.

  u_ones    uncertain -> 1, not mentioned -> 0 (CheXpert's U-Ones)
  u_zeros   uncertain -> 0, not mentioned -> 0 (U-Zeros)
  u_ignore  uncertain -> masked, not mentioned -> 0 (U-Ignore)
  txv       uncertain and not mentioned -> masked (torchxrayvision)

No TensorFlow and no Keras: the reader gathers from `policy_table`.
"""

import numpy as np

from xray_tfdata import checks
from xray_tfdata import schema

MASKED = -1.0

# Each of checks.LABEL_POLICIES -> its targets of (positive, negative,
# uncertain, not mentioned).
_TARGETS = {
    'u_ones': (1.0, 0.0, 1.0, 0.0),
    'u_zeros': (1.0, 0.0, 0.0, 0.0),
    'u_ignore': (1.0, 0.0, MASKED, 0.0),
    'txv': (1.0, 0.0, MASKED, MASKED),
}
# Codes run from NOT_MENTIONED (-2) to POSITIVE (1): code - OFFSET indexes
# a policy table.
OFFSET = schema.NOT_MENTIONED


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
  """numpy: the targets of an int array of raw codes under `policy`."""
  return policy_table(policy)[np.asarray(codes, np.int64) - OFFSET]
