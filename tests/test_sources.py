"""Scanning source trees, patient ids, duplicates and the grouped re-split."""

import collections
import io
import os
import types
import zlib

import numpy as np
import pytest
from PIL import Image

from xray_tfdata import sources
from xray_tfdata.sources import class_folders


def _plan(src_dir, seed=0, **options):
  """class_folders.plan with its options by name."""
  return class_folders.plan(src_dir, class_folders.Options(**options), seed)


def _image(root, rel, size=(20, 16)):
  """Writes a small JPEG with content unique to its path."""
  path = os.path.join(root, rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(zlib.crc32(rel.encode()))
  pixels = rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)
  Image.fromarray(pixels).save(path, 'JPEG')
  return path


def _write(root, rel, data=b''):
  path = os.path.join(root, rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)
  return path


def _kaggle_tree(root, per_cell=2):
  for split in ('train', 'val', 'test'):
    for class_name in ('NORMAL', 'PNEUMONIA'):
      for i in range(per_cell):
        name = (f'IM-{i:04d}-0001.jpeg' if class_name == 'NORMAL'
                else f'person{i}_bacteria_{i}.jpeg')
        _image(root, f'{split}/{class_name}/{name}')


@pytest.mark.parametrize('filename, expected', [
    ('person1_bacteria_1.jpeg', 'person1'),
    ('person1000_virus_1681.jpeg', 'person1000'),
    ('IM-0115-0001.jpeg', 'IM-115'),
    ('NORMAL2-IM-0115-0002.jpeg', 'IM-115'),
    ('train/NORMAL/IM-0001-0001.jpeg', 'IM-1'),
    ('scan_7.png', 'scan_7'),
    ('personX_bacteria_1.jpeg', 'personX_bacteria_1'),
])
def test_patient_id(filename, expected):
  assert sources.patient_id(filename) == expected


def test_kaggle_zip_litter_and_nested_copy_are_ignored(tmp_path):
  root = str(tmp_path / 'chest_xray')
  _kaggle_tree(root)
  _kaggle_tree(os.path.join(root, 'chest_xray'))  # the zip's nested copy
  _write(root, '__MACOSX/train/NORMAL/._IM-0000-0001.jpeg', b'\0\5\x16\7')
  _write(root, '.DS_Store', b'litter')
  _write(root, 'train/.DS_Store', b'litter')
  _write(root, 'train/NORMAL/.DS_Store', b'litter')
  _write(root, 'train/NORMAL/._IM-0000-0001.jpeg', b'\0\5\x16\7')
  _write(root, 'test/PNEUMONIA/Thumbs.db', b'litter')
  _write(root, 'val/NORMAL/__MACOSX/._x.jpeg', b'\0')
  _write(root, 'README.txt', b'hello')
  found = class_folders.scan(root)
  assert found.layout == 'kaggle'
  assert found.class_names == ('NORMAL', 'PNEUMONIA')
  assert len(found.files) == 12  # not 24: the nested copy is not scanned
  assert all(not f.path.startswith('chest_xray/') for f in found.files)
  assert found.ignored == sorted([
      '.DS_Store', 'README.txt', '__MACOSX/', 'chest_xray/', 'train/.DS_Store',
      'train/NORMAL/.DS_Store', 'train/NORMAL/._IM-0000-0001.jpeg',
      'test/PNEUMONIA/Thumbs.db', 'val/NORMAL/__MACOSX/'])
  f = found.files[0]
  assert f.path == 'test/NORMAL/IM-0000-0001.jpeg'
  assert (f.source_split, f.class_name, f.label, f.patient_id) == (
      'test', 'NORMAL', 0, 'IM-0')


def test_layouts_are_detected(tmp_path):
  mendeley = str(tmp_path / 'mendeley')
  for split in ('train', 'test'):
    for class_name in ('NORMAL', 'PNEUMONIA'):
      _image(mendeley, f'{split}/{class_name}/a.jpeg')
  found = class_folders.scan(mendeley)
  assert found.layout == 'mendeley'
  assert {f.source_split for f in found.files} == {'train', 'test'}

  pool = str(tmp_path / 'pool')
  _image(pool, 'NORMAL/a.jpeg')
  _image(pool, 'PNEUMONIA/deeper/b.jpeg')  # recursive within class folders
  found = class_folders.scan(pool)
  assert found.layout == 'pool'
  assert [(f.path, f.source_split, f.label) for f in found.files] == [
      ('NORMAL/a.jpeg', None, 0), ('PNEUMONIA/deeper/b.jpeg', None, 1)]
  with pytest.raises(sources.SourceError, match='no train/ '):
    class_folders.scan(pool, layout='kaggle')


def test_class_ids_match_flow_from_directory(tmp_path):
  """Class ids as Keras assigns them: sorted folder names."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / 'pool')
  names = ['PNEUMONIA', 'NORMAL', 'b_other', 'Covid-19', 'a']
  for name in names:
    _image(root, f'{name}/x.png')
  generator = tf.keras.preprocessing.image.ImageDataGenerator()
  keras_ids = generator.flow_from_directory(root).class_indices
  found = class_folders.scan(root)
  assert {f.class_name: f.label for f in found.files} == keras_ids


def test_non_image_files_are_scanned_for_the_writer_to_skip(tmp_path):
  root = str(tmp_path)
  _kaggle_tree(root, per_cell=1)
  _write(root, 'train/NORMAL/notes.txt', b'not an image')
  _write(root, 'train/NORMAL/empty.jpeg')
  paths = [f.path for f in class_folders.scan(root).files]
  assert 'train/NORMAL/notes.txt' in paths and 'train/NORMAL/empty.jpeg' in paths


@pytest.mark.parametrize('make, message', [
    (lambda root: None, 'does not exist'),
    (lambda root: os.makedirs(root), 'has no folders'),
    (lambda root: _write(root, 'a.jpeg', b'x'), 'has no folders'),
    (lambda root: _image(root, 'NORMAL/a.jpeg'), r"1 class folder\(s\) \['NORMAL'\]"),
    (lambda root: [_image(root, 'NORMAL/a.jpeg'),
                   _write(root, 'PNEUMONIA/notes.txt', b'x')],
     'PNEUMONIA has no images'),
    (lambda root: [_image(root, 'NORMAL/a.jpeg'),
                   os.makedirs(os.path.join(root, 'PNEUMONIA'))],
     'PNEUMONIA has no images'),
    (lambda root: [_image(root, 'train/NORMAL/a.jpeg'),
                   _image(root, 'train/PNEUMONIA/a.jpeg')],
     'but not both train/ and test/'),
    (lambda root: [_image(root, 'train/NORMAL/a.jpeg'),
                   _image(root, 'train/PNEUMONIA/a.jpeg'),
                   _image(root, 'test/NORMAL/a.jpeg')],
     r"test/ has class folders \['NORMAL'\]"),
])
def test_bad_source_trees(tmp_path, make, message):
  root = str(tmp_path / 'src')
  make(root)
  with pytest.raises(sources.SourceError, match=message):
    class_folders.scan(root)


def test_wrapper_folder_gets_a_hint(tmp_path):
  _kaggle_tree(str(tmp_path / 'download' / 'chest_xray'))
  with pytest.raises(sources.SourceError, match='did you mean --src_dir=.*chest_xray'):
    class_folders.scan(str(tmp_path / 'download'))


def _with_duplicates(root):
  _kaggle_tree(root)
  with open(os.path.join(root, 'train/PNEUMONIA/person0_bacteria_0.jpeg'), 'rb') as f:
    data = f.read()
  _write(root, 'test/PNEUMONIA/person77_virus_9.jpeg', data)  # across splits
  _write(root, 'val/PNEUMONIA/person78_virus_9.jpeg', data)
  _write(root, 'train/NORMAL/empty1.jpeg')  # empty files are not duplicates
  _write(root, 'train/NORMAL/empty2.jpeg')


def test_duplicates_keep_evaluation_copies(tmp_path):
  root = str(tmp_path)
  _with_duplicates(root)
  found = class_folders.scan(root)
  kept, duplicates = sources.find_duplicates(root, found.files)
  assert len(kept) == len(found.files) - 2
  assert [(d['kept'], d['dropped']) for d in duplicates] == [
      ('test/PNEUMONIA/person77_virus_9.jpeg',
       'train/PNEUMONIA/person0_bacteria_0.jpeg'),
      ('test/PNEUMONIA/person77_virus_9.jpeg',
       'val/PNEUMONIA/person78_virus_9.jpeg')]
  assert len(duplicates[0]['sha256']) == 64
  assert {'train/NORMAL/empty1.jpeg', 'train/NORMAL/empty2.jpeg'} <= {
      f.path for f in kept}

  _, duplicates = sources.find_duplicates(root, found.files,
                                          prefer_evaluation_splits=False)
  assert {d['kept'] for d in duplicates} == {
      'test/PNEUMONIA/person77_virus_9.jpeg'}  # first by path: test < train
  plan = _plan(root)
  assert plan.num_scanned == sum(map(len, plan.splits.values())) + 2
  assert len(plan.splits['test']) == 5


def _patient_pool(root, seed=0):
  """A pool with patients of 1-4 images: 60 NORMAL, 120 PNEUMONIA."""
  rng = np.random.default_rng(seed)
  for class_name, total in (('NORMAL', 60), ('PNEUMONIA', 120)):
    count, patient = 0, 0
    while count < total:
      patient += 1
      for k in range(min(int(rng.integers(1, 5)), total - count)):
        count += 1
        name = (f'IM-{patient:04d}-{k + 1:04d}.jpeg' if class_name == 'NORMAL'
                else f'person{patient}_virus_{count}.jpeg')
        _image(root, f'{class_name}/{name}', size=(8, 8))


def test_resplit_is_grouped_stratified_exact_and_deterministic(tmp_path):
  root = str(tmp_path)
  _patient_pool(root)
  val = {'NORMAL': 7, 'PNEUMONIA': 15}
  test = {'NORMAL': 9, 'PNEUMONIA': 20}
  plan = _plan(root, resplit=True, val_counts=val, test_counts=test,
                      seed=1)
  counts = {s: collections.Counter(f.class_name for f in files)
            for s, files in plan.splits.items()}
  assert counts['val'] == val and counts['test'] == test
  assert counts['train'] == {'NORMAL': 60 - 16, 'PNEUMONIA': 120 - 35}
  assert plan.split_counts['actual']['val'] == val
  assert plan.split_counts['requested'] == {'val': val, 'test': test}
  split_of = collections.defaultdict(set)
  for split, files in plan.splits.items():
    for f in files:
      split_of[f.patient_id].add(split)
  assert max(len(s) for s in split_of.values()) == 1
  assert any(len([f for f in plan.splits['test'] if f.patient_id == p]) > 1
             for p in split_of)  # multi-image patients were drawn whole

  again = _plan(root, resplit=True, val_counts=val, test_counts=test,
                       seed=1)
  assert again.splits == plan.splits
  other = _plan(root, resplit=True, val_counts=val, test_counts=test,
                       seed=2)
  assert other.splits['test'] != plan.splits['test']


def test_resplit_falls_short_rather_than_split_a_patient(tmp_path):
  root = str(tmp_path)
  for i in range(4):  # NORMAL patients with 3 images each
    for k in range(3):
      _image(root, f'NORMAL/IM-{i:04d}-{k:04d}.jpeg', size=(8, 8))
  for i in range(6):
    _image(root, f'PNEUMONIA/person{i}_virus_{i}.jpeg', size=(8, 8))
  files = class_folders.scan(root).files
  splits, counts = sources.splits.draw_splits(
      files, {'test': {'NORMAL': 4, 'PNEUMONIA': 1},
              'val': {'NORMAL': 2, 'PNEUMONIA': 1}},
      class_names=('NORMAL', 'PNEUMONIA'))
  assert counts['actual']['test'] == {'NORMAL': 3, 'PNEUMONIA': 1}
  assert counts['actual']['val'] == {'NORMAL': 0, 'PNEUMONIA': 1}
  assert sum(map(len, splits.values())) == len(files)


def test_stable_order_ignores_input_order():
  keys = [f'k{i}' for i in range(50)]
  assert (sources.stable_order(keys, 3) ==
          sources.stable_order(list(reversed(keys)), 3))
  assert sources.stable_order(keys, 3) != sources.stable_order(keys, 4)
  assert sorted(sources.stable_order(keys, 3)) == sorted(keys)


@pytest.mark.parametrize('kwargs, message', [
    ({'resplit': True, 'val_counts': {'NORMAL': 1},
      'test_counts': {'NORMAL': 1, 'PNEUMONIA': 1}}, 'one count for each class'),
    ({'resplit': True, 'val_counts': {'NORMAL': 1, 'PNEUMONIA': 1, 'COVID': 1},
      'test_counts': {'NORMAL': 1, 'PNEUMONIA': 1}}, 'one count for each class'),
    ({'resplit': True, 'val_counts': {'NORMAL': 1, 'PNEUMONIA': 1}},
     'needs test counts'),
    ({'resplit': True, 'val_counts': {'NORMAL': 1, 'PNEUMONIA': 1},
      'test_counts': {'NORMAL': 5, 'PNEUMONIA': 1}}, 'leave none for training'),
    ({'val_counts': {'NORMAL': 1, 'PNEUMONIA': 1}}, 'only apply to a re-split'),
])
def test_bad_split_requests(tmp_path, kwargs, message):
  root = str(tmp_path)
  _kaggle_tree(root)
  with pytest.raises(sources.SourceError, match=message):
    _plan(root, **kwargs)


def test_pool_needs_resplit(tmp_path):
  _image(str(tmp_path), 'NORMAL/a.jpeg')
  _image(str(tmp_path), 'PNEUMONIA/a.jpeg')
  with pytest.raises(sources.SourceError, match='add --resplit'):
    _plan(str(tmp_path))


def test_parse_class_counts():
  assert sources.parse_class_counts('NORMAL:150,PNEUMONIA:400') == {
      'NORMAL': 150, 'PNEUMONIA': 400}
  assert sources.parse_class_counts(' NORMAL:0 ') == {'NORMAL': 0}
  for bad in ('NORMAL=150', 'NORMAL:-1', 'NORMAL:1.5', ':3', 'A:1,A:2', ''):
    with pytest.raises(sources.SourceError):
      sources.parse_class_counts(bad)


def test_out_dir_must_not_overlap_src_dir(tmp_path):
  src = str(tmp_path / 'src')
  os.makedirs(src)
  sources.check_out_dir(src, str(tmp_path / 'out'))
  sources.check_out_dir(src, str(tmp_path / 'src2'))  # a prefix, not inside
  for out in (src, os.path.join(src, 'tfrecords'), str(tmp_path)):
    with pytest.raises(sources.SourceError, match='inside'):
      sources.check_out_dir(src, out)


def test_unparsed_names_in_two_class_folders_are_two_patients(tmp_path):
  root = str(tmp_path)
  _image(root, 'NORMAL/001.png')
  _image(root, 'PNEUMONIA/001.png')
  ids = {f.path: f.patient_id for f in class_folders.scan(root).files}
  assert ids['NORMAL/001.png'] != ids['PNEUMONIA/001.png']


def _own_pool(root, patients=12, images=3):
  """A user's pool: p<patient>_<k>.png, even patients NORMAL, odd ones
  PNEUMONIA, in names that Kermany's patterns do not parse."""
  for i in range(patients):
    class_name = ('NORMAL', 'PNEUMONIA')[i % 2]
    for k in range(images):
      _image(root, f'{class_name}/p{i:03d}_{k}.png', size=(8, 8))


def _splits_of(plan):
  split_of = collections.defaultdict(set)
  for split, files in plan.splits.items():
    for f in files:
      split_of[f.patient_id].add(split)
  return split_of


def test_patient_id_regex_groups_a_users_own_names(tmp_path):
  root = str(tmp_path)
  _own_pool(root)
  counts = {'NORMAL': 3, 'PNEUMONIA': 3}
  for pattern in (r'^p(\d+)_', r'^p(?P<patient>\d+)_(\d)',
                  r'(?:NORMAL|PNEUMONIA)/p(\d+)_'):
    plan = _plan(root, resplit=True, val_counts=counts,
                        test_counts=counts, patient_id_regex=pattern)
    files = [f for split in plan.splits.values() for f in split]
    assert {f.patient_id for f in files} == {f'{i:03d}' for i in range(12)}
    split_of = _splits_of(plan)
    assert all(len(s) == 1 for s in split_of.values())
    assert {len(plan.splits[s]) for s in ('val', 'test')} == {6}
  # Without it, every file is its own patient: the patients' images spread.
  default = _plan(root, resplit=True, val_counts=counts,
                         test_counts=counts, seed=3)
  by_person = collections.defaultdict(set)
  for split, files in default.splits.items():
    for f in files:
      by_person[os.path.basename(f.path).split('_')[0]].add(split)
  assert max(len(s) for s in by_person.values()) > 1


def test_patient_csv_groups_by_path_or_file_name(tmp_path):
  root = str(tmp_path / 'src')
  _own_pool(root)
  rows = ['path,patient_id']
  for f in class_folders.scan(root).files:
    number = int(os.path.basename(f.path)[1:4])
    # Patients 0 and 1 (one NORMAL, one PNEUMONIA) are one person here.
    key = f.path if number % 3 else os.path.basename(f.path)
    rows.append(f'{key},P{number // 2 if number < 2 else number}')
  table = tmp_path / 'patients.csv'
  table.write_text('\n'.join(rows) + '\n')
  counts = {'NORMAL': 3, 'PNEUMONIA': 3}
  plan = _plan(root, resplit=True, val_counts=counts,
                      test_counts=counts, patient_csv=str(table))
  files = [f for split in plan.splits.values() for f in split]
  assert len(files) == 36
  assert sum(f.patient_id == 'P0' for f in files) == 6
  assert all(len(s) == 1 for s in _splits_of(plan).values())


@pytest.mark.parametrize('option, value, message', [
    ('patient_id_regex', '^p(\\d+', 'is not a regular expression'),
    ('patient_id_regex', '^p\\d+_', 'has 0 groups'),
    ('patient_id_regex', '^p(\\d)(\\d)', 'has 2 groups'),
    ('patient_id_regex', '^q(\\d+)_', r"does not match NORMAL/p000_0.png "
                                      r'and 35 other file\(s\)'),
    ('patient_csv', 'path,patient\nNORMAL/p000_0.png,1\n',
     "has no column 'patient_id'"),
    ('patient_csv', 'path,patient_id\n', 'has no rows'),
    ('patient_csv', 'path,patient_id\nNORMAL/p000_0.png,1\n',
     r'has no row for NORMAL/p000_1.png and 34 other'),
    ('patient_csv', 'path,patient_id\na.png,1\na.png,2\n', 'two patient ids'),
])
def test_bad_patient_options_name_the_problem(tmp_path, option, value,
                                              message):
  root = str(tmp_path / 'src')
  _own_pool(root)
  if option == 'patient_csv':
    (tmp_path / 'p.csv').write_text(value)
    value = str(tmp_path / 'p.csv')
  counts = {'NORMAL': 3, 'PNEUMONIA': 3}
  with pytest.raises(sources.SourceError, match=message):
    _plan(root, resplit=True, val_counts=counts, test_counts=counts,
                 **{option: value})


def test_fractions_give_rounded_counts_per_class(tmp_path):
  root = str(tmp_path)
  _patient_pool(root)  # 60 NORMAL, 120 PNEUMONIA
  plan = _plan(root, resplit=True, val_fraction=0.1,
                      test_fraction=0.15, seed=1)
  # round(0.1 * 60), round(0.1 * 120); round(0.15 * 60) = 9, 18.
  assert plan.split_counts['requested'] == {
      'val': {'NORMAL': 6, 'PNEUMONIA': 12},
      'test': {'NORMAL': 9, 'PNEUMONIA': 18}}
  assert all(len(s) == 1 for s in _splits_of(plan).values())


@pytest.mark.parametrize('kwargs, message', [
    ({'resplit': True, 'val_counts': {'NORMAL': 1, 'PNEUMONIA': 1},
      'val_fraction': 0.1, 'test_fraction': 0.1}, 'not both'),
    ({'resplit': True, 'val_fraction': 0, 'test_fraction': 0.1},
     'between 0 and 1'),
    ({'resplit': True, 'val_fraction': 0.5, 'test_fraction': 0.5},
     'leave nothing for training'),
    ({'resplit': True, 'keep_test': True, 'val_fraction': 0.1},
     'give one of them'),
    ({'keep_test': True, 'val_fraction': 0.1, 'test_fraction': 0.1},
     'keeps the test folder'),
    ({'keep_test': True}, 'add --val_counts or --val_fraction'),
    ({'val_fraction': 0.1}, 'only apply to a re-split'),
])
def test_bad_split_arguments_are_refused_before_the_scan(tmp_path, kwargs,
                                                         message):
  # src_dir does not exist: the arguments are checked first.
  with pytest.raises(sources.SourceError, match=message):
    _plan(str(tmp_path / 'missing'), **kwargs)


def test_keep_test_draws_val_from_train_and_keeps_test(tmp_path):
  root = str(tmp_path)
  for split, numbers in (('train', range(0, 20)), ('test', range(20, 26))):
    for i in numbers:
      class_name = ('NORMAL', 'PNEUMONIA')[i % 2]
      for k in range(2):
        _image(root, f'{split}/{class_name}/person{i}_virus_{k}.jpeg',
               size=(8, 8))
  # Patient 21 is also in train (a leak, as in Mendeley's release).
  _image(root, 'train/PNEUMONIA/person21_virus_9.jpeg', size=(8, 8))
  plan = _plan(root, keep_test=True,
                      val_counts={'NORMAL': 4, 'PNEUMONIA': 4}, seed=2)
  assert plan.layout == 'mendeley'
  scanned_test = sorted(f.path for f in class_folders.scan(root).files
                        if f.source_split == 'test')
  assert [f.path for f in plan.splits['test']] == scanned_test
  assert all(f.source_split == 'train'
             for s in ('train', 'val') for f in plan.splits[s])
  assert collections.Counter(f.class_name for f in plan.splits['val']) == {
      'NORMAL': 4, 'PNEUMONIA': 4}
  assert len(plan.splits['train']) == 40 - 8
  assert plan.skipped == [{
      'path': 'train/PNEUMONIA/person21_virus_9.jpeg',
      'reason': 'its patient is also in test/, which is kept as it is; left '
                'out so that no patient spans two splits'}]
  assert all(len(s) == 1 for s in _splits_of(plan).values())
  assert plan.split_counts['requested'] == {
      'val': {'NORMAL': 4, 'PNEUMONIA': 4}}
  assert plan.split_counts['actual']['test'] == {'NORMAL': 6, 'PNEUMONIA': 6}

  fraction = _plan(root, keep_test=True, val_fraction=0.25, seed=2)
  assert fraction.split_counts['requested'] == {
      'val': {'NORMAL': 5, 'PNEUMONIA': 5}}  # 0.25 * 20 per class


def test_keep_test_needs_a_test_folder(tmp_path):
  _image(str(tmp_path), 'NORMAL/a.jpeg')
  _image(str(tmp_path), 'PNEUMONIA/b.jpeg')
  with pytest.raises(sources.SourceError, match='no test/ folder to keep'):
    _plan(str(tmp_path), keep_test=True, val_fraction=0.5)


# -- the protocol and the registry --------------------------------------------


@pytest.mark.parametrize('layout', sorted(sources.SOURCES))
def test_every_registered_source_follows_the_protocol(layout):
  import dataclasses  # pylint: disable=g-import-not-at-top
  module = sources.SOURCES[layout]
  assert dataclasses.is_dataclass(module.Options)
  for name in ('detect', 'scan', 'plan'):
    assert callable(getattr(module, name)), (layout, name)
  options = module.Options(layout=layout)
  assert callable(options.check) and options.arguments()['layout'] == layout


def test_a_flag_a_source_does_not_take_is_refused_in_one_line(tmp_path):
  root = str(tmp_path / 'src')
  _kaggle_tree(root)
  # A flag of another source, refused by each.
  cases = {'kaggle': ('split', 'resplit'), 'rsna': ('keep_test', True),
           'nih': ('val_counts', {'NORMAL': 1}),
           'csv': ('patient_id_regex', '^p(\\d+)_')}
  for layout, (flag, value) in cases.items():
    with pytest.raises(sources.SourceError) as raised:
      sources.options(root, layout=layout, **{flag: value})
    message = str(raised.value)
    assert message.startswith(f'--{flag} does not apply to the ')
    assert '\n' not in message
  # Values that mean "not given" are not refused.
  options = sources.options(root, layout='nih', val_counts=None,
                            keep_test=False, split='resplit')
  assert isinstance(options, sources.nih.Options)
  assert options.split_method == 'resplit'
  with pytest.raises(sources.SourceError, match='layout must be auto or one'):
    sources.options(root, layout='no_such_layout')


def test_a_new_source_is_one_module_and_one_line(tmp_path, monkeypatch):
  """What the README promises: a module on the protocol, registered by one
  line, is detected, planned and converted like the built-in ones."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  from xray_tfdata import writer  # pylint: disable=g-import-not-at-top

  @dataclasses.dataclass
  class Options:
    layout: str = 'auto'
    test_share: int = 4

    def check(self):
      if self.test_share < 1:
        raise sources.SourceError('test_share must be at least 1')

    def arguments(self):
      return {'layout': self.layout}

  def plan(src_dir, options, seed=0, progress=sources.NO_PROGRESS):
    del seed, progress
    options.check()
    found = class_folders.scan(src_dir, 'pool')
    files = sorted(found.files, key=lambda f: f.path)
    return sources.Plan(src_dir, 'toy', found.class_names,
                        {'train': files[options.test_share:],
                         'test': files[:options.test_share]},
                        [], found.ignored, len(files))

  toy = types.SimpleNamespace(
      Options=Options, plan=plan, scan=class_folders.scan,
      detect=lambda src_dir: os.path.isfile(os.path.join(src_dir, 'TOY')))
  monkeypatch.setitem(sources.SOURCES, 'toy', toy)  # the one line
  src = str(tmp_path / 'toy')
  for i in range(5):
    _image(src, f'NORMAL/n{i}.jpeg')
    _image(src, f'PNEUMONIA/p{i}.jpeg')
  _write(src, 'TOY')
  assert sources.detect(src) == 'toy'
  with pytest.raises(sources.SourceError, match='--resplit does not apply'):
    writer.convert(src, str(tmp_path / 'refused'), resplit=True,
                   num_workers=1, progress=False)
  info = writer.convert(src, str(tmp_path / 'out'), image_size=8,
                        num_workers=1, progress=False, test_share=3)
  assert info['layout'] == 'toy' and info['arguments']['layout'] == 'auto'
  assert info['splits']['test']['num_examples'] == 3
  assert info['splits']['train']['num_examples'] == 7
  assert info['counts']['scanned'] == info['counts']['written'] == 10


def test_progress_lines_count_time_and_time_left(monkeypatch):
  now = [0.0]  # the clock, in seconds, set by `at`
  monkeypatch.setattr(sources.base, 'time',
                      types.SimpleNamespace(monotonic=lambda: now[0]))

  def at(seconds, call, *args):
    now[0] = seconds
    return call(*args)

  stream = io.StringIO()
  progress = sources.Progress(interval=5, stream=stream)
  at(0, progress.stage, 'decoding and writing', 1000, 'images')
  at(3, progress.update, 100)  # sooner than the interval: no line
  at(10, progress.update, 250)  # 750 left at 25 per second: 30 s
  at(60, progress.update, 400)  # 600 left at 400 / 60 per second: 90 s
  at(61, progress.update, 450)  # sooner than the interval
  at(240, progress.update, 800)  # 200 left at 800 / 240 per second: 60 s
  at(250, progress.end)
  assert stream.getvalue().splitlines() == [
      'decoding and writing: 250 of 1,000 images (10 s, about 30 s left)',
      'decoding and writing: 400 of 1,000 images (60 s, about 90 s left)',
      'decoding and writing: 800 of 1,000 images (240 s, about 60 s left)',
      'decoding and writing: 800 of 1,000 images (250 s) done']
  stream.truncate(0)
  stream.seek(0)
  at(0, progress.stage, 'reading Data_Entry_2017.csv', 112_120, 'rows')
  at(100, progress.update, 10_000)  # 102,120 left at 100 per second
  at(101, progress.end)
  # An unknown total: no time left.
  at(0, progress.stage, 'scanning train/')
  at(6, progress.update, 3)
  at(7, progress.end)
  # A stage shorter than the interval says nothing, not even its end.
  at(0, progress.stage, 'checking boxes', 10, 'images')
  at(1, progress.update, 10)
  at(2, progress.end)
  assert stream.getvalue().splitlines() == [
      'reading Data_Entry_2017.csv: 10,000 of 112,120 rows (100 s, about '
      '17 min left)',
      'reading Data_Entry_2017.csv: 10,000 of 112,120 rows (101 s) done',
      'scanning train/: 3 files (6 s)', 'scanning train/: 3 files (7 s) done']
