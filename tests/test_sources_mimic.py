"""sources.mimic: MIMIC-CXR-JPG's split file, label rows and conversion."""

import csv
import gzip
import os

import pytest

from xray_tfdata import schema
from xray_tfdata import sources

from labelled_trees import (_assert_accounted, _code, _convert, _cut_row, _hash,
                            make_mimic, MIMIC_IMAGES, MIMIC_LABEL_COLUMNS,
                            _plan, _planned, _records, _recount, _rewrite)


def test_mimic_plan_uses_its_split_file(tmp_path):
  src = make_mimic(str(tmp_path / 'mimic'))
  plan = _plan(src, 'mimic')
  planned = {os.path.basename(p)[:-4]: s for p, s in _planned(plan).items()}
  assert planned == {'d1': 'train', 'd2': 'train', 'd3': 'train',
                     'd4': 'val', 'd6': 'test'}
  reasons = {os.path.basename(s['path'])[:-4]: s['reason']
             for s in plan.skipped}
  assert reasons['d5'] == 'missing image'
  assert reasons['d7'].startswith('no label row for its study')
  assert [os.path.basename(u['path']) for u in plan.unlabelled] == ['d9.jpg']
  assert any('1 label row(s) whose study has no image' in i
             for i in plan.ignored)
  files = {os.path.basename(f.path)[:-4]: f
           for fs in plan.splits.values() for f in fs}
  assert files['d3'].labels[sources.chexpert.LABELS.index('Edema')] == -1
  assert files['d3'].labels[sources.chexpert.LABELS.index('Pleural Effusion')] == 1
  assert files['d2'].view == 'LATERAL'


def test_mimic_resplit_needs_no_split_file(tmp_path):
  src = make_mimic(str(tmp_path / 'mimic'))
  os.remove(os.path.join(src, sources.mimic.SPLIT_FILE))
  with pytest.raises(sources.SourceError, match='split-file|split file'):
    _plan(src, 'mimic')
  plan = _plan(src, 'mimic', 'resplit', 0.2, 0.2)
  assert sum(len(fs) for fs in plan.splits.values()) == 5
  assert plan.split_info['patient_overlap'][
      'patients_in_more_than_one_split'] == 0


def test_mimic_conversion(tmp_path):
  src = make_mimic(str(tmp_path / 'mimic'))
  info = _convert(src, str(tmp_path / 'out'))
  _assert_accounted(info, len(MIMIC_IMAGES))
  records = _records(str(tmp_path / 'out'))
  assert {s: len(e) for s, e in records.items()} == {'train': 3, 'val': 1,
                                                     'test': 1}
  usable = []
  split = {d: {'validate': 'val'}.get(s, s) for d, _, _, _, s in MIMIC_IMAGES}
  with gzip.open(os.path.join(src, sources.mimic.LABELS_FILE), 'rt') as f:
    labels = {(r['subject_id'], r['study_id']): r for r in csv.DictReader(f)}
  with gzip.open(os.path.join(src, sources.mimic.METADATA_FILE), 'rt') as f:
    for row in csv.DictReader(f):
      label = labels.get((row['subject_id'], row['study_id']))
      if row['dicom_id'] == 'd5' or label is None:
        continue
      usable.append((split[row['dicom_id']],
                     [_code(label[n]) for n in sources.chexpert.LABELS]))
  assert {s: e['label_code_counts'] for s, e in info['splits'].items()} == \
      _recount(usable, sources.chexpert.LABELS)
  names = [e[schema.FILENAME].decode() for es in records.values() for e in es]
  assert f'files/{_hash("10000032")}/{_hash("50414267")}/{_hash("d1")}.jpg' in \
      names
  assert not any('10000032' in n or '/p10/' in n for n in names)


@pytest.mark.parametrize('which', ['labels', 'metadata', 'split'])
def test_a_short_mimic_row_is_skipped_with_the_reason(tmp_path, which):
  src = make_mimic(str(tmp_path / 'mimic'))
  name, start, cells = {
      'labels': (sources.mimic.LABELS_FILE, '10000032,53189527', 3),
      'metadata': (sources.mimic.METADATA_FILE, 'd3,', 2),
      'split': (sources.mimic.SPLIT_FILE, 'd3,', 1)}[which]
  _rewrite(os.path.join(src, name), lambda d: _cut_row(d, start, cells))
  plan = _plan(src, 'mimic')
  assert 'd3' not in {os.path.basename(p)[:-4] for p in _planned(plan)}
  reason = next(s['reason'] for s in plan.skipped if 'd3' in s['path'])
  assert 'fewer cells than the header' in reason and name in reason, reason
  assert len(_planned(plan)) + len(plan.skipped) + len(
      plan.duplicates) == plan.num_scanned


def test_mimic_conflicting_rows_are_reported_and_resolved_by_the_rule(
    tmp_path):
  src = make_mimic(str(tmp_path / 'mimic'))
  # A second label row for study 53189527 (d3) that disagrees, one for
  # 50414267 (d1, d2) that repeats the first, and a second split row for d4
  # (train) that disagrees with its first (validate) and one for d1 that
  # repeats it.
  def more_labels(data):
    return data + ('10000032,53189527' + ',' * len(MIMIC_LABEL_COLUMNS) +
                   '\n').encode() + data.decode().split('\n')[1].encode() + \
        b'\n'
  _rewrite(os.path.join(src, sources.mimic.LABELS_FILE), more_labels)
  _rewrite(os.path.join(src, sources.mimic.SPLIT_FILE),
           lambda d: d + b'd4,57375967,10000764,train\n'
           b'd1,50414267,10000032,train\n')
  plan = _plan(src, 'mimic')
  planned = {os.path.basename(p)[:-4]: s for p, s in _planned(plan).items()}
  # Disagreeing label rows: neither is used, the study's image is skipped.
  assert 'd3' not in planned
  reason = next(s['reason'] for s in plan.skipped if 'd3' in s['path'])
  assert 'label rows that disagree' in reason and 'line 3' in reason, reason
  # A repeated label row with the same codes is used once, and reported.
  assert planned['d1'] == planned['d2'] == 'train'
  # Two split rows that disagree: the evaluation split wins, and it is
  # reported.
  assert planned['d4'] == 'val'
  assert plan.split_info['patient_overlap'][
      'patients_in_more_than_one_split'] == 0
  ignored = ' '.join(plan.ignored)
  assert f'{sources.mimic.LABELS_FILE}: 2 stud' in ignored, plan.ignored
  assert f'{sources.mimic.SPLIT_FILE}: 2 image(s) with more than one row' in \
      ignored, plan.ignored
  assert '1 of them in two splits' in ignored


def test_mimic_first_label_row_is_never_replaced_by_a_later_one(tmp_path):
  """A repeated label row that disagrees never wins silently (last wins
  and first wins are both wrong: neither is used); one that repeats it
  changes nothing."""
  src = make_mimic(str(tmp_path / 'mimic'))
  plain = {os.path.basename(f.path): f.labels
           for fs in _plan(src, 'mimic').splits.values() for f in fs}
  first = '10000980,51967283'
  def repeat(data, change):
    line = next(l for l in data.decode().split('\n') if l.startswith(first))
    return data + (line.replace('1.0', '0.0') if change else line).encode() \
        + b'\n'
  _rewrite(os.path.join(src, sources.mimic.LABELS_FILE),
           lambda d: repeat(d, False))
  again = {os.path.basename(f.path): f.labels
           for fs in _plan(src, 'mimic').splits.values() for f in fs}
  assert again == plain
  _rewrite(os.path.join(src, sources.mimic.LABELS_FILE),
           lambda d: repeat(d, True))
  plan = _plan(src, 'mimic', 'resplit', 0.2, 0.2)
  labels = {os.path.basename(f.path): f.labels
            for fs in plan.splits.values() for f in fs}
  assert 'd6.jpg' not in labels
  assert 'label rows that disagree' in next(
      s['reason'] for s in plan.skipped if s['path'].endswith('d6.jpg'))
