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
LABELLED = ('nih', 'chexpert', 'mimic')


@pytest.mark.parametrize('layout', LABELLED)
def test_deterministic_for_a_seed(tmp_path, layout):
  def tree(name, seed):
    out = str(tmp_path / name)
    layouts.make_synthetic(
        out, layout, num_images=24, seed=seed,
        size_scale=layouts.LAYOUTS[layout].default_size_scale / 4,
        num_workers=1)
    return tree_hashes(out)

  first = tree('a', 3)
  assert first == tree('b', 3)
  assert first != tree('c', 4)


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


@pytest.mark.slow
def test_a_200_image_tree_is_fast(tmp_path):
  summary = chexpert.make_synthetic_chexpert(str(tmp_path / 'c'),
                                             num_images=200, num_workers=1)
  assert summary['num_images'] == 200
  assert summary['elapsed_seconds'] < 15  # a few seconds on one core


@pytest.mark.slow
@pytest.mark.parametrize('layout', LABELLED)
def test_make_synthetic_tool(tmp_path, layout):
  out = str(tmp_path / layout)
  tool = os.path.join(REPO_ROOT, 'tools', 'make_synthetic')
  result = subprocess.run(
      [sys.executable, tool, f'--out_dir={out}', f'--layout={layout}',
       '--num_images=40', '--seed=2', '--num_workers=1'],
      capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
  assert result.returncode == 0, result.stderr
  assert f'wrote 40 images ({layout} layout' in result.stdout
  images = [f for f in files(out) if f.endswith(('.png', '.jpg'))]
  assert len(images) == 40
  # The same as the library call.
  reference = str(tmp_path / 'reference')
  layouts.make_synthetic(reference, layout, num_images=40, seed=2,
                         num_workers=1)
  assert tree_hashes(out) == tree_hashes(reference)
  (tmp_path / 'foreign').mkdir()
  (tmp_path / 'foreign' / 'x.txt').write_text('x')
  result = subprocess.run(
      [sys.executable, tool, f'--out_dir={tmp_path / "foreign"}',
       f'--layout={layout}'], capture_output=True, text=True, timeout=300,
      cwd=REPO_ROOT)
  assert_one_line_error(result, 'not empty')
  assert os.listdir(tmp_path / 'foreign') == ['x.txt']
