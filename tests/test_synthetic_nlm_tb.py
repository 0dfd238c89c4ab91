"""The synthetic NLM tuberculosis sets (xray_tfdata/synthetic/nlm_tb.py):
names, labels from the file name, readings, and the sign in the pixels."""

import collections
import os
import re

import pytest

from synthetic_checks import auc
from synthetic_checks import cross_validated_auc
from synthetic_checks import files
from synthetic_checks import region_means
from xray_tfdata.synthetic import nlm_tb

NUM_IMAGES = 80
_NAME = re.compile(r'(ChinaSet_AllFiles|MontgomerySet)/CXR_png/'
                   r'(CHNCXR|MCUCXR)_(\d{4})_([01])\.png')


@pytest.fixture(scope='module')
def tb_tree(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('tb') / 'nlm_tb')
  summary = nlm_tb.make_synthetic_nlm_tb(out, num_images=NUM_IMAGES, seed=7,
                                         size_scale=0.02, num_workers=1)
  return out, summary


def test_names_labels_and_readings(tb_tree):
  out, summary = tb_tree
  pngs = [f for f in files(out) if f.endswith('.png')]
  assert len(pngs) == NUM_IMAGES
  counts = collections.defaultdict(collections.Counter)
  numbers = collections.defaultdict(list)
  for path in pngs:
    match = _NAME.fullmatch(path)
    assert match, path
    folder, prefix, number, label = match.groups()
    assert (folder == 'ChinaSet_AllFiles') == (prefix == 'CHNCXR')
    name = 'shenzhen' if prefix == 'CHNCXR' else 'montgomery'
    counts[name]['tuberculosis' if label == '1' else 'normal'] += 1
    numbers[name].append((int(number), label))
    reading = os.path.join(out, folder, 'ClinicalReadings',
                           os.path.basename(path)[:-4] + '.txt')
    with open(reading, encoding='utf-8') as f:
      text = f.read()
    if name == 'shenzhen':
      assert re.match(r'(male|female) \d+yrs\n', text)
    else:
      assert re.match(r"Patient's Sex: [MF]\nPatient's Age: \d{3}Y\n", text)
    assert ('PTB' in text) == (label == '1')
  assert {k: dict(v) for k, v in counts.items()} == summary['sets']
  assert all(set(v) == {'normal', 'tuberculosis'} for v in counts.values())
  for name, found in numbers.items():
    assert sorted(n for n, _ in found) == list(range(1, len(found) + 1))
  # Shenzhen numbers its normal images first.
  shenzhen = [label for _, label in sorted(numbers['shenzhen'])]
  assert shenzhen == sorted(shenzhen)
  assert summary['num_patients'] == NUM_IMAGES  # one patient per image


def test_tuberculosis_shows_in_the_upper_lungs(tb_tree):
  out, _ = tb_tree
  upper = [(0.2, 0.42, 0.2, 0.4), (0.2, 0.42, 0.6, 0.8)]
  middle = [(0.45, 0.6, 0.2, 0.4), (0.45, 0.6, 0.6, 0.8)]
  draws = {True: [], False: []}
  for path in files(out):
    if path.endswith('.png'):
      top, mid = region_means(os.path.join(out, path), [upper, middle])
      draws[path.endswith('_1.png')].append(top - mid)
  assert auc(draws[True], draws[False]) > 0.85


@pytest.mark.slow  # fits a model
def test_a_model_learns_tuberculosis_from_the_pixels(tmp_path):
  out = str(tmp_path / 'tb')
  nlm_tb.make_synthetic_nlm_tb(out, num_images=300, seed=7, size_scale=0.01,
                               num_workers=1)
  paths = [os.path.join(out, f) for f in files(out) if f.endswith('.png')]
  labels = [p.endswith('_1.png') for p in paths]
  assert cross_validated_auc(paths, labels) > 0.9
