"""sources.nih: NIH ChestX-ray14's findings, official split and conversion."""

import collections
import csv
import json
import os

import numpy as np
import pytest

from xray_tfdata import dataset_info
from xray_tfdata import schema
from xray_tfdata import sources

from labelled_trees import (_assert_accounted, _convert, _hash, make_nih,
                            NIH_NO_IMAGE, NIH_ROWS, NIH_UNLABELLED, _plan,
                            _planned, _records, _recount, STORED)
from records import shard_bytes


@pytest.mark.parametrize('text, positives, unknown', [
    ('No Finding', set(), None),
    ('Pleural_Thickening', {'Pleural_Thickening'}, None),
    ('Effusion|Pleural_Thickening', {'Effusion', 'Pleural_Thickening'}, None),
    ('Thickening', None, 'Thickening'),
    ('Pleural Thickening', None, 'Pleural Thickening'),
    ('effusion', None, 'effusion'),
    ('', None, ''),
])
def test_nih_findings_are_parsed_exactly(text, positives, unknown):
  codes, reason = sources.nih.parse_findings(text)
  if positives is None:
    assert codes is None and repr(unknown) in reason
    assert reason.startswith('unknown label value')
  else:
    assert reason is None
    assert codes == tuple(int(n in positives) for n in sources.nih.LABELS)


def test_nih_plan_accounts_for_every_row_and_file(tmp_path):
  src = make_nih(str(tmp_path / 'nih'))
  plan = _plan(src, 'nih', seed=3)
  assert plan.label_names == sources.nih.LABELS == plan.class_names
  planned = _planned(plan)
  by_name = {os.path.basename(p): s for p, s in planned.items()}
  # Official split: test_list.txt is test, val is from train_val_list.txt.
  for name, _, _, _, which in NIH_ROWS:
    if name in by_name:
      assert (by_name[name] == 'test') == (which == 'test'), name
  assert set(plan.splits) == {'train', 'val', 'test'}
  assert plan.splits['val'], 'val is drawn from train_val_list.txt'
  reasons = {s['path']: s['reason'] for s in plan.skipped}
  assert 'unknown label value' in reasons[
      'images_001/images/00000004_000.png']
  assert reasons['00000005_000.png'] == 'missing image'
  assert 'in neither' in reasons['images_001/images/00000011_000.png']
  assert [d['dropped'] for d in plan.duplicates] == [
      'Data_Entry_2017_v2020.csv line 16']
  assert plan.unlabelled == [{'path': NIH_UNLABELLED,
                              'reason': 'no label row'}]
  assert len(planned) + len(plan.skipped) + len(plan.duplicates) == len(
      NIH_ROWS) == plan.num_scanned
  patients = collections.defaultdict(set)
  for f in (f for files in plan.splits.values() for f in files):
    patients[f.patient_id].add(planned[f.path])
    assert f.hash_ids
  assert all(len(s) == 1 for s in patients.values())
  assert plan.split_info['patient_overlap'] == {
      'checked': True, 'patients_in_more_than_one_split': 0}
  first = next(f for f in plan.splits['train'] + plan.splits['val']
               if f.path.endswith('00000001_001.png'))
  assert (first.patient_id, first.view) == ('1', 'PA')
  assert first.labels == tuple(int(n in ('Cardiomegaly', 'Emphysema'))
                               for n in sources.nih.LABELS)


def test_official_split_that_puts_a_patient_in_two_is_moved_to_test(
    tmp_path):
  rows = [r if r[0] != '00000007_001.png' else r[:4] + ('test',)
          for r in NIH_ROWS]
  src = make_nih(str(tmp_path / 'nih'), rows)
  plan = _plan(src, 'nih')
  planned = {os.path.basename(p): s for p, s in _planned(plan).items()}
  assert planned['00000007_000.png'] == planned['00000007_001.png'] == 'test'
  assert plan.split_info['source_overlap'] == {'patients': 1,
                                               'images_moved': 1}
  assert plan.split_info['patient_overlap'][
      'patients_in_more_than_one_split'] == 0


@pytest.fixture(scope='module')
def nih_dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp('nih')
  src = make_nih(str(root / 'nih'))
  out = str(root / 'out')
  return src, out, _convert(src, out, seed=1)


def test_nih_conversion_counts_match_a_recount_of_the_csv(nih_dataset):
  src, out, info = nih_dataset
  on_disk = dataset_info.load_info(out)
  assert on_disk.label_names == sources.nih.LABELS and on_disk.is_multilabel
  assert json.load(open(os.path.join(out, schema.INFO_FILENAME))) == info
  _assert_accounted(info, len(NIH_ROWS))
  records = _records(out)
  split_of = {}  # hashed patient -> split, from the records
  for split, examples in records.items():
    for e in examples:
      split_of[e[schema.PATIENT_ID].decode()] = split
  # The recount: the CSV's rows, minus those the tree made unusable.
  with open(os.path.join(src, 'Data_Entry_2017_v2020.csv'), newline='') as f:
    rows = list(csv.DictReader(f))
  seen, usable = set(), []
  for row in rows:
    name = row['Image Index']
    which = {r[0]: r[4] for r in NIH_ROWS}[name]
    if (name in seen or name in NIH_NO_IMAGE or which is None or
        'Thickening' == row['Finding Labels']):
      continue
    seen.add(name)
    findings = set(row['Finding Labels'].split('|'))
    usable.append((split_of[_hash(row['Patient ID'])],
                   [int(n in findings) for n in sources.nih.LABELS]))
  expected = _recount(usable, sources.nih.LABELS)
  assert {s: e['label_code_counts'] for s, e in info['splits'].items()} == \
      expected
  for split, entry in info['splits'].items():
    assert entry['class_counts'] == {
        n: expected[split][n]['1'] for n in sources.nih.LABELS}
    assert on_disk.label_code_counts(split) == {
        n: {int(c): v for c, v in expected[split][n].items()}
        for n in sources.nih.LABELS}
  assert sum(len(e) for e in records.values()) == len(usable)
  assert {s: len(e) for s, e in records.items()} == {
      s: e['num_examples'] for s, e in info['splits'].items()}


def test_nih_records_hide_the_ids_and_tfds_reads_them(nih_dataset):
  _, out, info = nih_dataset
  records = _records(out)
  test = {e[schema.PATIENT_ID].decode(): e for e in records['test']}
  assert set(test) == {_hash('3'), _hash('10')}
  example = [e for e in records['test']
             if e[schema.PATIENT_ID].decode() == _hash('3')]
  stored = sorted(e[schema.FILENAME].decode() for e in example)
  assert stored == [f'images_001/images/{_hash("3")}_000.png',
                    f'images_002/images/{_hash("3")}_001.png']
  by_name = {e[schema.FILENAME].decode(): e for e in example}
  first = by_name[f'images_001/images/{_hash("3")}_000.png']
  assert first[schema.LABELS].shape == (14,)
  assert list(first[schema.LABELS]) == [
      int(n in ('Effusion', 'Pleural_Thickening')) for n in sources.nih.LABELS]
  assert first[schema.VIEW] == b'PA' and first[schema.STUDY_ID] == b''
  assert first[schema.AGE_YEARS] == 43 and first[schema.SEX] == b'F'
  assert first[schema.ENCODED].shape == (STORED, STORED, 1)
  for examples in records.values():
    for e in examples:
      assert b'0000000' not in e[schema.FILENAME]
  assert info['patient_id'].startswith('hashed')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  image, labels = next(iter(tfds.as_numpy(tfds.builder_from_directory(
      out).as_dataset(split='val', as_supervised=True))))
  assert image.shape == (STORED, STORED, 1) and labels.shape == (14,)
  assert labels.dtype == np.int64
  features = json.load(open(os.path.join(out, 'features.json')))
  text = json.dumps(features)
  for key in (schema.LABELS, schema.VIEW, schema.SEX, schema.AGE_YEARS,
              schema.STUDY_ID):
    assert f'"{key}"' in text
  assert '"label"' not in text


def test_nih_dataset_verifies_and_reads(nih_dataset):
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  _, out, info = nih_dataset
  builder = pipeline.DatasetBuilder(out)
  assert builder.verify() == info['counts']['written']


def test_interrupted_multilabel_run_resumes_to_the_same_bytes(
    nih_dataset, tmp_path, monkeypatch):
  from xray_tfdata import imaging  # pylint: disable=g-import-not-at-top
  src, reference, reference_info = nih_dataset
  decode = imaging.decode_and_resize
  calls = []

  def interrupted(task):
    calls.append(task)
    if len(calls) > 4:
      raise KeyboardInterrupt
    return decode(task)
  monkeypatch.setattr(imaging, 'decode_and_resize', interrupted)
  out = str(tmp_path / 'out')
  with pytest.raises(KeyboardInterrupt):
    _convert(src, out, seed=1)
  assert not os.path.exists(out)
  monkeypatch.setattr(imaging, 'decode_and_resize',
                      lambda task: calls.append(task) or decode(task))
  calls.clear()
  info = _convert(src, out, seed=1)
  assert len(calls) == info['counts']['written'] - 4  # 4 shards were kept
  assert shard_bytes(out) == shard_bytes(reference)
  assert info['splits'] == reference_info['splits']


def test_no_finding_with_a_finding_is_skipped_for_that_reason():
  codes, reason = sources.nih.parse_findings('No Finding|Effusion')
  assert codes is None
  assert reason == ("'No Finding' together with a finding ('Effusion'): the "
                    'row contradicts itself')


@pytest.fixture(scope='module')
def nih_boxed(tmp_path_factory):
  from xray_tfdata.synthetic import nih as synthetic_nih  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('nih_boxes')
  src, out = str(root / 'src'), str(root / 'out')
  summary = synthetic_nih.make_synthetic_nih(
      src, num_images=40, seed=1, size_scale=0.03, num_workers=1, boxes=True)
  return src, out, summary, _convert(src, out)


def _box_rows(src):
  """BBox_List_2017.csv read by position (its header is split by the
  brackets' commas): [(image, finding, x, y, w, h)]."""
  with open(os.path.join(src, 'BBox_List_2017.csv'), newline='') as f:
    rows = list(csv.reader(f))
  assert rows[0][:3] == ['Image Index', 'Finding Label', 'Bbox [x']
  return [(r[0], r[1], *map(float, r[2:6])) for r in rows[1:]]


def test_nih_boxes_are_stored_with_their_label_in_stored_pixels(nih_boxed):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  src, out, summary, info = nih_boxed
  rows = _box_rows(src)
  assert collections.Counter(r[1] for r in rows) == summary['boxes']
  assert set(schema.LABELLED_BOX_KEYS) <= set(info['extra_features'])
  assert not set(schema.READER_FEATURES) & set(info['extra_features'])
  spelled = {'Infiltrate': 'Infiltration'}
  expected = collections.defaultdict(list)
  for name, finding, *box in rows:
    expected[name].append((spelled.get(finding, finding), box))
  paths = {os.path.basename(p): os.path.join(root, p)
           for root, _, names in os.walk(src) for p in names
           if p.endswith('.png')}
  stored_names = {f'{_hash(str(int(n.split("_")[0])))}_{n.split("_", 1)[1]}': n
                  for n in paths}
  stored_boxes = 0
  for record in (r for split in _records(out).values() for r in split):
    # image/filename holds the patient id's hash in place of its prefix.
    name = stored_names[record[schema.FILENAME].decode().split('/')[-1]]
    with Image.open(paths[name]) as image:
      width, height = image.size
    scale = np.array([STORED / width, STORED / height] * 2)
    stored = np.stack([record[k] for k in schema.BOX_KEYS], -1).reshape(-1, 4)
    want = expected.get(name, [])
    np.testing.assert_allclose(
        stored, np.array([b for _, b in want]).reshape(-1, 4) * scale,
        rtol=1e-5)
    assert [sources.nih.LABELS[i] for i in record[schema.BOX_LABEL]] == [
        label for label, _ in want]
    assert list(record[schema.BOX_READER]) == [b''] * len(want)
    stored_boxes += len(want)
  assert stored_boxes == len(rows) > 0


@pytest.mark.parametrize('edit, expected', [
    (lambda r: r.replace(',Infiltrate,', ',Infiltrates,', 1),
     "unknown finding 'Infiltrates'"),
    (lambda r: _widen_first_box(r), 'outside the image'),
])
def test_nih_bad_box_file_gets_one_line_and_nothing_written(
    tmp_path, edit, expected):
  from xray_tfdata.synthetic import nih as synthetic_nih  # pylint: disable=g-import-not-at-top
  src, out = str(tmp_path / 'src'), str(tmp_path / 'out')
  synthetic_nih.make_synthetic_nih(src, num_images=30, seed=1,
                                   size_scale=0.03, num_workers=1, boxes=True)
  path = os.path.join(src, 'BBox_List_2017.csv')
  with open(path) as f:
    text = f.read()
  if 'Infiltrate' not in text:
    text = text.replace(',Mass,', ',Infiltrate,', 1)
  with open(path, 'w') as f:
    f.write(edit(text))
  with pytest.raises(sources.SourceError) as error:
    _convert(src, out)
  assert '\n' not in str(error.value) and expected in str(error.value)
  assert not os.path.exists(out)


def _widen_first_box(text):
  lines = text.split('\n')
  cells = lines[1].split(',')
  cells[4] = '5000'  # w: far past the image's right edge
  lines[1] = ','.join(cells)
  return '\n'.join(lines)


def test_nih_box_rows_of_an_image_without_a_label_row_are_listed(tmp_path):
  from xray_tfdata.synthetic import nih as synthetic_nih  # pylint: disable=g-import-not-at-top
  src = str(tmp_path / 'src')
  synthetic_nih.make_synthetic_nih(src, num_images=30, seed=1,
                                   size_scale=0.03, num_workers=1, boxes=True)
  with open(os.path.join(src, 'BBox_List_2017.csv'), 'a') as f:
    f.write('99999999_000.png,Mass,1,1,2,2\n')
  plan = _plan(src, 'nih')
  assert ('BBox_List_2017.csv: boxes of 1 image(s) no label row names '
          '(99999999_000.png)') in plan.ignored
  boxes = sum(len(f.boxes) for files in plan.splits.values() for f in files)
  assert boxes == len(_box_rows(src)) - 1


@pytest.mark.slow  # starts tools/evaluate
def test_tools_evaluate_plays_the_pointing_game_per_label_on_nih_boxes(
    nih_boxed, tmp_path):
  """tools/evaluate --localization on NIH: per label, the test positives
  with a box of their own label are played, the others counted apart;
  recounted from BBox_List_2017.csv and the test split read with TFDS."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from evaluation_data import quarter_model, write_run  # pylint: disable=g-import-not-at-top
  src, out, _, info = nih_boxed
  spelled = {'Infiltrate': 'Infiltration'}
  boxed = collections.defaultdict(set)  # label -> images with its box
  for name, finding, *_ in _box_rows(src):
    boxed[spelled.get(finding, finding)].add(name)
  test = _records(out)['test']
  label_names = list(info['label_names'])
  # The two boxed findings with the most test positives.
  # image/filename holds the patient id's hash in place of its prefix.
  source_name = {f'{_hash(str(int(n.split("_")[0])))}_{n.split("_", 1)[1]}': n
                 for _, _, names in os.walk(src) for n in names
                 if n.endswith('.png')}
  positives = {
      label: [source_name[os.path.basename(e[schema.FILENAME].decode())]
              for e in test
              if e[schema.LABELS][label_names.index(label)] == 1]
      for label in boxed}
  names = sorted(positives, key=lambda n: -len(positives[n]))[:2]
  model_dir = str(tmp_path / 'run')
  write_run(model_dir, quarter_model(len(names)), out, label_names=names)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [sys.executable, os.path.join(repo, 'tools', 'evaluate'),
       f'--model_dir={model_dir}', f'--data_dir={out}',
       '--bootstrap_resamples=20', '--localization'],
      capture_output=True, text=True, timeout=600, cwd=repo,
      env={**os.environ, 'PYTHONPATH': repo})
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(model_dir, 'evaluation',
                         f'{os.path.basename(out)}-test',
                         'results.json')) as f:
    found = json.load(f)['localization']['labels']
  played = 0
  for name in names:
    own = [i for i in positives[name] if i in boxed[name]]
    assert found[name]['n'] == len(own), name
    assert found[name]['no_box_positives'] == len(positives[name]) - len(own)
    assert 0 <= found[name]['hits'] <= found[name]['n']
    played += len(own)
  assert played > 0
  assert f'localization ({names[0]}): pointing-game hit rate' in result.stdout
