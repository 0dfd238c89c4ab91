"""sources.nih_google: Google's expert labels over an NIH tree, checked
against the synthetic stand-in's recount and its files read with csv."""

import collections
import json
import os

import pytest

from labelled_trees import _assert_accounted, _convert, _hash, _records
from synthetic_checks import read_csv
from xray_tfdata import schema
from xray_tfdata import sources
from xray_tfdata.synthetic import nih_google as synthetic

NUM_IMAGES = 120


def _tree(root, set_id_file=False, num_images=NUM_IMAGES):
  src = str(root / 'nih')
  recount = synthetic.make_synthetic_nih_google(
      src, num_images=num_images, seed=4, size_scale=0.02, num_workers=1,
      set_id_file=set_id_file)
  return src, recount


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp('nih_google')
  src, recount = _tree(root)
  info = _convert(src, str(root / 'out'))
  return src, recount, info, _records(str(root / 'out'))


def test_detected_beside_the_nih_label_file(tmp_path):
  src, _ = _tree(tmp_path, num_images=40)
  assert any(n.startswith('Data_Entry_2017') for n in os.listdir(src))
  assert sources.detect(src) == 'nih_google'
  assert sources.SOURCES['nih'].detect(src)  # NIH's own file is there


def test_conversion_reproduces_the_recount(converted):
  src, recount, info, records = converted
  num_rows = sum(recount['expert'].values())
  _assert_accounted(info, num_rows)
  assert info['counts']['written'] == num_rows
  assert tuple(info['label_names']) == synthetic.LABELS
  # Official: the validation file is val, the test file test, no train.
  assert set(info['splits']) == {'val', 'test'}
  for split, name in (('val', 'validation'), ('test', 'test')):
    entry = info['splits'][split]
    assert entry['num_examples'] == recount['expert'][name]
    for label in synthetic.LABELS:
      yes = recount['expert_yes'][name][label]
      assert entry['label_code_counts'][label] == {
          '1': yes, '0': recount['expert'][name] - yes, '-1': 0, '-2': 0}
  # Every NIH image without an expert row is accounted for as unlabelled.
  images = sum(len(n) for _, _, n in os.walk(src)) - sum(
      1 for n in os.listdir(src) if os.path.isfile(os.path.join(src, n)))
  assert info['counts']['unlabelled'] == images - num_rows
  assert {u['reason'] for u in info['unlabelled']} == {'no label row'}
  assert info['patient_overlap'] == {'checked': True,
                                     'patients_in_more_than_one_split': 0}


def test_records_match_the_expert_rows(converted):
  src, _, _, records = converted
  expected = {}
  for name, split in sources.nih_google.SPLIT_FILES.items():
    _, rows, _ = read_csv(os.path.join(src, name))
    for row in rows:
      # Stored with the patient id that prefixes it hashed.
      number = row['Image Index'].split('_', 1)[1]
      expected[f'{_hash(str(int(row["Patient ID"])))}_{number}'] = (
          split, tuple(int(row[l] == 'YES') for l in synthetic.LABELS),
          row['View Position'])
  seen = collections.Counter()
  for split, examples in records.items():
    for e in examples:
      name = e[schema.FILENAME].decode().rsplit('/', 1)[1]
      want_split, codes, view = expected[name]
      assert (split, tuple(e[schema.LABELS]), e[schema.VIEW].decode()) == (
          want_split, codes, view)
      seen[split] += 1
  assert sum(seen.values()) == len(expected)


def test_set_id_file_gives_the_same_splits(tmp_path):
  src, recount = _tree(tmp_path, set_id_file=True)
  assert os.listdir(src).count(synthetic.SET_ID_FILE) == 1
  plan = sources.plan(src, sources.options(src))
  assert {s: len(f) for s, f in plan.splits.items()} == {
      'val': recount['expert']['validation'], 'test': recount['expert']['test']}


def test_resplit_draws_train_too(tmp_path):
  src, recount = _tree(tmp_path)
  plan = sources.plan(src, sources.options(src, resplit=True))
  assert set(plan.splits) == {'train', 'val', 'test'}
  assert sum(len(f) for f in plan.splits.values()) == sum(
      recount['expert'].values())
  assert plan.split_info['patient_overlap'][
      'patients_in_more_than_one_split'] == 0


def test_unknown_yes_no_value_is_one_line_nothing_written(tmp_path):
  src, _ = _tree(tmp_path, num_images=40)
  path = os.path.join(src, 'four_findings_expert_labels_test_labels.csv')
  with open(path, encoding='utf-8') as f:
    lines = f.read().split('\n')
  lines[1] = lines[1][:-len('NO')] + 'MAYBE' if lines[1].endswith(
      'NO') else lines[1][:-len('YES')] + 'MAYBE'
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines))
  out = str(tmp_path / 'out')
  with pytest.raises(sources.SourceError) as raised:
    _convert(src, out)
  message = str(raised.value)
  assert "'MAYBE', not YES or NO" in message and 'line 2' in message
  assert '\n' not in message
  assert not os.path.exists(out)


def test_missing_column_is_one_line(tmp_path):
  src, _ = _tree(tmp_path, num_images=40)
  path = os.path.join(src, 'four_findings_expert_labels_test_labels.csv')
  with open(path, encoding='utf-8') as f:
    text = f.read()
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text.replace('Airspace opacity', 'Airspace', 1))
  with pytest.raises(sources.SourceError,
                     match="no column 'Airspace opacity'"):
    sources.plan(src, sources.options(src))


@pytest.mark.slow  # trains
def test_an_nih_model_is_evaluated_on_the_expert_labels(tmp_path):
  """One tree converted twice, as NIH (train on it, 1 epoch) and as
  Google's expert labels; tools/evaluate scores the NIH run on the expert
  test split, matching Pneumothorax by name; its counts are recounted from
  Google's test file read with csv; tools/predict runs on the run."""
  from test_end_to_end import run_tool, run_tools  # pylint: disable=g-import-not-at-top
  src, model_dir = str(tmp_path / 'nih'), str(tmp_path / 'run')
  nih, google = str(tmp_path / 'nih_data'), str(tmp_path / 'google_data')
  _tree(tmp_path)  # make_synthetic runs as a tool in test_end_to_end
  converted = run_tools({
      layout: ('make_tfrecords', f'--src_dir={src}', f'--out_dir={out}',
               f'--layout={layout}', '--image_size=32', '--num_shards=1',
               '--num_workers=1', '--noprogress')
      for layout, out in (('nih', nih), ('nih_google', google))})
  for result in converted.values():
    assert result.returncode == 0, result.stderr[-3000:]
  trained = run_tool(
      'train', f'--data_dir={nih}', f'--model_dir={model_dir}',
      '--backbone=mini_vgg', '--frozen_blocks=0', '--weights=none',
      '--image_size=32', '--batch_size=16', '--epochs=1', '--dense_units=8',
      '--bootstrap_resamples=100', '--policy=float32', '--verbose=0')
  assert trained.returncode == 0, trained.stderr[-3000:]
  _, rows, _ = read_csv(os.path.join(src, synthetic.SPLIT_FILES['test']))
  image = next(os.path.join(root, rows[0]['Image Index'])
               for root, _, names in os.walk(src)
               if rows[0]['Image Index'] in names)
  # Both read the finished run: at once.
  done = run_tools({
      'evaluate': ('evaluate', f'--model_dir={model_dir}',
                   f'--data_dir={google}', '--bootstrap_resamples=20'),
      'predict': ('predict', f'--model_dir={model_dir}', image)})
  evaluated, predicted = done['evaluate'], done['predict']
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  with open(os.path.join(model_dir, 'evaluation', 'google_data-test',
                         'results.json')) as f:
    results = json.load(f)
  mapping = results['data']['label_mapping']
  assert mapping['matched'] == {'Pneumothorax': 'Pneumothorax'}
  entry = results['labels']['Pneumothorax']['splits']['test']
  assert (entry['n'], entry['positives']) == (
      len(rows), sum(r['Pneumothorax'] == 'YES' for r in rows))
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  header, line = predicted.stdout.strip().splitlines()
  assert 'Pneumothorax' in header.split('\t')
  assert line.split('\t')[0] == image
