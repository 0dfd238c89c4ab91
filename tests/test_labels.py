"""xray_tfdata.labels against its docstring's policy table, written out by
hand here: each policy's target of each raw code, through policy_table and
apply_policy."""

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


# --- txv on real CheXpert rows, through conversion, reader and scoring ----
#
# tests/data/chexpert_train_rows.csv holds 39 real rows of CheXpert's
# train.csv (tests/data/README.md). The expected targets come from
# `txv_reference`, a transcription of torchxrayvision 1.5.7's loaders
# (datasets.py, CheX_Dataset and MIMIC_Dataset), run on the CSV cells:
#
#   healthy = csv["No Finding"] == 1
#   for pathology in pathologies:
#     if pathology != "Support Devices":   # CheX_Dataset only
#       csv.loc[healthy, pathology] = 0
#   labels[labels == -1] = nan            # blank cells are nan already

import csv  # pylint: disable=g-import-not-at-top,wrong-import-position
import gzip  # pylint: disable=g-import-not-at-top,wrong-import-position
import math  # pylint: disable=g-import-not-at-top,wrong-import-position
import os  # pylint: disable=g-import-not-at-top,wrong-import-position
import zlib  # pylint: disable=g-import-not-at-top,wrong-import-position

from PIL import Image  # pylint: disable=g-import-not-at-top,wrong-import-position

REAL_ROWS = os.path.join(os.path.dirname(__file__), 'data',
                         'chexpert_train_rows.csv')
SALT = 'txv-salt'
STORED = 16
# The patients of the real rows that go to CheXpert's valid.csv (test).
VALID_PATIENTS = ('patient00003', 'patient00010')


def _real_rows():
  with open(REAL_ROWS, newline='') as f:
    return list(csv.DictReader(f))


def txv_reference(row, label_names, keep_support_devices):
  """torchxrayvision's target of each label of one CSV row (nan: masked)."""
  healthy = row['No Finding'] != '' and float(row['No Finding']) == 1
  out = []
  for name in label_names:
    value = float(row[name]) if row[name] != '' else math.nan
    if healthy and name != 'No Finding' and not (
        keep_support_devices and name == 'Support Devices'):
      value = 0.0
    out.append(math.nan if value == -1 else value)
  return out


def _jpeg(path):
  """A small image unique to its path (identical bytes would be dropped
  as duplicates)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(zlib.crc32(path.encode()))
  Image.fromarray(rng.integers(0, 256, (24, 20), np.uint8)).save(path,
                                                                 'JPEG')


def _chexpert_source(root):
  """CheXpert's layout from the real rows: train.csv and valid.csv."""
  src = os.path.join(root, 'CheXpert-v1.0-small')
  rows = _real_rows()
  header = list(rows[0])
  for name, keep in (('train.csv', False), ('valid.csv', True)):
    with open(os.path.join(src if os.path.isdir(src) else
                           (os.makedirs(src) or src), name), 'w',
              newline='') as f:
      writer = csv.DictWriter(f, header, lineterminator='\n')
      writer.writeheader()
      writer.writerows(r for r in rows
                       if (r['Path'].split('/')[2] in VALID_PATIENTS) == keep)
  for row in rows:
    _jpeg(os.path.join(src, row['Path'].split('/', 1)[1]))
  return src


def _mimic_source(root):
  """MIMIC-CXR-JPG's layout from the same real rows (its label file has
  CheXpert's labels and codes): one study and one image per row."""
  from xray_tfdata.sources import mimic as ml  # pylint: disable=g-import-not-at-top
  src = os.path.join(root, 'mimic')
  os.makedirs(src)
  rows = _real_rows()
  columns = sorted(ml.LABELS)  # the real file's own order
  studies, images = [], []
  for i, row in enumerate(rows):
    patient = row['Path'].split('/')[2]
    subject, study = str(10000000 + int(patient[-5:])), str(50000000 + i)
    view = row['AP/PA'] or 'LATERAL'
    split = ('test' if patient == VALID_PATIENTS[0] else 'validate'
             if patient == VALID_PATIENTS[1] else 'train')
    studies.append([subject, study] + [row[n] for n in columns])
    images.append([f'd{i}', subject, study, view, split])
    _jpeg(os.path.join(src, f'files/p{subject[:2]}/p{subject}/s{study}/'
                       f'd{i}.jpg'))

  def write(name, header, table):
    with gzip.open(os.path.join(src, name), 'wt', newline='') as f:
      writer = csv.writer(f, lineterminator='\n')
      writer.writerow(header)
      writer.writerows(table)

  write(ml.LABELS_FILE, ['subject_id', 'study_id'] + columns, studies)
  write(ml.METADATA_FILE, ['dicom_id', 'subject_id', 'study_id',
                                 'ViewPosition'],
        [[d, s, t, v] for d, s, t, v, _ in images])
  write(ml.SPLIT_FILE, ['dicom_id', 'study_id', 'subject_id', 'split'],
        [[d, t, s, split] for d, s, t, _, split in images])
  return src, {f'd{i}': row for i, row in enumerate(rows)}


def _convert(src, out):
  from xray_tfdata import writer  # pylint: disable=g-import-not-at-top
  writer.convert(src, out, image_size=STORED, num_workers=1, progress=False,
                 patient_id_salt=SALT)
  return out


@pytest.fixture(scope='module')
def real_datasets(tmp_path_factory):
  """{layout: (data_dir, {stored file name: its real CSV row})}."""
  from xray_tfdata import writer  # pylint: disable=g-import-not-at-top
  root = str(tmp_path_factory.mktemp('txv'))
  chexpert = _convert(_chexpert_source(root), os.path.join(root, 'chexpert'))
  by_file = {}
  for row in _real_rows():
    _, split, patient, study, view = row['Path'].split('/')
    by_file['/'.join((split, writer.hashed_patient_id(patient, SALT),
                      writer.hashed_patient_id(f'{patient}/{study}', SALT),
                      view))] = row
  src, by_dicom = _mimic_source(root)
  mimic = _convert(src, os.path.join(root, 'mimic_out'))
  by_mimic_file = {}
  for dicom, row in by_dicom.items():
    by_mimic_file[dicom] = row
  return {'chexpert': (chexpert, by_file), 'mimic': (mimic, by_mimic_file)}


def _read_all(builder, policy):
  """{split: (targets [N, L], stored file names)} in disk order."""
  out = {}
  for split in builder.info.splits:
    targets, names = [], []
    for _, y, meta in builder.as_dataset(
        split, 8, with_metadata=True, label_policy=policy).as_numpy_iterator():
      targets.append(y)
      names += [n.decode() for n in meta['filename']]
    out[split] = (np.concatenate(targets), names)
  return out


def _row_of(layout, by_file, filename):
  from xray_tfdata import writer  # pylint: disable=g-import-not-at-top
  if layout == 'chexpert':
    return by_file[filename]
  # MIMIC's stored name hides the dicom id: find it by its hash.
  stem = os.path.splitext(os.path.basename(filename))[0]
  matches = [row for dicom, row in by_file.items()
             if writer.hashed_patient_id(dicom, SALT) == stem]
  assert len(matches) == 1, filename
  return matches[0]


@pytest.mark.slow  # converts two datasets (about 15 s)
@pytest.mark.parametrize('layout', ['chexpert', 'mimic'])
def test_txv_targets_equal_torchxrayvision_s_rule_on_real_rows(
    real_datasets, layout):
  """Every record's txv targets (the pipeline's decode) equal the
  reference's on the real CSV row it came from; MASKED where it has nan."""
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  data_dir, by_file = real_datasets[layout]
  builder = pipeline.DatasetBuilder(data_dir)
  names = builder.info.label_names
  assert builder.info.layout == layout and 'Support Devices' in names
  read = _read_all(builder, 'txv')
  assert sum(len(f) for _, f in read.values()) == len(_real_rows())
  cleared_by_no_finding = 0
  for targets, files in read.values():
    for got, filename in zip(targets, files):
      row = _row_of(layout, by_file, filename)
      want = np.array(txv_reference(row, names, layout == 'chexpert'),
                      np.float32)
      np.testing.assert_array_equal(
          got, np.where(np.isnan(want), labels.MASKED, want), err_msg=filename)
      cleared_by_no_finding += int(
          row['No Finding'] == '1.0') * sum(row[n] == '' for n in names)
  # The rows exercise the No Finding step: blank cells it turns into 0.
  assert cleared_by_no_finding > 50


@pytest.mark.slow  # converts two datasets (about 15 s)
def test_txv_keeps_support_devices_of_no_finding_rows_only_for_chexpert(
    real_datasets):
  """The difference of the two loaders, on the rows with No Finding 1 and
  Support Devices 1 or -1 (5 of them)."""
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  devices = {}
  for layout in ('chexpert', 'mimic'):
    data_dir, by_file = real_datasets[layout]
    builder = pipeline.DatasetBuilder(data_dir)
    column = builder.info.label_names.index('Support Devices')
    for targets, files in _read_all(builder, 'txv').values():
      for got, filename in zip(targets, files):
        row = _row_of(layout, by_file, filename)
        if row['No Finding'] == '1.0' and row['Support Devices'] in ('1.0',
                                                                    '-1.0'):
          devices.setdefault(layout, []).append(
              (row['Support Devices'], float(got[column])))
  assert sorted(devices['chexpert']) == [('-1.0', labels.MASKED)] + [
      ('1.0', 1.0)] * 4
  assert sorted(devices['mimic']) == [('-1.0', 0.0)] + [('1.0', 0.0)] * 4


@pytest.mark.slow  # converts two datasets (about 15 s)
@pytest.mark.parametrize('layout', ['chexpert', 'mimic'])
def test_txv_counts_and_scoring_targets_follow_the_rule(real_datasets, layout):
  """DatasetBuilder.target_counts (class weights, small-label warnings)
  and the reader's targets (which the evaluation scores) equal a recount
  of the reference's targets;
  a count per raw code (what they were before) would not."""
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  data_dir, by_file = real_datasets[layout]
  builder = pipeline.DatasetBuilder(data_dir)
  names = list(builder.info.label_names)
  read = _read_all(builder, 'txv')
  differs = False
  for split, (_, files) in read.items():
    want = np.array([txv_reference(_row_of(layout, by_file, f), names,
                                   layout == 'chexpert') for f in files])
    recount = {name: {'positive': int((want[:, i] == 1).sum()),
                      'negative': int((want[:, i] == 0).sum())}
               for i, name in enumerate(names)}
    assert builder.target_counts(split, 'txv') == recount
    assert builder.target_counts(split, 'txv', ['Edema', 'Fracture']) == {
        n: recount[n] for n in ('Edema', 'Fracture')}
    codes = builder.label_code_counts(split)
    differs |= any(codes[n][0] != recount[n]['negative'] for n in names)
    # The evaluation's targets are the reader's (evaluation.run), here
    # with the labels asked for in another order.
    got = np.concatenate([y for _, y in builder.as_dataset(
        split, 8, label_policy='txv', labels=names[::-1]).as_numpy_iterator()])
    np.testing.assert_array_equal(
        got, np.where(np.isnan(want), labels.MASKED, want)[:, ::-1])
  assert differs


@pytest.mark.slow  # converts two datasets (about 15 s)
@pytest.mark.parametrize('policy', ['u_ones', 'u_zeros', 'u_ignore'])
def test_the_u_policies_never_read_no_finding(real_datasets, policy):
  """Each target of u_ones, u_zeros and u_ignore follows its own code (the
  hand table), No Finding or not; their counts equal a recount."""
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  data_dir, by_file = real_datasets['chexpert']
  builder = pipeline.DatasetBuilder(data_dir)
  names = builder.info.label_names
  code = {'1.0': 1, '0.0': 0, '-1.0': -1, '': -2}
  for split, (targets, files) in _read_all(builder, policy).items():
    want = np.array([[BY_HAND[policy][code[by_file[f][n]]] for n in names]
                     for f in files], np.float32)
    np.testing.assert_array_equal(targets, want)
    assert builder.target_counts(split, policy) == {
        name: {'positive': int((want[:, i] == 1).sum()),
               'negative': int((want[:, i] == 0).sum())}
        for i, name in enumerate(names)}


def test_target_rule_applies_no_finding_only_where_torchxrayvision_does():
  """By hand: No Finding 1 clears the other labels (CheXpert: not Support
  Devices) under txv; NIH, csv and the u_* policies have no such step."""
  names = ('No Finding', 'Edema', 'Support Devices')
  codes = np.array([[1, -2, 1], [1, -1, -1], [-2, -2, 1], [1, 1, -2]])
  m = labels.MASKED
  np.testing.assert_array_equal(
      labels.target_rule('txv', names, 'chexpert').apply(codes),
      [[1, 0, 1], [1, 0, m], [m, m, 1], [1, 0, m]])
  np.testing.assert_array_equal(
      labels.target_rule('txv', names, 'mimic').apply(codes),
      [[1, 0, 0], [1, 0, 0], [m, m, 1], [1, 0, 0]])
  for policy, layout in (('txv', 'nih'), ('txv', 'csv'), ('txv', None),
                         ('u_ignore', 'chexpert'), ('u_ones', 'mimic')):
    rule = labels.target_rule(policy, names, layout)
    assert rule.no_finding is None
    np.testing.assert_array_equal(rule.apply(codes),
                                  labels.apply_policy(codes, policy))
  # Without a No Finding column there is nothing to read.
  assert labels.target_rule('txv', names[1:], 'chexpert').no_finding is None


# Readers who marked a label of 3 (and of a 1-reader consensus) -> its code
# under each reader policy, written out by hand.
_READER_TABLE = [
    # (marked_by, readers, any, majority, all)
    (0, 3, 0, 0, 0),
    (1, 3, 1, 0, 0),
    (2, 3, 1, 1, 0),
    (3, 3, 1, 1, 1),
    (0, 1, 0, 0, 0),
    (1, 1, 1, 1, 1),
    (1, 2, 1, 0, 0),  # a tie is no majority
    (2, 2, 1, 1, 1),
]


@pytest.mark.parametrize('reader_policy', checks.READER_POLICIES)
def test_reader_policies_give_the_hand_table(reader_policy):
  column = 2 + checks.READER_POLICIES.index(reader_policy)
  marked = np.array([[row[0]] for row in _READER_TABLE])
  readers = np.array([row[1] for row in _READER_TABLE])
  expected = np.array([[row[column]] for row in _READER_TABLE])
  np.testing.assert_array_equal(
      labels.reader_codes(marked, readers, reader_policy), expected)
  # Through a rule: the reader policy first, then the label policy.
  rule = labels.target_rule('u_ones', ('Pleural effusion',), 'vindr',
                            reader_policy)
  np.testing.assert_array_equal(
      rule.apply(np.zeros_like(marked), marked, readers), expected)
  assert rule.key()['reader_policy'] == reader_policy


def test_unknown_reader_policy_is_refused():
  with pytest.raises(ValueError, match='reader policy'):
    labels.target_rule('u_ones', ('A',), 'vindr', 'most')
