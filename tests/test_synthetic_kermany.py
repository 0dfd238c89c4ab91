"""The synthetic Kermany-like image trees (xray_tfdata/synthetic/kermany.py)."""

import collections
import hashlib
import os
import re

import numpy as np
import pytest
from PIL import Image

from xray_tfdata import sources
from xray_tfdata.synthetic import kermany
from xray_tfdata.synthetic import tree

_NAME_RE = re.compile(r'^(person\d+_(bacteria|virus)_\d+|(NORMAL2-)?IM-\d{4}-\d{4})'
                      r'\.jpeg$')


def _files(root):
  found = []
  for folder, _, names in os.walk(root):
    found += [os.path.relpath(os.path.join(folder, n), root) for n in names]
  return sorted(found)


def _sha(path):
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize('num_images', [12, 13, 50, 377, 5855])
def test_split_counts_cover_every_cell(num_images):
  counts = kermany.split_counts(num_images)
  assert sum(counts.values()) == num_images
  assert min(counts.values()) >= 1
  normal = sum(n for (_, c), n in counts.items() if c == 'NORMAL')
  if num_images >= 100:
    assert 0.24 < normal / num_images < 0.30


def test_split_counts_at_full_size_are_kaggles():
  assert kermany.split_counts(5856) == kermany.KAGGLE_COUNTS


def test_full_size_plan_is_realistic():
  """Sizes, RGB files and patients of the 5,856-image plan (not rendered)."""
  specs = kermany._plan_images(kermany.split_counts(5856), 0, 'kaggle', 1.0)
  for class_name, (mean_w, mean_h) in kermany._MEAN_SIZE.items():
    sizes = np.array([(s['width'], s['height']) for s in specs
                      if s['class_name'] == class_name])
    np.testing.assert_allclose(sizes.mean(0), (mean_w, mean_h), rtol=0.05)
    assert sizes[:, 0].min() >= 384 and sizes[:, 1].min() >= 127
    assert sizes[:, 0].max() <= 2916 and sizes[:, 1].max() <= 2713
  rgb = [s for s in specs if s['rgb']]
  assert {(s['split'], s['class_name']) for s in rgb} == {('train', 'PNEUMONIA')}
  assert 0.03 < len(rgb) / 3875 < 0.08
  names = [os.path.basename(s['path']) for s in specs]
  assert len(set(names)) == len(names)
  assert all(_NAME_RE.match(n) for n in names)
  per_patient = collections.Counter(sources.patient_id(n) for n in names)
  assert 1.5 < len(names) / len(per_patient) < 3.5  # several per patient
  assert any(n.startswith('NORMAL2-') for n in names)
  assert any('_virus_' in n for n in names)


def test_tree_layout_names_and_duplicates(tmp_path):
  out = str(tmp_path / 'kaggle')
  summary = kermany.make_synthetic_kermany(
      out, num_images=40, size_scale=0.05, num_workers=1)
  files = _files(out)
  assert len(files) == summary['num_images'] == 40
  cells = collections.Counter(os.path.dirname(f) for f in files)
  for split in ('train', 'val', 'test'):
    for class_name in kermany.CLASS_NAMES:
      assert cells[f'{split}/{class_name}'] == summary['counts'][split][class_name] >= 1
  assert all(_NAME_RE.match(os.path.basename(f)) for f in files)
  for f in files:
    with Image.open(os.path.join(out, f)) as image:
      assert image.format == 'JPEG' and image.mode in ('L', 'RGB')
  # Two byte-identical copies, the first across train and test.
  dups = summary['duplicates']
  assert len(dups) == 2
  assert dups[0][0].startswith('train/') and dups[0][1].startswith('test/')
  for source, copy in dups:
    assert _sha(os.path.join(out, source)) == _sha(os.path.join(out, copy))
  hashes = collections.Counter(_sha(os.path.join(out, f)) for f in files)
  assert sum(n - 1 for n in hashes.values()) == 2


def test_sizes_follow_size_scale(tmp_path):
  out = str(tmp_path / 't')
  kermany.make_synthetic_kermany(out, num_images=12, size_scale=0.05,
                                   num_workers=1)
  widths = {}
  for f in _files(out):
    with Image.open(os.path.join(out, f)) as image:
      widths.setdefault(f.split('/')[1], []).append(image.size[0])
  assert 50 < np.mean(widths['NORMAL']) < 120  # about 0.05 * 1690
  assert 35 < np.mean(widths['PNEUMONIA']) < 90  # about 0.05 * 1200


def test_full_size_files_weigh_about_what_the_real_ones_do(tmp_path):
  # File size drives read and part of decode time, which the converter and
  # the ImageDataGenerator baseline spend most of their time on. Real means:
  # NORMAL about 551 KB, PNEUMONIA about 85 KB (FACTS.md). 40 images, about
  # 4 s.
  out = str(tmp_path / 'pool')
  kermany.make_synthetic_kermany(out, num_images=40, layout='pool',
                                   num_workers=1)
  kilobytes = {}
  for f in _files(out):
    kilobytes.setdefault(f.split('/')[0], []).append(
        os.path.getsize(os.path.join(out, f)) / 1024)
  assert 400 < np.mean(kilobytes['NORMAL']) < 700
  assert 60 < np.mean(kilobytes['PNEUMONIA']) < 120


@pytest.mark.parametrize('layout, folders', [
    ('mendeley', {'train/NORMAL', 'train/PNEUMONIA', 'test/NORMAL',
                  'test/PNEUMONIA'}),
    ('pool', {'NORMAL', 'PNEUMONIA'}),
])
def test_other_layouts(tmp_path, layout, folders):
  out = str(tmp_path / layout)
  kermany.make_synthetic_kermany(out, num_images=24, size_scale=0.05,
                                   layout=layout, num_workers=1)
  files = _files(out)
  assert len(files) == 24
  assert {os.path.dirname(f) for f in files} == folders


def test_deterministic_for_a_seed(tmp_path):
  def tree(seed):
    out = str(tmp_path / str(len(os.listdir(tmp_path))))
    kermany.make_synthetic_kermany(out, num_images=16, seed=seed,
                                     size_scale=0.05, num_workers=1)
    return {f: _sha(os.path.join(out, f)) for f in _files(out)}

  assert tree(3) == tree(3)
  assert tree(3) != tree(4)


def test_workers_draw_the_same_bytes(tmp_path):
  """The process pool (spawn) gives the same files as drawing in-process."""
  def tree(name, workers):
    out = str(tmp_path / name)
    kermany.make_synthetic_kermany(out, num_images=70, size_scale=0.03,
                                     num_workers=workers)
    return {f: _sha(os.path.join(out, f)) for f in _files(out)}

  assert tree('one', 1) == tree('two', 2)


@pytest.mark.parametrize('kwargs, message', [
    ({'num_images': 11}, 'at least 12'),
    ({'layout': 'zip'}, 'layout'),
    ({'size_scale': 0}, 'size_scale'),
    ({'num_images': 12, 'num_duplicates': 9}, 'too many'),
])
def test_bad_arguments(tmp_path, kwargs, message):
  arguments = {'size_scale': 0.05, 'num_workers': 1, **kwargs}
  with pytest.raises(tree.SyntheticError, match=message):
    kermany.make_synthetic_kermany(str(tmp_path / 'x'), **arguments)
  assert not os.path.exists(tmp_path / 'x')


def test_refuses_a_non_empty_folder(tmp_path):
  (tmp_path / 'keep.txt').write_text('mine')
  with pytest.raises(tree.SyntheticError, match='not empty'):
    kermany.make_synthetic_kermany(str(tmp_path), num_images=12)
  assert os.listdir(tmp_path) == ['keep.txt']
