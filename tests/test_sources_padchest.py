"""sources.padchest: PadChest's label list, its 16-bit PNGs and conversion,
checked against the synthetic stand-in's own recount and a CSV parsed here
with the csv module and ast."""

import ast
import collections
import gzip
import json
import os

import numpy as np
import pytest
from PIL import Image

from labelled_trees import _assert_accounted, _convert, _records, STORED
from synthetic_checks import read_csv
from xray_tfdata import imaging
from xray_tfdata import run_dir
from xray_tfdata import schema
from xray_tfdata import sources
from xray_tfdata.synthetic import padchest as synthetic_padchest

CSV = synthetic_padchest.CSV_NAME
NUM_IMAGES = 120


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """A stand-in tree, its recount, and its conversion's info and records."""
  root = tmp_path_factory.mktemp('padchest')
  src, out = str(root / 'padchest'), str(root / 'out')
  recount = synthetic_padchest.make_synthetic_padchest(
      src, num_images=NUM_IMAGES, seed=4, size_scale=0.025, num_workers=1)
  info = _convert(src, out)
  return src, recount, info, _records(out)


@pytest.mark.parametrize('cell, terms, reason', [
    ("['pleural effusion', 'cardiomegaly']",
     ['pleural effusion', 'cardiomegaly'], None),
    ("['normal']", ['normal'], None),
    # Substring matching would find 'effusion' in both; a literal does not.
    ("['pleural effusion', ' pleural effusion ']", ['pleural effusion'],
     None),
    ("['']", None, 'empty label list'),
    ('[]', None, 'empty label list'),
    ('', None, 'blank Labels cell'),
    ('nan', None, "Labels cell 'nan'"),
])
def test_labels_are_parsed_as_literals(cell, terms, reason):
  got, why = sources.padchest.parse_labels(cell, 'f line 2')
  assert got == terms
  assert (why is None) == (reason is None) and (reason or '') in (why or '')


@pytest.mark.parametrize('cell', [
    "['pleural effusion'", 'pleural effusion', '[1, 2]', "{'a'}",
    "__import__('os')"])
def test_a_malformed_list_is_one_line(cell):
  with pytest.raises(sources.SourceError) as raised:
    sources.padchest.parse_labels(cell, 'f line 7')
  message = str(raised.value)
  assert '\n' not in message and 'f line 7' in message and 'fix' in message


def test_conversion_reproduces_the_recount(converted):
  src, recount, info, records = converted
  _, rows, _ = read_csv(os.path.join(src, CSV))
  unlisted = recount['empty_list'] + recount['missing']
  assert unlisted >= 2
  _assert_accounted(info, recount['rows'])
  assert info['counts']['written'] == recount['rows'] - unlisted
  assert info['counts']['skipped'] == unlisted
  assert info['counts']['unlabelled'] == 0
  assert sorted(s['reason'].split(':')[0] for s in info['skipped']) == sorted(
      ['blank Labels cell'] * recount['missing'] +
      [f'empty label list "[\'\']"'] * recount['empty_list'])
  # The vocabulary is the terms found, 'normal' not among them.
  terms = dict(recount['labels'])
  normal = terms.pop(synthetic_padchest.NORMAL)
  assert normal == recount['normal'] > 0
  assert tuple(info['label_names']) == tuple(sorted(terms))
  for name, positives in terms.items():
    codes = collections.Counter()
    for entry in info['splits'].values():
      codes.update({k: v for k, v in entry['label_code_counts'][name].items()})
    assert codes['1'] == positives, name
    assert codes['0'] == info['counts']['written'] - positives, name
    assert codes['-1'] == codes['-2'] == 0
  # Every written ['normal'] row is all negative.
  written = [e for split in records.values() for e in split]
  assert sum(int(not e[schema.LABELS].any()) for e in written) == normal
  assert info['patient_overlap'] == {'checked': True,
                                     'patients_in_more_than_one_split': 0}


def test_records_carry_view_method_sex_and_age(converted):
  """Each record's view, label method, sex and age, matched to its CSV row
  by ImageDir and the ImageID after the (hashed) study id."""
  src, recount, info, records = converted
  _, rows, _ = read_csv(os.path.join(src, CSV))
  by_key = {(r['ImageDir'], r['ImageID'].split('_', 1)[1]): r for r in rows}
  assert schema.LABEL_METHOD in info['extra_features']
  methods = collections.Counter()
  for split in records.values():
    for e in split:
      folder, name = e[schema.FILENAME].decode().split('/')
      study_hash, rest = name.split('_', 1)
      row = by_key[(folder, rest)]
      assert study_hash != row['StudyID']  # stored hashed
      assert e[schema.VIEW].decode() == row['Projection']
      assert e[schema.LABEL_METHOD].decode() == row['MethodLabel']
      assert e[schema.SEX].decode() == row['PatientSex_DICOM']
      assert e[schema.AGE_YEARS] == (int(row['StudyDate_DICOM'][:4]) -
                                     int(float(row['PatientBirth'])))
      assert e[schema.PATIENT_ID].decode() != row['PatientID']
      methods[row['MethodLabel']] += 1
  assert set(methods) == {'Physician', 'RNN_model'}
  listed = [r for r in rows if r['Labels'] not in ('', "['']")]
  assert methods == collections.Counter(r['MethodLabel'] for r in listed)
  assert sum(e[schema.AGE_YEARS] <= 10 for s in records.values()
             for e in s) >= 1  # children are kept


def _hand_window(row, values):
  """(low, high) from the CSV as written out in DICOM PS3.3 C.11.2.1.2.1,
  else the bits stored, else the next even depth; computed here."""
  if row['WindowCenter_DICOM'] != 'None':
    c, w = float(row['WindowCenter_DICOM']), float(row['WindowWidth_DICOM'])
    return c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
  bits = int(row['BitsStored_DICOM'])
  if values.max() < 2 ** bits:
    return 0, 2 ** bits - 1
  depth = int(values.max()).bit_length()
  return 0, 2 ** (depth + depth % 2) - 1


def test_sixteen_bit_pixels_follow_the_csv(converted):
  """Stored pixels equal the CSV's window (or bits stored) applied by hand
  to PIL's bilinear resize; a 12-bit film uses most of the 256 levels,
  where a blind /65535 would use a sixteenth."""
  src, _, _, records = converted
  _, rows, _ = read_csv(os.path.join(src, CSV))
  by_key = {(r['ImageDir'], r['ImageID'].split('_', 1)[1]): r for r in rows}
  spans = collections.defaultdict(list)
  for e in (e for split in records.values() for e in split):
    folder, name = e[schema.FILENAME].decode().split('/')
    row = by_key[(folder, name.split('_', 1)[1])]
    with Image.open(os.path.join(src, folder, row['ImageID'])) as image:
      values = np.asarray(image, np.float32)
    low, high = _hand_window(row, values)
    resized = np.asarray(Image.fromarray(values, 'F').resize(
        (STORED, STORED), Image.Resampling.BILINEAR))
    want = np.clip(np.rint((resized - low) * 255 / (high - low)), 0, 255)
    stored = np.asarray(e[schema.ENCODED])[..., 0].astype(np.float64)
    assert np.abs(stored - want).max() <= 1, row['ImageID']
    blind = np.rint(resized * 255 / 65535)
    spans[row['BitsStored_DICOM']].append(
        (np.ptp(stored), np.ptp(blind)))
  for bits in ('10', '12'):
    rule, blind = np.median(np.array(spans[bits]), axis=0)
    assert rule >= 128 and blind <= 16, (bits, rule, blind)
  rule, _ = np.median(np.array(spans['16']), axis=0)
  assert rule >= 128


@pytest.mark.parametrize('given, rule', [
    ((12, 2000.5, 1001.0), 'window'),
    ((12, None, None), 'bits_stored'),
    ((8, None, None), 'image_depth'),  # its values do not fit 8 bits
    ((None, None, None), 'image_depth'),
])
def test_sixteen_bit_range_rules(given, rule):
  values = np.array([[0, 1000], [3000, 4000]], np.float32)
  low, high, got = imaging.sixteen_bit_range(values, *given)
  assert got == rule
  if rule == 'window':  # PS3.3: c - 0.5 -+ (w - 1) / 2
    assert (low, high) == (1500.0, 2500.0)
  else:
    assert (low, high) == (0.0, 4095.0)  # 12 bits either way here


def _rewrite_csv(src, edit):
  path = os.path.join(src, CSV)
  with open(path, encoding='utf-8') as f:
    text = f.read()
  with open(path, 'w', encoding='utf-8') as f:
    f.write(edit(text))


def _small_tree(root, gzip_csv=False):
  src = str(root / 'padchest')
  synthetic_padchest.make_synthetic_padchest(
      src, num_images=20, seed=1, size_scale=0.01, num_workers=1,
      gzip_csv=gzip_csv)
  return src


def test_detected_and_read_from_csv_gz(tmp_path):
  src = _small_tree(tmp_path, gzip_csv=True)
  assert os.path.isfile(os.path.join(src, CSV + '.gz'))
  assert sources.detect(src) == 'padchest'
  plan = sources.plan(src, sources.options(src))
  assert plan.layout == 'padchest' and plan.split_info['method'] == 'resplit'
  assert plan.num_scanned == 20


@pytest.mark.parametrize('edit, words', [
    (lambda t: t.replace(',Labels,', ',Labelz,', 1), "no column 'Labels'"),
    (lambda t: t.replace("['", "[['", 1), 'is not a list of terms'),
])
def test_bad_input_is_one_line_and_nothing_written(tmp_path, edit, words):
  src = _small_tree(tmp_path)
  _rewrite_csv(src, edit)
  out = str(tmp_path / 'out')
  with pytest.raises(sources.SourceError) as raised:
    _convert(src, out)
  message = str(raised.value)
  assert words in message and '\n' not in message
  assert not os.path.exists(out)
  assert not any(n.startswith('out') for n in os.listdir(tmp_path)
                 if n != 'out.lock')


def test_official_split_is_refused(tmp_path):
  src = _small_tree(tmp_path)
  with pytest.raises(sources.SourceError, match='no official split'):
    sources.plan(src, sources.options(src, split='official'))


@pytest.mark.slow
def test_train_evaluate_and_predict_through_the_tools(tmp_path):
  """make_synthetic -> make_tfrecords -> train (1 epoch, mini_vgg) ->
  evaluate on the physician-labelled test images -> predict on a PadChest
  stand-in, through the tools. The evaluation's counts are recounted from
  the test split read with TFDS."""
  from test_end_to_end import run_tool, run_tools  # pylint: disable=g-import-not-at-top
  tree, data = str(tmp_path / 'tree'), str(tmp_path / 'data')
  made = run_tool('make_synthetic', f'--out_dir={tree}', '--layout=padchest',
                  '--num_images=100', '--seed=2', '--size_scale=0.02',
                  '--num_workers=1')
  assert made.returncode == 0, made.stderr[-3000:]
  converted = run_tool('make_tfrecords', f'--src_dir={tree}',
                       f'--out_dir={data}', '--image_size=32',
                       '--num_shards=1', '--num_workers=1', '--noprogress')
  assert converted.returncode == 0, converted.stderr[-3000:]
  with open(os.path.join(data, 'xray_info.json')) as f:
    info = json.load(f)
  assert info['layout'] == 'padchest'
  chosen = ('cardiomegaly', 'pleural effusion')
  model_dir = str(tmp_path / 'run')
  trained = run_tool(
      'train', f'--data_dir={data}', f'--model_dir={model_dir}',
      '--backbone=mini_vgg', '--frozen_blocks=0', '--weights=none',
      '--image_size=32', '--batch_size=16', '--epochs=1',
      '--dense_units=8', '--bootstrap_resamples=100', '--policy=float32',
      f'--labels={",".join(chosen)}', '--verbose=2')
  assert trained.returncode == 0, trained.stderr[-3000:]
  run = run_dir.read(model_dir)
  assert run.label_names == chosen
  assert set(run.label_results()) == set(chosen)
  _, rows, _ = read_csv(os.path.join(tree, CSV))
  image = os.path.join(tree, rows[0]['ImageDir'], rows[0]['ImageID'])
  # Both read the finished run: at once.
  done = run_tools({
      'predict': ('predict', f'--model_dir={model_dir}', '--output=csv',
                  image),
      'evaluate': ('evaluate', f'--model_dir={model_dir}',
                   f'--data_dir={data}', '--label_methods=Physician',
                   '--bootstrap_resamples=20')})
  predicted, evaluated = done['predict'], done['evaluate']
  assert predicted.returncode == 0, predicted.stderr[-2000:]
  header, row = predicted.stdout.strip().splitlines()[-2:]
  assert len(header.split(',')) == len(row.split(',')) == 1 + 2 * len(chosen)
  cells = dict(zip(header.split(','), row.split(',')))
  for name in chosen:
    assert 0 <= float(cells[name]) <= 1, cells
  physician = [e for e in _records(data)['test']
               if e[schema.LABEL_METHOD] == b'Physician']
  names = list(info['label_names'])
  assert 0 < len(physician) < info['splits']['test']['num_examples']
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  out = os.path.join(model_dir, run_dir.EVALUATION_DIR,
                     f'{os.path.basename(data)}-test-Physician')
  with open(os.path.join(out, run_dir.RESULTS_JSON)) as f:
    results = json.load(f)
  assert results['label_methods'] == ['Physician']
  for name in chosen:
    test = results['labels'][name]['splits']['test']
    positives = sum(int(e[schema.LABELS][names.index(name)] == 1)
                    for e in physician)
    assert (test['n'], test['positives']) == (len(physician), positives)
  # The run's own evaluation has every test image, cut by label method.
  own = run.label_results()[chosen[0]]['splits']['test']
  assert own['n'] == info['splits']['test']['num_examples']
  assert own['subgroups']['label_method']['Physician']['n'] == len(physician)
  assert 'label methods Physician: kept' in ' '.join(
      results['data']['label_mapping']['notes'])
