"""sources.vindr: VinDr-CXR's two layouts converted, every reader kept.

The references are independent of the source module: the stand-in's label
files recounted here with the csv module (per image, label and reader), the
generator's own recount (`make_synthetic_vindr`'s summary), and the DICOM
headers read with pydicom for the boxes' scale."""

import collections
import csv
import json
import os

import numpy as np
import pytest

from xray_tfdata import schema
from xray_tfdata import sources
from xray_tfdata.synthetic import vindr as synthetic_vindr

from labelled_trees import _convert, _hash, _records

pydicom = pytest.importorskip('pydicom')
NUM_IMAGES = 40


def _rows(path):
  with open(path, newline='', encoding='utf-8') as f:
    return list(csv.DictReader(f))


def _reference(src, release):
  """Independent recount of a stand-in's label files: {image_id: (split,
  {reader: set of labels}, [(x_min, y_min, x_max, y_max, label, reader)])},
  the label names, and {file: rows}."""
  images = {}
  rows_per_file = {}
  if release == 'competition':
    label_names = synthetic_vindr.CLASSES
    rows = _rows(os.path.join(src, 'train.csv'))
    rows_per_file['train.csv'] = len(rows)
    for row in rows:
      split, reads, boxes = images.setdefault(row['image_id'],
                                              ('train', {}, []))
      reads.setdefault(row['rad_id'], set()).add(row['class_name'])
      if row['x_min']:
        boxes.append((*(float(row[k]) for k in ('x_min', 'y_min', 'x_max',
                                                'y_max')),
                      row['class_name'], row['rad_id']))
    return images, label_names, rows_per_file
  label_names = synthetic_vindr.PHYSIONET_LABELS
  for split in ('train', 'test'):
    name = f'annotations/image_labels_{split}.csv'
    rows = _rows(os.path.join(src, name))
    rows_per_file[name] = len(rows)
    for row in rows:
      _, reads, _ = images.setdefault(row['image_id'], (split, {}, []))
      reads[row.get('rad_ID', '')] = {l for l in label_names if row[l] == '1'}
    name = f'annotations/annotations_{split}.csv'
    rows = _rows(os.path.join(src, name))
    rows_per_file[name] = len(rows)
    for row in rows:
      if row['x_min']:
        images[row['image_id']][2].append(
            (*(float(row[k]) for k in ('x_min', 'y_min', 'x_max', 'y_max')),
             row['class_name'], row.get('rad_id', '')))
  return images, label_names, rows_per_file


@pytest.fixture(scope='module', params=synthetic_vindr.RELEASES)
def converted(request, tmp_path_factory):
  release = request.param
  root = tmp_path_factory.mktemp(f'vindr_{release}')
  src, out = str(root / 'src'), str(root / 'out')
  summary = synthetic_vindr.make_synthetic_vindr(
      src, num_images=NUM_IMAGES, seed=2, size_scale=0.025, num_workers=1,
      release=release)
  # The competition labels train only: its split is drawn.
  kwargs = {'resplit': True} if release == 'competition' else {}
  info = _convert(src, out, **kwargs)
  return release, src, out, summary, info


def test_vindr_is_detected_in_either_layout(converted):
  _, src, _, _, info = converted
  assert sources.detect(src) == 'vindr'
  assert info['layout'] == 'vindr'


def test_vindr_conversion_reproduces_the_recount_per_label_and_reader(
    converted):
  release, src, out, summary, info = converted
  images, label_names, rows_per_file = _reference(src, release)
  assert tuple(info['label_names']) == label_names
  # Every row and file accounted for.
  assert info['split']['label_rows'] == rows_per_file
  labelled = {i for i, (split, _, _) in images.items()}
  assert info['counts']['scanned'] == len(labelled)
  assert (info['counts']['written'] + info['counts']['skipped'] +
          info['counts']['duplicates']) == len(labelled)
  assert info['counts']['written'] == len(labelled)
  unlabelled = {e['path'] for e in info['unlabelled']}
  dicoms = {f'{s}/{n}' for s in ('train', 'test')
            for n in os.listdir(os.path.join(src, s))}
  assert unlabelled == dicoms - {f'{images[i][0]}/{i}.dicom' for i in images}
  assert bool(unlabelled) == (release == 'competition')  # test/ unlabelled
  assert info['patient_overlap'] == {'checked': True,
                                     'patients_in_more_than_one_split': 0}
  # The records: per image its readers and per label how many marked it.
  by_hash = {_hash(i): i for i in images}
  records = [r for split in _records(out).values() for r in split]
  assert len(records) == len(images)
  marked_recount = collections.defaultdict(collections.Counter)
  for record in records:
    image_id = by_hash[record[schema.PATIENT_ID].decode()]
    split, reads, _ = images[image_id]
    assert record[schema.NUM_READERS] == len(reads)
    expected = [sum(label in marks for marks in reads.values())
                for label in label_names]
    np.testing.assert_array_equal(record[schema.MARKED_BY], expected)
    np.testing.assert_array_equal(record[schema.LABELS],
                                  [int(k > 0) for k in expected])
    for label, k in zip(label_names, expected):
      marked_recount[(split, label)][k] += 1
  # xray_info's counts per label and reader count = the recount, and the
  # generator's own (train images, k > 0).
  written = collections.defaultdict(collections.Counter)
  readers = collections.Counter()
  for split, entry in info['splits'].items():
    source_split = 'test' if split == 'test' and release == 'physionet' \
        else 'train'
    for label, cells in entry['marked_by_counts'].items():
      written[(source_split, label)].update(
          {int(k): n for k, n in cells.items()})
    readers.update({int(k): n for k, n in entry['reader_counts'].items()})
  assert written == marked_recount
  for label, cells in summary['marked'].items():
    assert {k: n for k, n in written[('train', label)].items() if k} == cells
  assert readers[synthetic_vindr.READERS] == summary['readers_per_image'][
      synthetic_vindr.READERS]
  for label in label_names:
    positives = sum(entry['label_code_counts'][label]['1']
                    for entry in info['splits'].values())
    assert positives == sum(n for (s, l), c in marked_recount.items()
                            if l == label for k, n in c.items() if k)


def test_vindr_records_keep_every_box_with_its_label_and_reader(converted):
  release, src, out, _, info = converted
  images, label_names, _ = _reference(src, release)
  assert set(schema.LABELLED_BOX_KEYS + schema.READER_FEATURES) <= set(
      info['extra_features'])
  by_hash = {_hash(i): i for i in images}
  num_boxes, ages, sexes = 0, [], []
  for record in (r for split in _records(out).values() for r in split):
    image_id = by_hash[record[schema.PATIENT_ID].decode()]
    split, _, boxes = images[image_id]
    header = pydicom.dcmread(os.path.join(src, split, image_id + '.dicom'),
                             stop_before_pixels=True)
    scale = np.array([STORED_SIZE / header.Columns,
                      STORED_SIZE / header.Rows] * 2)
    stored = np.stack([record[k] for k in schema.BOX_KEYS], -1).reshape(-1, 4)
    expected = np.array([(x0, y0, x1 - x0, y1 - y0)
                         for x0, y0, x1, y1, _, _ in boxes]).reshape(-1, 4)
    np.testing.assert_allclose(stored, expected * scale, rtol=1e-5)
    assert [label_names[i] for i in record[schema.BOX_LABEL]] == [
        label for *_, label, _ in boxes]
    assert [r.decode() for r in record[schema.BOX_READER]] == [
        reader for *_, reader in boxes]
    num_boxes += len(boxes)
    # Sex and age from the header, read here: 'O' and blank are unknown.
    sex, age = str(header.get('PatientSex', '')), str(header.get(
        'PatientAge', ''))
    stored_sex = record[schema.SEX].decode()
    assert stored_sex == (sex if sex in ('M', 'F') else ''), (sex, stored_sex)
    assert record[schema.AGE_YEARS] == (int(age[:-1]) if age else -1), age
    ages.append(int(record[schema.AGE_YEARS]))
    sexes.append(stored_sex)
  assert num_boxes == sum(len(b) for _, _, b in images.values()) > 0
  assert {'M', 'F', ''} <= set(sexes) and -1 in ages and max(ages) > 0


STORED_SIZE = 16  # labelled_trees.STORED


def test_vindr_competition_official_split_is_refused_in_one_line(tmp_path):
  src = str(tmp_path / 'src')
  synthetic_vindr.make_synthetic_vindr(src, num_images=20, seed=1,
                                       size_scale=0.02, num_workers=1)
  with pytest.raises(sources.SourceError) as error:
    sources.plan(src, sources.vindr.Options())
  message = str(error.value)
  assert '\n' not in message and '--resplit' in message
  assert 'test' in message


def _edit_first_box(path, edit):
  with open(path, newline='', encoding='utf-8') as f:
    rows = list(csv.reader(f))
  header = rows[0]
  row = next(r for r in rows[1:] if r[header.index('x_min')])
  edit(header, row)
  with open(path, 'w', newline='', encoding='utf-8') as f:
    csv.writer(f).writerows(rows)
  return row


def test_vindr_box_outside_the_image_gets_one_line_and_nothing_written(
    tmp_path):
  src, out = str(tmp_path / 'src'), str(tmp_path / 'out')
  synthetic_vindr.make_synthetic_vindr(src, num_images=20, seed=1,
                                       size_scale=0.02, num_workers=1,
                                       release='physionet')

  def beyond(header, row):
    row[header.index('x_max')] = '5000'
  row = _edit_first_box(os.path.join(src, 'annotations/annotations_train.csv'),
                        beyond)
  with pytest.raises(sources.SourceError) as error:
    _convert(src, out)
  message = str(error.value)
  assert '\n' not in message and 'outside the image' in message
  assert row[0] in message and row[1] in message  # the image, its reader
  assert not os.path.exists(out)


def test_vindr_contradicting_rows_skip_their_image_with_the_lines(tmp_path):
  src = str(tmp_path / 'src')
  synthetic_vindr.make_synthetic_vindr(src, num_images=20, seed=1,
                                       size_scale=0.02, num_workers=1)

  def wrong_id(header, row):
    row[header.index('class_id')] = '2' if row[2] != '2' else '3'
  row = _edit_first_box(os.path.join(src, 'train.csv'), wrong_id)
  plan = sources.plan(src, sources.vindr.Options(resplit=True))
  skipped = [s for s in plan.skipped if row[0] in s['path']]
  assert len(skipped) == 1
  assert 'class_id' in skipped[0]['reason']
  assert skipped[0]['row'].startswith('train.csv line')
  planned = {f.path for files in plan.splits.values() for f in files}
  assert not any(row[0] in p for p in planned)


@pytest.mark.slow  # three tool processes: convert, train one epoch, evaluate
def test_vindr_trains_and_evaluates_with_the_pointing_game_per_label(
    tmp_path):
  from test_end_to_end import run_tool, run_tools  # pylint: disable=g-import-not-at-top
  src, data = str(tmp_path / 'src'), str(tmp_path / 'data')
  model_dir = str(tmp_path / 'run')
  synthetic_vindr.make_synthetic_vindr(src, num_images=40, seed=2,
                                       size_scale=0.025, num_workers=1,
                                       release='physionet')
  # Test images whose effusion lost its box but keep another label's: a
  # positive without a box of its own, whatever boxes the image has.
  boxes_file = os.path.join(src, 'annotations/annotations_test.csv')
  rows = _rows(boxes_file)
  labels_of = collections.defaultdict(set)
  for row in rows:
    labels_of[row['image_id']].add(row['class_name'])
  unboxed = {i for i, found in labels_of.items()
             if 'Pleural effusion' in found and len(found) > 1}
  assert unboxed
  with open(boxes_file, 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, list(rows[0]))
    writer.writeheader()
    writer.writerows(r for r in rows if not (
        r['image_id'] in unboxed and r['class_name'] == 'Pleural effusion'))
  converted = run_tool('make_tfrecords', f'--src_dir={src}',
                       f'--out_dir={data}', '--image_size=32',
                       '--num_workers=1')
  assert converted.returncode == 0, converted.stderr[-2000:]
  names = ('Pleural effusion', 'Cardiomegaly')
  trained = run_tool(
      'train', f'--data_dir={data}', f'--model_dir={model_dir}',
      '--image_size=32', '--batch_size=8', '--epochs=1', '--weights=none',
      '--backbone=mini_vgg', '--dense_units=8', '--augmentation=none',
      '--bootstrap_resamples=100', '--verbose=0', '--policy=float32',
      '--reader_policy=majority', f'--labels={",".join(names)}')
  assert trained.returncode == 0, trained.stderr[-3000:]
  with open(os.path.join(model_dir, 'config.json')) as f:
    assert json.load(f)['reader_policy'] == 'majority'
  dicoms = sorted(os.path.join(root, n) for root, _, found in os.walk(src)
                  for n in found if n.endswith('.dicom'))[:2]
  # Both read the finished run: at once.
  done = run_tools({
      'evaluate': ('evaluate', f'--model_dir={model_dir}',
                   f'--data_dir={data}', '--split=test',
                   '--bootstrap_resamples=100', '--localization'),
      'predict': ('predict', f'--model_dir={model_dir}', *dicoms)})
  evaluated, predicted = done['evaluate'], done['predict']
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  found = [p for p, _, n in os.walk(model_dir) for f in n
           if f == 'results.json' and os.path.basename(p) != 'run']
  with open(os.path.join(found[0], 'results.json')) as f:
    localization = json.load(f)['localization']
  # The test split is the consensus: positives and their own boxes,
  # recounted from the label files.
  images, _, _ = _reference(src, 'physionet')
  for name in names:
    positive = [i for i, (split, reads, _) in images.items()
                if split == 'test' and name in reads['']]
    boxed = [i for i in positive
             if any(label == name for *_, label, _ in images[i][2])]
    entry = localization['labels'][name]
    assert entry['n'] == len(boxed), name
    assert entry['no_box_positives'] == len(positive) - len(boxed), name
    assert 0 <= entry['hits'] <= entry['n']
  assert localization['labels']['Pleural effusion']['n'] > 0
  assert (localization['labels']['Pleural effusion']['no_box_positives'] >=
          len(unboxed))
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  header, *lines = predicted.stdout.strip().splitlines()
  assert header.split('\t') == ['path'] + [
      column for n in names for column in (n, f'{n}_decision')]
  assert [line.split('\t')[0] for line in lines] == dicoms
  assert all(0 <= float(p) <= 1 for line in lines
             for p in line.split('\t')[1::2])


@pytest.mark.parametrize('reader_policy', ('any', 'majority', 'all'))
def test_vindr_reader_policies_give_the_recounted_targets(converted,
                                                          reader_policy):
  """Each policy's targets, read back, against the label files' readers
  counted here: any (one of them), majority (more than half), all."""
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  release, src, out, _, _ = converted
  images, label_names, _ = _reference(src, release)
  by_hash = {_hash(i): i for i in images}
  rule = {'any': lambda k, n: k >= 1, 'majority': lambda k, n: 2 * k > n,
          'all': lambda k, n: k == n}[reader_policy]
  builder = pipeline.DatasetBuilder(out, reader_policy=reader_policy)
  for split in builder.info.splits:
    ds = builder.as_dataset(split, 64, with_metadata=True,
                            label_policy='u_zeros')
    for _, targets, metadata in ds.as_numpy_iterator():
      for row, key in zip(targets, metadata['patient_id']):
        _, reads, _ = images[by_hash[key.decode()]]
        want = [float(rule(sum(l in marks for marks in reads.values()),
                           len(reads))) for l in label_names]
        np.testing.assert_array_equal(row, want)
  # The counts the trainer weighs with, under the same policy.
  counts = builder.target_counts('train', 'u_zeros')
  assert counts['Pleural effusion']['positive'] == sum(
      rule(sum('Pleural effusion' in m for m in images[by_hash[k]][1]
               .values()), len(images[by_hash[k]][1]))
      for k in _train_keys(builder))


def _train_keys(builder):
  keys = []
  for _, _, metadata in builder.as_dataset(
      'train', 64, with_metadata=True).as_numpy_iterator():
    keys += [k.decode() for k in metadata['patient_id']]
  return keys


# The real rows (tests/data/README.md): per image its readers' marks, by
# hand from the file, {label: readers who marked it}, and its boxes.
_REAL_ROWS = {
    '50a418190bc3fb1ef1633bf9678929b3': ({'No finding': 3}, 0),
    '9a5094b2563a1ef3ff50dc5c7ff71345': (
        {'Cardiomegaly': 3, 'Aortic enlargement': 1, 'Pleural effusion': 1,
         'Pleural thickening': 1}, 6),
    'be1bb194dfb986bf7554b491852b8901': (
        {'Cardiomegaly': 2, 'ILD': 1, 'Infiltration': 1, 'Lung Opacity': 1,
         'Other lesion': 1}, 9),
    '7c1add6833d5f0102b0d3619a1682a64': (
        {'Pleural effusion': 3, 'Lung Opacity': 2, 'Consolidation': 1}, 6),
}


def test_vindr_real_competition_rows_give_the_hand_table(tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copy(os.path.join(os.path.dirname(__file__), 'data',
                           'vindr_competition_rows.csv'),
              tmp_path / 'train.csv')
  assert sources.detect(str(tmp_path)) == 'vindr'
  rows, _, _, read, names = sources.vindr.scan(str(tmp_path), None,
                                               'official')
  assert read == ['train.csv'] and names == sources.vindr.COMPETITION_LABELS
  assert {r.patient_id for r in rows} == set(_REAL_ROWS)
  for row in rows:
    marks, num_boxes = _REAL_ROWS[row.patient_id]
    assert row.reason == 'missing image'  # no DICOMs here: nothing else
    assert row.num_readers == 3
    assert dict((n, k) for n, k in zip(names, row.marked_by) if k) == marks
    assert len(row.boxes) == len(row.box_labels) == num_boxes
    assert {names[i] for i in row.box_labels} == set(marks) - {'No finding'}
    assert all(w > 0 and h > 0 for _, _, w, h in row.boxes)
    assert row.where.startswith('train.csv line')
  assert sum(len(r.where.split(',')) for r in rows) == 24  # every row


def test_vindr_reader_column_is_read_in_either_spelling(tmp_path):
  """The PhysioNet release's documentation spells the reader column rad_ID
  in image_labels and rad_id in annotations; a tree with the two swapped
  plans to the same readers, marks and boxes."""
  from labelled_trees import _plan  # pylint: disable=g-import-not-at-top
  src = str(tmp_path / 'src')
  synthetic_vindr.make_synthetic_vindr(src, num_images=20, seed=3,
                                       size_scale=0.01, num_workers=1,
                                       release='physionet')

  def planned():
    plan = _plan(src, 'vindr')
    return {f.path: (split, f.labels, f.marked_by, f.num_readers, f.boxes,
                     f.box_readers)
            for split, files in plan.splits.items() for f in files}

  before = planned()
  assert any(entry[3] > 1 for entry in before.values())  # readers were read
  for name, old, new in (('image_labels_train.csv', 'rad_ID', 'rad_id'),
                         ('annotations_train.csv', 'rad_id', 'rad_ID')):
    path = os.path.join(src, 'annotations', name)
    with open(path, encoding='utf-8') as f:
      header, rest = f.read().split('\n', 1)
    assert old in header.split(','), header
    with open(path, 'w', encoding='utf-8') as f:
      f.write(header.replace(old, new) + '\n' + rest)
  assert planned() == before
