"""The synthetic package: `layouts.make_synthetic` for every layout, and the
tree writer the labelled layouts share (xray_tfdata/synthetic/layouts.py,
tree.py): determinism, the worker pool, the folder's claim, bad arguments,
and tools/make_synthetic."""

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from conftest import assert_one_line_error
from synthetic_checks import files
from synthetic_checks import tree_hashes
from xray_tfdata.synthetic import chexpert
from xray_tfdata.synthetic import layouts
from xray_tfdata.synthetic import mimic
from xray_tfdata.synthetic import nih
from xray_tfdata.synthetic import tree

# The labelled layouts that tree.write_planned writes (Kermany's have their
# own tests in test_synthetic_kermany.py).
LABELLED = ('nih', 'chexpert', 'mimic', 'padchest', 'vindr', 'siim',
            'nih_google', 'nlm_tb')
_IMAGES = ('.png', '.jpg', '.dcm', '.dicom')


def test_every_layout_is_registered():
  assert set(layouts.LAYOUTS) == {'kaggle', 'mendeley', 'pool', 'rsna',
                                  *LABELLED}


@pytest.mark.parametrize('layout', LABELLED)
def test_deterministic_for_a_seed(tmp_path, layout):
  """The same seed gives the same bytes; size_scale left out is the
  layout's default (tree.write_planned applies it for every layout)."""
  default = layouts.LAYOUTS[layout].default_size_scale

  def tree(name, seed, **size_scale):
    out = str(tmp_path / name)
    layouts.make_synthetic(out, layout, num_images=24, seed=seed,
                           num_workers=1, **size_scale)
    return tree_hashes(out)

  first = tree('a', 3)
  assert first == tree('b', 3, size_scale=default)
  assert first != tree('c', 4)
  assert first != tree('d', 3, size_scale=default / 2)


@pytest.mark.slow
def test_workers_draw_the_same_bytes(tmp_path):
  """The process pool (spawn; from 256 images on) gives the same files as
  drawing in-process."""
  def tree(name, workers):
    out = str(tmp_path / name)
    mimic.make_synthetic_mimic(out, num_images=260, size_scale=0.01,
                               num_workers=workers)
    return tree_hashes(out)

  assert tree('one', 1) == tree('two', 2)


def test_refuses_a_foreign_folder_and_replaces_its_own(tmp_path):
  (tmp_path / 'keep.txt').write_text('mine')
  with pytest.raises(tree.SyntheticError, match='not empty'):
    nih.make_synthetic_nih(str(tmp_path), num_images=20)
  assert os.listdir(tmp_path) == ['keep.txt']
  out = str(tmp_path / 'tree')
  mimic.make_synthetic_mimic(out, num_images=30, size_scale=0.01,
                             num_workers=1)
  # Its own tree is replaced, nothing of the old one left.
  nih.make_synthetic_nih(out, num_images=20, size_scale=0.02, num_workers=1)
  assert not os.path.exists(os.path.join(out, 'files'))
  assert os.path.exists(os.path.join(out, 'Data_Entry_2017_v2020.csv'))
  (tmp_path / 'file').write_text('x')
  with pytest.raises(tree.SyntheticError, match='is a file'):
    chexpert.make_synthetic_chexpert(str(tmp_path / 'file'), num_images=20)


@pytest.mark.parametrize('kwargs, message', [
    ({'num_images': 19}, 'at least 20'),
    ({'layout': 'zip'}, 'layout'),
    ({'size_scale': 0}, 'size_scale'),
])
def test_bad_arguments(tmp_path, kwargs, message):
  arguments = {'layout': 'nih', 'num_images': 20, **kwargs}
  with pytest.raises(tree.SyntheticError, match=message):
    layouts.make_synthetic(str(tmp_path / 'x'), **arguments)
  assert not os.path.exists(tmp_path / 'x')


@pytest.mark.parametrize('layout', LABELLED)
def test_summary_counts_the_images_written(tmp_path, layout):
  out = str(tmp_path / layout)
  summary = layouts.make_synthetic(out, layout, num_images=24, seed=1,
                                   size_scale=0.01, num_workers=1)
  images = [f for f in files(out) if f.endswith(_IMAGES)]
  assert summary['num_images'] == len(images) == 24
  assert sum(cell['images'] for cell in summary['splits'].values()) == 24


@pytest.mark.parametrize('layout, option', [
    ('chexpert', {'boxes': True}), ('nih', {'release': 'physionet'}),
    ('kaggle', {'source_style': True}),
])
def test_an_option_of_another_layout_is_refused(tmp_path, layout, option):
  with pytest.raises(tree.SyntheticError, match='not an option of the'):
    layouts.make_synthetic(str(tmp_path / 'x'), layout, num_images=20,
                           **option)
  assert not os.path.exists(tmp_path / 'x')


@pytest.mark.parametrize('layout', LABELLED)
def test_source_style_changes_the_look_not_the_labels(tmp_path, layout):
  plain, styled = str(tmp_path / 'plain'), str(tmp_path / 'styled')
  for out, style in ((plain, False), (styled, True)):
    layouts.make_synthetic(out, layout, num_images=20, seed=2,
                           size_scale=0.02, num_workers=1,
                           source_style=style)
  plain_hashes, styled_hashes = tree_hashes(plain), tree_hashes(styled)
  assert plain_hashes.keys() == styled_hashes.keys()
  for name, digest in plain_hashes.items():
    # Label files unchanged, every image restyled.
    assert (digest == styled_hashes[name]) != name.endswith(_IMAGES), name


@pytest.mark.slow
def test_a_200_image_tree_is_fast(tmp_path):
  summary = chexpert.make_synthetic_chexpert(str(tmp_path / 'c'),
                                             num_images=200, num_workers=1)
  assert summary['num_images'] == 200
  assert summary['elapsed_seconds'] < 15  # a few seconds on one core


# (layout, the tool's option flags, the library's options)
_TOOL_RUNS = [(layout, [], {}) for layout in LABELLED] + [
    ('nih', ['--boxes', '--source_style'], {'boxes': True,
                                            'source_style': True}),
    ('vindr', ['--release=physionet'], {'release': 'physionet'}),
]


@pytest.mark.slow
@pytest.mark.parametrize('layout, flags, options', _TOOL_RUNS)
def test_make_synthetic_tool(tmp_path, layout, flags, options):
  out = str(tmp_path / layout)
  tool = os.path.join(REPO_ROOT, 'tools', 'make_synthetic')
  result = subprocess.run(
      [sys.executable, tool, f'--out_dir={out}', f'--layout={layout}',
       '--num_images=40', '--seed=2', '--num_workers=1', *flags],
      capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
  assert result.returncode == 0, result.stderr
  assert f'wrote 40 images ({layout} layout' in result.stdout
  images = [f for f in files(out) if f.endswith(_IMAGES)]
  assert len(images) == 40
  # The same as the library call.
  reference = str(tmp_path / 'reference')
  layouts.make_synthetic(reference, layout, num_images=40, seed=2,
                         num_workers=1, **options)
  assert tree_hashes(out) == tree_hashes(reference)
  (tmp_path / 'foreign').mkdir()
  (tmp_path / 'foreign' / 'x.txt').write_text('x')
  result = subprocess.run(
      [sys.executable, tool, f'--out_dir={tmp_path / "foreign"}',
       f'--layout={layout}'], capture_output=True, text=True, timeout=300,
      cwd=REPO_ROOT)
  assert_one_line_error(result, 'not empty')
  assert os.listdir(tmp_path / 'foreign') == ['x.txt']


@pytest.mark.slow
def test_the_tool_refuses_an_option_of_another_layout(tmp_path):
  out = tmp_path / 'x'
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'tools', 'make_synthetic'),
       f'--out_dir={out}', '--layout=chexpert', '--boxes'],
      capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
  assert_one_line_error(result, 'boxes: not an option of the chexpert')
  assert not out.exists()
