"""sources.tables and what every labelled source shares: the one CSV reader,
label cells, detection, the drawn splits, bad and hostile label files."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from xray_tfdata import schema
from xray_tfdata import sources
from xray_tfdata.sources import class_folders
from xray_tfdata.sources import labels_csv
from xray_tfdata.sources import tables
from xray_tfdata import writer

from labelled_trees import (_assert_accounted, _check_fractions,
                            CHEXPERT_HEADER, CHEXPERT_NO_IMAGE, CHEXPERT_ROWS,
                            _convert, _cut_row, _draw, _file, _image,
                            make_chexpert, make_mimic, make_nih, make_own,
                            NIH_HEADER, NIH_ROWS, NIH_UNLABELLED, OWN_ROWS,
                            _plan, _planned, REPO, _rewrite, SALT, _write_csv)


@pytest.mark.parametrize('value, code', [
    ('1', 1), ('1.0', 1), (' 0 ', 0), ('0.0', 0), ('-1', -1), ('-1.0', -1),
    ('', -2), (None, -2), ('2', None), ('yes', None), ('1.5', None),
    ('-2', None)])
def test_label_codes(value, code):
  assert tables.parse_code(value) == code


def test_real_headers_are_what_the_parsers_need():
  nih_header = NIH_HEADER.split(',')
  assert set(sources.nih.COLUMNS) <= set(nih_header)
  chexpert_header = CHEXPERT_HEADER.split(',')
  assert chexpert_header == list(sources.chexpert.COLUMNS +
                                 sources.chexpert.LABELS)


def test_detects_the_layouts(tmp_path):
  nih = make_nih(str(tmp_path / 'nih'))
  chexpert = make_chexpert(str(tmp_path / 'CheXpert-v1.0-small'))
  mimic = make_mimic(str(tmp_path / 'mimic'))
  assert sources.detect(nih) == 'nih'
  assert sources.detect(chexpert) == 'chexpert'
  assert sources.detect(mimic) == 'mimic'
  kaggle = str(tmp_path / 'kaggle')
  for split in ('train', 'val', 'test'):
    for c in ('NORMAL', 'PNEUMONIA'):
      _image(kaggle, f'{split}/{c}/IM-0001-0001.jpeg', 'JPEG')
  assert sources.detect(kaggle) is None
  assert isinstance(sources.options(kaggle), class_folders.Options)
  assert class_folders.scan(kaggle).layout == 'kaggle'
  assert isinstance(sources.options(kaggle, labels_csv='x.csv'),
                    labels_csv.Options)
  assert isinstance(sources.options(nih), sources.nih.Options)
  both = str(tmp_path / 'both')
  make_chexpert(both)
  _write_csv(os.path.join(both, 'Data_Entry_2017.csv'), NIH_HEADER, [])
  with pytest.raises(sources.SourceError, match='more than one multi-label'):
    sources.detect(both)
  with pytest.raises(sources.SourceError, match='more than one multi-label'):
    sources.options(both)
  assert isinstance(sources.options(both, layout='nih'), sources.nih.Options)


def test_resplit_spreads_positives_by_patient_and_is_deterministic():
  rng = np.random.default_rng(0)
  files = []
  for p in range(300):
    for i in range(int(rng.integers(1, 4))):
      labels = tuple(int(x) for x in (rng.random(3) < (0.3, 0.1, 0.02)))
      files.append(sources.SourceFile(f'p{p}/{i}.png', None, '', -1, f'p{p}',
                                      1, labels=labels))
  fractions = {'val': 0.2, 'test': 0.1}
  drawn = _draw(files, 3, fractions, seed=5)
  again = _draw(list(reversed(files)), 3, fractions, seed=5)
  assert {s: [f.path for f in fs] for s, fs in drawn.items()} == {
      s: [f.path for f in fs] for s, fs in again.items()}
  other = _draw(files, 3, fractions, seed=6)
  assert [f.path for f in other['val']] != [f.path for f in drawn['val']]
  assert sources.splits.check_patient_overlap(drawn)[
      'patients_in_more_than_one_split'] == 0
  assert sorted(f.path for fs in drawn.values() for f in fs) == sorted(
      f.path for f in files)
  total = np.sum([f.labels for f in files], axis=0)
  for split, share in (('val', 0.2), ('test', 0.1)):
    positives = np.sum([f.labels for f in drawn[split]], axis=0)
    # Within a few patients (at most 3 images each) of the target.
    assert np.all(np.abs(positives - share * total) <= 6), (split, positives)
    assert abs(len(drawn[split]) - share * len(files)) <= 9


def test_bad_split_arguments():
  with pytest.raises(sources.SourceError, match='no official split'):
    _check_fractions('csv', 'official', None, None)
  with pytest.raises(sources.SourceError, match='drop --test_fraction'):
    _check_fractions('nih', 'official', 0.1, 0.1)
  with pytest.raises(sources.SourceError, match='has its own val'):
    _check_fractions('mimic', 'official', 0.1, None)
  assert _check_fractions('mimic', 'official', None, None) == (
      None, None)
  with pytest.raises(sources.SourceError, match='leave nothing'):
    _check_fractions('nih', 'resplit', 0.6, 0.5)
  assert _check_fractions('chexpert', 'resplit', None, None) == (
      0.1, 0.1)


def test_single_and_multilabel_flags_do_not_mix(tmp_path):
  kaggle = str(tmp_path / 'kaggle')
  for split in ('train', 'val', 'test'):
    for c in ('NORMAL', 'PNEUMONIA'):
      _image(kaggle, f'{split}/{c}/IM-0001-0001.jpeg', 'JPEG')
  out = str(tmp_path / 'out')
  with pytest.raises(sources.SourceError,
                     match='--split does not apply to the class folder layout'):
    _convert(kaggle, out, split='official')
  with pytest.raises(sources.SourceError,
                     match='--labels_csv does not apply to the class folder'):
    _convert(kaggle, out, layout='kaggle', labels_csv='x.csv')
  nih = make_nih(str(tmp_path / 'nih'))
  with pytest.raises(sources.SourceError,
                     match='--path_column does not apply to the nih layout'):
    _convert(nih, out, path_column='file')
  with pytest.raises(sources.SourceError, match='contradict'):
    _convert(nih, out, resplit=True, split='official')
  assert not os.path.exists(out)


@pytest.mark.parametrize('case, words', [
    ('no_column', "has no column 'AP/PA'"),
    ('outside', 'points outside src_dir'),
    ('absolute', 'points outside src_dir'),
    ('chexpert_outside', 'points outside src_dir'),
    ('empty', 'no usable image'),
    ('no_lists', 'has no test_list.txt'),
    ('counts', '--val_counts does not apply to the nih'),
    ('csv_official', 'the csv layout has no official split'),
])
def test_bad_input_raises_one_line_and_writes_nothing(tmp_path, case, words):
  src = str(tmp_path / 'CheXpert-v1.0-small')
  kwargs = {}
  if case == 'no_column':
    make_chexpert(src, header=CHEXPERT_HEADER.replace(',AP/PA', ',APPA'))
  elif case in ('outside', 'absolute', 'csv_official'):
    bad = '../escape.png' if case == 'outside' else '/etc/passwd'
    make_own(src, OWN_ROWS[:3] + [(bad, 'Z', '1', '1')])
    kwargs = dict(labels_csv=os.path.join(src, 'labels.csv'),
                  label_columns='Effusion,Nodule',
                  resplit=case != 'csv_official')
  elif case == 'chexpert_outside':
    make_chexpert(src, rows=CHEXPERT_ROWS[:2] + [
        ('train', '../../elsewhere/view1_frontal.jpg', 'Male', '1', 'Frontal',
         'AP', {})])
  elif case == 'empty':
    make_chexpert(src, rows=[r for r in CHEXPERT_ROWS
                             if r[1] in CHEXPERT_NO_IMAGE])
  else:
    make_nih(src)
    if case == 'no_lists':
      os.remove(os.path.join(src, sources.nih.TEST_LIST))
    else:
      kwargs = dict(val_counts={'Mass': 1})
  out = str(tmp_path / 'out')
  with pytest.raises(sources.SourceError) as raised:
    _convert(src, out, **kwargs)
  assert words in str(raised.value) and '\n' not in str(raised.value)
  assert not os.path.exists(out)
  assert not os.path.exists(out + writer.PARTIAL_SUFFIX)


@pytest.mark.slow
def test_tool_converts_and_refuses_bad_input(tmp_path):
  src = make_own(str(tmp_path / 'own'), OWN_ROWS[:6] +
                 [('../escape.png', 'Z', '1', '1')])
  out = str(tmp_path / 'out')
  args = [sys.executable, os.path.join('tools', 'make_tfrecords'),
          f'--src_dir={src}', f'--out_dir={out}',
          f'--labels_csv={src}/labels.csv', '--label_columns=Effusion,Nodule',
          '--resplit', '--image_size=16', '--num_workers=1',
          '--patient_id_salt=' + SALT]
  result = subprocess.run(args, cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'points outside src_dir' in lines[0], lines
  assert not os.path.exists(out)
  nih = make_nih(str(tmp_path / 'nih'))
  args = [sys.executable, os.path.join('tools', 'make_tfrecords'),
          f'--src_dir={nih}', f'--out_dir={out}', '--resplit',
          '--image_size=16', '--num_workers=1', '--patient_id_salt=' + SALT]
  result = subprocess.run(args, cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  assert 'unlabelled:' in result.stdout and NIH_UNLABELLED in result.stdout
  assert 'patients in more than one split: 0' in result.stdout
  info = json.load(open(os.path.join(out, schema.INFO_FILENAME)))
  assert info['layout'] == 'nih' and info['arguments']['split'] == 'resplit'
  _assert_accounted(info, len(NIH_ROWS))


def test_a_truncated_row_is_skipped_with_the_reason_never_read_as_blank(
    tmp_path):
  src = make_chexpert(str(tmp_path / 'CheXpert-v1.0-small'))
  cut = 'train/patient00001/study2/view1_frontal.jpg'
  # Cut after 'Edema' (the 11th cell): the labels after it would read as
  # blank, 'not mentioned'.
  _rewrite(os.path.join(src, 'train.csv'),
           lambda d: _cut_row(d, f'CheXpert-v1.0-small/{cut}', 11))
  plan = _plan(src, 'chexpert')
  assert cut not in _planned(plan)
  reasons = {s['path']: s['reason'] for s in plan.skipped}
  assert 'fewer cells than the header' in reasons[cut], reasons
  assert '(8 of 19)' in reasons[cut] or '11 of 19' in reasons[cut]
  own = make_own(str(tmp_path / 'own'), OWN_ROWS)
  _rewrite(os.path.join(own, 'labels.csv'),
           lambda d: _cut_row(d, 'scans/g1.png', 3))
  plan = _plan(own, 'csv', 'resplit', 0.2, 0.2,
                 labels_csv=os.path.join(own, 'labels.csv'),
                 label_columns='Effusion,Nodule')
  reasons = {s['path']: s['reason'] for s in plan.skipped}
  assert 'fewer cells than the header' in reasons['scans/g1.png']
  assert 'scans/g1.png' not in _planned(plan)


def test_byte_order_marks_are_read_everywhere(tmp_path):
  bom = '\ufeff'.encode()
  nih = make_nih(str(tmp_path / 'nih'))
  for name in (sources.nih.TRAIN_VAL_LIST, sources.nih.TEST_LIST):
    _rewrite(os.path.join(nih, name), lambda d: bom + d)
  plain = _plan(make_nih(str(tmp_path / 'nih2')), 'nih', seed=3)
  marked = _plan(nih, 'nih', seed=3)
  assert {os.path.basename(p): s for p, s in _planned(marked).items()} == {
      os.path.basename(p): s for p, s in _planned(plain).items()}
  mimic = make_mimic(str(tmp_path / 'mimic'))
  for name in (sources.mimic.LABELS_FILE, sources.mimic.METADATA_FILE,
               sources.mimic.SPLIT_FILE):
    _rewrite(os.path.join(mimic, name), lambda d: bom + d)
  assert len(_planned(_plan(mimic, 'mimic'))) == 5
  patients = tmp_path / 'patients.csv'
  patients.write_bytes(bom + b'path,patient_id\na.png,1\n')
  assert sources.patients.read_patient_csv(str(patients)) == {'a.png': '1'}


@pytest.mark.parametrize('case, words', [
    ('valid_header_only', 'valid.csv has no usable row'),
    ('train_header_only', 'train.csv has no usable row'),
    ('train_val_list_empty', 'train_val_list.txt names no usable image'),
    ('test_list_empty', 'test_list.txt names no usable image'),
])
def test_an_empty_official_split_is_refused_in_one_line(tmp_path, case,
                                                         words):
  src = str(tmp_path / 'CheXpert-v1.0-small')
  if case.startswith('valid') or case.startswith('train_header'):
    which = 'valid' if case.startswith('valid') else 'train'
    make_chexpert(src, rows=[r for r in CHEXPERT_ROWS if r[0] != which])
  else:
    make_nih(src)
    name = sources.nih.TRAIN_VAL_LIST if 'train' in case else sources.nih.TEST_LIST
    open(os.path.join(src, name), 'w').close()
  out = str(tmp_path / 'out')
  with pytest.raises(sources.SourceError) as raised:
    _convert(src, out)
  assert words in str(raised.value) and '\n' not in str(raised.value), \
      raised.value
  assert not os.path.exists(out)
  assert not os.path.exists(out + writer.PARTIAL_SUFFIX)


def test_draw_splits_of_no_files_is_empty():
  assert _draw([], 14, {'val': 0.1}) == {'train': [], 'val': []}


def test_a_resplit_far_from_its_fractions_says_so(tmp_path):
  # 4 patients of 10 images each: a 0.1 val cannot be near 4 images.
  rows = [(f'scans/p{p}_{i}.png', f'P{p}', str(int(p == i % 4)), '0')
          for p in range(4) for i in range(10)]
  src = make_own(str(tmp_path / 'own'), rows)
  out = str(tmp_path / 'out')
  info = _convert(src, out, resplit=True, val_fraction=0.1,
                  test_fraction=0.1, labels_csv=os.path.join(src, 'labels.csv'),
                  label_columns='Effusion,Nodule')
  images = info['split']['images']
  assert images['requested'] == {'val': 4, 'test': 4}
  assert images['actual'] == {s: info['splits'][s]['num_examples']
                              for s in ('train', 'val', 'test')}
  assert images['actual']['val'] == 10
  buffer = io.StringIO()
  import contextlib  # pylint: disable=g-import-not-at-top
  with contextlib.redirect_stdout(buffer):
    writer.print_summary(info, out)
  assert ('warning: val holds 10 images, 4 requested (val_fraction 0.1 of '
          '40)') in buffer.getvalue(), buffer.getvalue()


@pytest.mark.parametrize('value, years', [
    ('0', 0), ('000Y', 0), ('0.0', 0), ('0Y', 0), ('058Y', 58), ('57', 57),
    ('57.0', 57), (' 3 ', 3), ('', -1), (None, -1), ('abc', -1), ('-1', -1),
    ('200', -1), ('199', 199)])
def test_ages_parse_to_whole_years_an_infant_is_0_not_unknown(value, years):
  assert tables.parse_age(value) == years


def test_an_infants_age_survives_planning_in_every_layout(tmp_path):
  src = make_nih(str(tmp_path / 'nih'))
  table = os.path.join(src, 'Data_Entry_2017_v2020.csv')
  _rewrite(table, lambda d: d.replace(b',2,42,', b',2,000Y,'))
  files = {os.path.basename(f.path): f
           for fs in _plan(src, 'nih').splits.values() for f in fs}
  assert files['00000002_000.png'].age_years == 0
  assert files['00000001_001.png'].age_years == 41
  chexpert = _plan(make_chexpert(str(tmp_path / 'CheXpert-v1.0-small')),
                     'chexpert')
  files = {f.path: f for fs in chexpert.splits.values() for f in fs}
  assert files['train/patient00005/study1/view1_frontal.jpg'].age_years == 0


@pytest.mark.parametrize('val, test', [(0.5, 0.5), (0.7, 0.3), (0.9, 0.1),
                                       (0.6, 0.4), (0.8, 0.25)])
def test_fractions_adding_up_to_1_leave_nothing_and_are_refused(
    tmp_path, val, test):
  with pytest.raises(sources.SourceError, match='leave nothing'):
    _check_fractions('nih', 'resplit', val, test)
  with pytest.raises(sources.SourceError, match='leave nothing'):
    sources.splits.check_counts(resplit=True, val_fraction=val,
                                  test_fraction=test)
  src = make_nih(str(tmp_path / 'nih'))
  out = str(tmp_path / 'out')
  with pytest.raises(sources.SourceError, match='leave nothing'):
    _convert(src, out, resplit=True, val_fraction=val, test_fraction=test)
  assert not os.path.exists(out) and not os.path.exists(
      out + writer.PARTIAL_SUFFIX)
  assert _check_fractions('nih', 'resplit', 0.45, 0.45) == (0.45,
                                                                    0.45)


def test_patient_overlap_counts_each_patient_in_two_or_more_splits():
  splits = {'train': [_file('a', 'P1'), _file('b', 'P2'), _file('b2', 'P2')],
            'val': [_file('c', 'P1'), _file('d', 'P3')],
            'test': [_file('e', 'P4'), _file('f', 'P4')]}
  assert sources.splits.check_patient_overlap(splits) == {
      'checked': True, 'patients_in_more_than_one_split': 1}
  splits['test'].append(_file('g', 'P1'))  # P1 in three: still one patient
  splits['test'].append(_file('h', 'P3'))
  assert sources.splits.check_patient_overlap(splits)[
      'patients_in_more_than_one_split'] == 2
  assert sources.splits.check_patient_overlap({'train': splits['train']})[
      'patients_in_more_than_one_split'] == 0


def test_a_plan_with_a_patient_in_two_splits_is_refused(tmp_path,
                                                        monkeypatch):
  """The safety check itself: a split planner that puts a patient in two
  splits (a bug) stops the conversion in one line, before anything is
  written."""
  src = make_own(str(tmp_path / 'own'), OWN_ROWS)

  def leaky(files, targets, seed=0, class_names=None, num_labels=None,
            progress=None):
    # One patient in two splits: scans/a1.png in val, a2.png (patient A
    # too) in train.
    del targets, seed, class_names, num_labels, progress
    ordered = sorted(files, key=lambda f: f.path)
    assert [f.patient_id for f in ordered[:2]] == ['A', 'A']
    return {'train': ordered[1:], 'val': ordered[:1], 'test': []}, None
  monkeypatch.setattr(sources.splits, 'draw_splits', leaky)
  out = str(tmp_path / 'out')
  with pytest.raises(sources.SourceError) as raised:
    _convert(src, out, resplit=True, labels_csv=os.path.join(src, 'labels.csv'),
             label_columns='Effusion,Nodule')
  assert '1 patient(s) would be in two splits' in str(raised.value)
  assert '\n' not in str(raised.value)
  assert not os.path.exists(out) and not os.path.exists(
      out + writer.PARTIAL_SUFFIX)


def test_the_writer_counts_the_overlap_again_before_finishing():
  splits = {'train': [_file('a', 'P1'), _file('b', 'P2')],
            'val': [_file('c', 'P1')], 'test': [_file('d', 'P3')]}
  plan = sources.Plan('src', 'csv', ('A',), splits, [], [], 4,
                      label_names=('A',), split_info={'method': 'resplit'})
  with pytest.raises(sources.SourceError, match='a patient is in two splits'):
    writer._written_split_info(plan, {})  # pylint: disable=protected-access
  splits['val'] = [_file('c', 'P4')]
  assert writer._written_split_info(plan, {})['patient_overlap'] == {  # pylint: disable=protected-access
      'checked': True, 'patients_in_more_than_one_split': 0}


def test_planning_reports_its_progress_with_counts_that_add_up(tmp_path):
  src = make_nih(str(tmp_path / 'nih'))
  stream = io.StringIO()
  plan = _plan(src, 'nih', 'resplit', progress=sources.Progress(
      interval=0, stream=stream))
  lines = stream.getvalue().splitlines()
  last = {line.split(':')[0]: line for line in lines if line.endswith('done')}
  # Each stage's last line counts what it went through, recounted here.
  files = sum(len(fs) for folder in ('images_001', 'images_002')
              for _, _, fs in os.walk(os.path.join(src, folder)))
  assert last['scanning 2 image folders'].startswith(
      f'scanning 2 image folders: {files} files (')
  assert last['reading Data_Entry_2017_v2020.csv'].startswith(
      f'reading Data_Entry_2017_v2020.csv: {len(NIH_ROWS)} of '
      f'{len(NIH_ROWS)} rows (')
  planned = sum(len(fs) for fs in plan.splits.values())
  patients = len({f.patient_id for fs in plan.splits.values() for f in fs})
  assert last['drawing splits by patient'].startswith(
      f'drawing splits by patient: {patients} of {patients} patients (')
  assert 'looking for DICOM files (their pixels are hashed)' in last
  assert 'hashing files of equal size for duplicates' in last
  assert planned and len(lines) > len(last)
  # The default interval keeps a small conversion quiet.
  quiet = io.StringIO()
  _plan(src, 'nih', 'resplit', progress=sources.Progress(stream=quiet))
  assert quiet.getvalue() == ''
