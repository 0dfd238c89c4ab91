"""sources.chexpert: CheXpert's plan, views and conversion."""

import collections
import csv
import os

import numpy as np
import pytest

from xray_tfdata import schema
from xray_tfdata import sources

from labelled_trees import (_assert_accounted, builder_verifies,
                            CHEXPERT_NO_IMAGE, CHEXPERT_ROWS,
                            CHEXPERT_UNLABELLED, _code, _convert, _hash,
                            make_chexpert, _plan, _planned, _records, _recount)


def test_chexpert_plan(tmp_path):
  src = make_chexpert(str(tmp_path / 'CheXpert-v1.0-small'))
  plan = _plan(src, 'chexpert')
  planned = _planned(plan)
  assert {p for p, s in planned.items() if s == 'test'} == {
      r[1] for r in CHEXPERT_ROWS if r[0] == 'valid'}
  assert plan.splits['val']
  reasons = {s['path']: s['reason'] for s in plan.skipped}
  assert reasons == {
      'train/patient00003/study1/view1_frontal.jpg':
          "unknown label value '2.0' in column 'Edema' (allowed: 1, 0, -1 "
          'or blank)',
      'train/patient00004/study1/view1_frontal.jpg': 'missing image'}
  assert [d['path'] for d in plan.duplicates] == [
      'train/patient00002/study1/view1_frontal.jpg']
  assert [u['path'] for u in plan.unlabelled] == [CHEXPERT_UNLABELLED]
  files = {f.path: f for fs in plan.splits.values() for f in fs}
  lateral = files['train/patient00001/study1/view2_lateral.jpg']
  assert (lateral.view, lateral.sex, lateral.age_years, lateral.patient_id,
          lateral.study_id) == ('LATERAL', 'F', 68, 'patient00001',
                                'patient00001/study1')
  assert files['train/patient00005/study1/view1_frontal.jpg'].view == 'LL'
  assert files['train/patient00005/study1/view1_frontal.jpg'].sex == ''
  uncertain = files['train/patient00001/study2/view1_frontal.jpg'].labels
  assert uncertain[sources.chexpert.LABELS.index('Cardiomegaly')] == -1
  assert uncertain[sources.chexpert.LABELS.index('Fracture')] == -2
  patients = collections.defaultdict(set)
  for path, split in planned.items():
    patients[files[path].patient_id].add(split)
  assert all(len(s) == 1 for s in patients.values())


@pytest.fixture(scope='module')
def chexpert_dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp('chexpert')
  src = make_chexpert(str(root / 'CheXpert-v1.0-small'))
  out = str(root / 'out')
  return src, out, _convert(src, out)


def test_chexpert_conversion_counts_match_a_recount(chexpert_dataset):
  src, out, info = chexpert_dataset
  _assert_accounted(info, len(CHEXPERT_ROWS))
  assert info['layout'] == 'chexpert' and info['split']['method'] == 'official'
  records = _records(out)
  split_of = {e[schema.PATIENT_ID].decode(): s
              for s, es in records.items() for e in es}
  usable, seen = [], set()
  for which in ('train', 'valid'):
    with open(os.path.join(src, f'{which}.csv'), newline='') as f:
      for row in csv.DictReader(f):
        path = row['Path'].split('/', 1)[1]
        if (path in seen or path in CHEXPERT_NO_IMAGE or
            row['Edema'] == '2.0'):
          continue
        seen.add(path)
        patient = path.split('/')[1]
        split = split_of[_hash(patient)]
        assert (split == 'test') == (which == 'valid')
        usable.append((split, [_code(row[n]) for n in sources.chexpert.LABELS]))
  expected = _recount(usable, sources.chexpert.LABELS)
  assert {s: e['label_code_counts'] for s, e in info['splits'].items()} == \
      expected
  # class_counts: the positives (code 1) only, never -1 or blank (-2),
  # which CheXpert has plenty of; recounted from the CSV and the records.
  for split, examples in records.items():
    stored = np.array([e[schema.LABELS] for e in examples])
    assert ((stored == -1).any() or (stored == -2).any()) or split == 'test'
    assert info['splits'][split]['class_counts'] == {
        n: expected[split][n]['1'] for n in sources.chexpert.LABELS} == {
            n: int((stored[:, i] == 1).sum())
            for i, n in enumerate(sources.chexpert.LABELS)}
  # Patient00005 is 0 years old (CheXpert's Age 0): 0, not unknown (-1).
  ages = {e[schema.PATIENT_ID].decode(): int(e[schema.AGE_YEARS])
          for es in records.values() for e in es}
  assert ages[_hash('patient00005')] == 0 and ages[_hash('patient00002')] == 83
  studies = {(e[schema.FILENAME].decode(), e[schema.STUDY_ID].decode(),
              e[schema.VIEW].decode()) for es in records.values() for e in es}
  p1 = _hash('patient00001')
  assert (f'train/{p1}/{_hash("patient00001/study1")}/view2_lateral.jpg',
          _hash('patient00001/study1'), 'LATERAL') in studies
  assert builder_verifies(out) == info['counts']['written']


def test_a_chexpert_lateral_keeps_the_view_its_ap_pa_cell_holds(tmp_path):
  rows = CHEXPERT_ROWS + [
      ('train', 'train/patient00008/study1/view2_lateral.jpg', 'Male', '60',
       'Lateral', 'LL', {'Edema': '1.0'}),
      ('train', 'train/patient00008/study1/view3_lateral.jpg', 'Male', '60',
       'Lateral', 'RL', {'Edema': '1.0'}),
      ('train', 'train/patient00008/study1/view1_frontal.jpg', 'Male', '60',
       'Frontal', 'PA', {'Edema': '1.0'})]
  plan = _plan(make_chexpert(str(tmp_path / 'CheXpert-v1.0-small'), rows),
                 'chexpert')
  views = {f.path: f.view for fs in plan.splits.values() for f in fs}
  assert views['train/patient00008/study1/view2_lateral.jpg'] == 'LL'
  assert views['train/patient00008/study1/view3_lateral.jpg'] == 'RL'
  assert views['train/patient00008/study1/view1_frontal.jpg'] == 'PA'
  assert views['train/patient00001/study1/view2_lateral.jpg'] == 'LATERAL'
  assert views['train/patient00001/study1/view1_frontal.jpg'] == 'AP'
  assert views['train/patient00005/study1/view1_frontal.jpg'] == 'LL'
