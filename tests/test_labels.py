"""xray_tfdata.labels against its docstring's policy table, written out by
hand here: each policy's target of each raw code, through policy_table and
apply_policy (scoring's targets)."""

import numpy as np
import pytest

from xray_tfdata import checks
from xray_tfdata import labels

M = labels.MASKED
# Raw codes (schema.LABEL_CODES): 1 positive, 0 negative, -1 uncertain,
# -2 not mentioned. Policy -> {code: target}, from labels.py's docstring.
BY_HAND = {
    'u_ones': {1: 1.0, 0: 0.0, -1: 1.0, -2: 0.0},
    'u_zeros': {1: 1.0, 0: 0.0, -1: 0.0, -2: 0.0},
    'u_ignore': {1: 1.0, 0: 0.0, -1: M, -2: 0.0},
    'txv': {1: 1.0, 0: 0.0, -1: M, -2: M},
}


def test_the_hand_table_covers_every_policy_checks_allows():
  assert tuple(BY_HAND) == checks.LABEL_POLICIES


@pytest.mark.parametrize('policy', list(BY_HAND))
def test_apply_policy_maps_each_code_as_written_by_hand(policy):
  codes = np.array([[1, 0, -1, -2], [-2, -1, 1, 0], [0, 0, -2, 1]])
  expected = np.vectorize(BY_HAND[policy].get)(codes).astype(np.float32)
  got = labels.apply_policy(codes, policy)
  assert got.dtype == np.float32 and got.shape == codes.shape
  np.testing.assert_array_equal(got, expected)
  # policy_table is indexed by code - OFFSET, codes -2..1 in order.
  np.testing.assert_array_equal(
      labels.policy_table(policy),
      np.array([BY_HAND[policy][code] for code in (-2, -1, 0, 1)],
               np.float32))


def test_an_unknown_policy_names_the_allowed_ones_in_one_line():
  with pytest.raises(ValueError) as caught:
    labels.apply_policy([1, 0], 'u_maybe')
  message = str(caught.value)
  assert "'u_maybe'" in message and '\n' not in message
  assert all(policy in message for policy in checks.LABEL_POLICIES)
