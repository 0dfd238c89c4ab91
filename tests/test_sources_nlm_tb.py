"""sources.nlm_tb: the Shenzhen and Montgomery sets, checked against the
synthetic stand-in's recount and the file names read here."""

import json
import os
import re

import pytest

from labelled_trees import _assert_accounted, _convert, _records
from xray_tfdata import schema
from xray_tfdata import sources
from xray_tfdata.synthetic import nlm_tb as synthetic

NUM_IMAGES = 100


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp('nlm_tb')
  src = str(root / 'nlm')
  recount = synthetic.make_synthetic_nlm_tb(
      src, num_images=NUM_IMAGES, seed=4, size_scale=0.01, num_workers=1)
  out = str(root / 'out')
  info = _convert(src, out, val_fraction=0.2, test_fraction=0.2)
  return src, recount, info, _records(out)


@pytest.mark.parametrize('text, sex, age', [
    ('male 35yrs\nPTB in the left upper field\n', 'M', 35),
    ('female 8yrs\nnormal\n', 'F', 8),
    ('male 23 yrs\nPTB\n', 'M', 23),
    ('female 2months\nnormal\n', 'F', 0),
    ('male35yrs\nnormal\n', 'M', 35),
    ("Patient's Sex: F\nPatient's Age: 035Y\n\nnormal\n", 'F', 35),
    ('normal\n', '', -1),
    ('', '', -1),
])
def test_readings(text, sex, age):
  assert sources.nlm_tb.parse_reading(text) == (sex, age)


def test_conversion_reproduces_the_recount(converted):
  src, recount, info, records = converted
  assert sources.detect(src) == 'nlm_tb'
  _assert_accounted(info, NUM_IMAGES)
  assert info['counts']['written'] == NUM_IMAGES
  assert tuple(info['label_names']) == ('Tuberculosis',)
  positives = sum(s['tuberculosis'] for s in recount['sets'].values())
  codes = {'1': 0, '0': 0, '-1': 0, '-2': 0}
  for entry in info['splits'].values():
    for code, n in entry['label_code_counts']['Tuberculosis'].items():
      codes[code] += n
  assert codes == {'1': positives, '0': NUM_IMAGES - positives, '-1': 0,
                   '-2': 0}
  # Re-split by the fractions asked for; one patient per image.
  assert info['split']['method'] == 'resplit'
  assert {s: e['num_examples'] for s, e in info['splits'].items()} == {
      'train': 60, 'val': 20, 'test': 20}
  patients = [e[schema.PATIENT_ID] for s in records.values() for e in s]
  assert len(set(patients)) == NUM_IMAGES
  assert info['patient_overlap'] == {'checked': True,
                                     'patients_in_more_than_one_split': 0}


def test_label_from_the_name_and_the_reading(converted):
  src, _, _, records = converted
  for examples in records.values():
    for e in examples:
      name = e[schema.FILENAME].decode()
      folder = name.split('/')[0]
      stem = os.path.basename(name)
      # the stem (the patient) is stored hashed
      assert not re.match(r'(CHNCXR|MCUCXR)_\d{4}_[01]', stem)
      assert e[schema.SEX].decode() in ('M', 'F') and e[schema.AGE_YEARS] > 0
  # By the name's last digit: recount from the files themselves.
  by_name = {}
  for folder, prefix in sources.nlm_tb.SETS.values():
    for name in os.listdir(os.path.join(src, folder, 'CXR_png')):
      by_name[name] = int(name[-5])
  written = sorted(int(e[schema.LABELS][0]) for s in records.values()
                   for e in s)
  assert written == sorted(by_name.values())


def test_odd_files_are_accounted_for(tmp_path):
  src = str(tmp_path / 'nlm')
  synthetic.make_synthetic_nlm_tb(src, num_images=20, seed=1,
                                  size_scale=0.01, num_workers=1)
  os.rename(os.path.join(src, 'MontgomerySet/CXR_png/MCUCXR_0001_0.png'),
            os.path.join(src, 'MontgomerySet/CXR_png/MCUCXR_0001.png'))
  os.makedirs(os.path.join(src, 'MontgomerySet/ManualMask'))
  plan = sources.plan(src, sources.options(src))
  assert plan.num_scanned == 19
  assert [u['path'] for u in plan.unlabelled] == [
      'MontgomerySet/CXR_png/MCUCXR_0001.png']
  assert 'no label' in plan.unlabelled[0]['reason']
  assert 'MontgomerySet/ManualMask' in plan.ignored
  assert any('clinical reading(s) without an image' in i
             for i in plan.ignored)


def test_official_split_is_refused(tmp_path):
  src = str(tmp_path / 'nlm')
  synthetic.make_synthetic_nlm_tb(src, num_images=20, seed=1,
                                  size_scale=0.01, num_workers=1)
  with pytest.raises(sources.SourceError, match='no official split'):
    sources.plan(src, sources.options(src, split='official'))


@pytest.mark.slow  # trains
def test_train_evaluate_and_predict_through_the_tools(tmp_path):
  """make_synthetic -> make_tfrecords -> train (1 epoch) -> evaluate ->
  predict on the NLM stand-in, through the tools; the evaluation's counts
  are recounted from the test split read with TFDS."""
  from test_end_to_end import run_tool, run_tools  # pylint: disable=g-import-not-at-top
  src, data = str(tmp_path / 'nlm'), str(tmp_path / 'data')
  model_dir = str(tmp_path / 'run')
  made = run_tool('make_synthetic', f'--out_dir={src}', '--layout=nlm_tb',
                  '--num_images=60', '--seed=3', '--size_scale=0.01',
                  '--num_workers=1')
  assert made.returncode == 0, made.stderr[-3000:]
  converted = run_tool('make_tfrecords', f'--src_dir={src}',
                       f'--out_dir={data}', '--image_size=32',
                       '--val_fraction=0.25', '--test_fraction=0.25',
                       '--num_shards=1', '--num_workers=1', '--noprogress')
  assert converted.returncode == 0, converted.stderr[-3000:]
  trained = run_tool(
      'train', f'--data_dir={data}', f'--model_dir={model_dir}',
      '--backbone=mini_vgg', '--frozen_blocks=0', '--weights=none',
      '--image_size=32', '--batch_size=8', '--epochs=1', '--dense_units=8',
      '--bootstrap_resamples=100', '--policy=float32', '--verbose=0')
  assert trained.returncode == 0, trained.stderr[-3000:]
  images = sorted(os.path.join(root, name) for root, _, names in os.walk(src)
                  for name in names if name.endswith('.png'))
  chosen = [next(p for p in images if p.endswith('_0.png')),
            next(p for p in images if p.endswith('_1.png'))]
  # Both read the finished run: at once.
  done = run_tools({
      'evaluate': ('evaluate', f'--model_dir={model_dir}',
                   f'--data_dir={data}', '--bootstrap_resamples=20'),
      'predict': ('predict', f'--model_dir={model_dir}', *chosen)})
  evaluated, predicted = done['evaluate'], done['predict']
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  with open(os.path.join(model_dir, 'evaluation', 'data-test',
                         'results.json')) as f:
    results = json.load(f)
  assert results['label_names'] == ['Tuberculosis']
  test = _records(data)['test']
  positives = sum(int(e[schema.LABELS][0] == 1) for e in test)
  entry = results['labels']['Tuberculosis']['splits']['test']
  assert (entry['n'], entry['positives']) == (len(test), positives)
  assert 0 < positives < len(test)
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  header, *lines = predicted.stdout.strip().splitlines()
  assert header.split('\t') == ['path', 'Tuberculosis',
                                'Tuberculosis_decision']
  assert [line.split('\t')[0] for line in lines] == chosen
  assert all(0 <= float(line.split('\t')[1]) <= 1 for line in lines)
