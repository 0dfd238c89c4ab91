"""sources.labels_csv: a user's labelled folder, planned and converted."""

import collections
import csv
import dataclasses
import os

from xray_tfdata import schema
from xray_tfdata import writer

from labelled_trees import (_assert_accounted, builder_verifies, _code,
                            _convert, _hash, make_own, OWN_ROWS, _plan,
                            _records, STORED)


def test_csv_layout_plan(tmp_path):
  src = make_own(str(tmp_path / 'own'), OWN_ROWS)
  plan = _plan(src, 'csv', 'resplit', 0.2, 0.2,
                 labels_csv=os.path.join(src, 'labels.csv'),
                 label_columns='Effusion,Nodule')
  assert plan.label_names == ('Effusion', 'Nodule')
  files = {f.path: f for fs in plan.splits.values() for f in fs}
  assert files['scans/a2.png'].labels == (1, 0)
  assert files['scans/f1.png'].labels == (-2, -2)
  reasons = {s['path']: s['reason'] for s in plan.skipped}
  assert set(reasons) == {'scans/d1.png', 'scans/missing.png'}
  assert "unknown label value 'yes'" in reasons['scans/d1.png']
  assert [d['path'] for d in plan.duplicates] == ['scans/b1.png']
  assert [u['path'] for u in plan.unlabelled] == ['scans/extra.png']
  assert 'labels.csv' in plan.ignored


def test_fingerprint_follows_the_labels(tmp_path):
  src = make_own(str(tmp_path / 'own'), OWN_ROWS)
  kwargs = dict(labels_csv=os.path.join(src, 'labels.csv'),
                label_columns='Effusion,Nodule')
  plan = _plan(src, 'csv', 'resplit', 0.2, 0.2, **kwargs)
  shards = writer.plan_shards(plan, 'own', None, 0, (STORED, STORED))
  changed = dataclasses.replace(plan, splits={
      s: [dataclasses.replace(f, labels=tuple(-2 for _ in f.labels))
          for f in fs] for s, fs in plan.splits.items()})
  changed_shards = writer.plan_shards(changed, 'own', None, 0,
                                      (STORED, STORED))
  fingerprint = writer._fingerprint  # pylint: disable=protected-access
  assert fingerprint(plan, shards, {}) != fingerprint(changed,
                                                      changed_shards, {})


def test_csv_conversion_and_resplit(tmp_path):
  src = make_own(str(tmp_path / 'own'), OWN_ROWS)
  out = str(tmp_path / 'out')
  info = _convert(src, out, resplit=True, val_fraction=0.2,
                  test_fraction=0.2, labels_csv=os.path.join(src, 'labels.csv'),
                  label_columns='Effusion,Nodule')
  _assert_accounted(info, len(OWN_ROWS))
  assert info['label_names'] == info['class_names'] == ['Effusion', 'Nodule']
  assert info['split'] == {
      'method': 'resplit', 'val_fraction': 0.2, 'test_fraction': 0.2,
      # 10 rows less an unknown value, a missing image and a duplicate.
      'images': {'pool': 7, 'requested': {'val': 1, 'test': 1},
                 'actual': {s: info['splits'][s]['num_examples']
                            for s in ('train', 'val', 'test')}}}
  assert info['arguments']['label_columns'] == 'Effusion,Nodule'
  records = _records(out)
  got = collections.Counter()
  for es in records.values():
    for e in es:
      got[(e[schema.PATIENT_ID].decode(), tuple(e[schema.LABELS]))] += 1
  expected = collections.Counter()
  seen = set()
  with open(os.path.join(src, 'labels.csv'), newline='') as f:
    for row in csv.DictReader(f):
      if row['path'] in seen or row['Effusion'] == 'yes' or (
          row['path'] == 'scans/missing.png'):
        continue
      seen.add(row['path'])
      expected[(_hash(row['patient_id']),
                (_code(row['Effusion']), _code(row['Nodule'])))] += 1
  assert got == expected
  assert builder_verifies(out) == sum(expected.values())
