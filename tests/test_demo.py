"""demo.ensure_demo_data: the demo writes only into new or empty folders,
or those it created itself."""

import os
import subprocess
import sys

import pytest

from xray_tfdata import dataset_info
from xray_tfdata import demo
from xray_tfdata import schema

from conftest import REPO_ROOT
from conftest import assert_one_line_error


def _listing(root):
  """Every path under root with its size: what 'nothing written' compares."""
  found = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      found[os.path.relpath(path, root)] = os.path.getsize(path)
  return found


def test_creates_in_a_new_folder_once_then_reuses_it(tmp_path, capsys):
  data_dir = str(tmp_path / 'demo' / 'data')
  demo.ensure_demo_data(data_dir, num_images=60, image_size=16)
  out = capsys.readouterr().out
  creating = [l for l in out.splitlines() if l.startswith('demo:')]
  assert creating == [f'demo: creating a synthetic dataset of 60 images in '
                      f'{data_dir} (JPEGs in {data_dir}-jpeg); a rerun '
                      'reuses it']
  assert dataset_info.is_converted(data_dir)
  assert os.path.isfile(os.path.join(data_dir, demo.MARKER))
  assert os.path.isfile(os.path.join(data_dir + '-jpeg', demo.MARKER))
  before = _listing(str(tmp_path))

  demo.ensure_demo_data(data_dir, num_images=60, image_size=16)
  assert 'demo:' not in capsys.readouterr().out
  assert _listing(str(tmp_path)) == before


def test_an_interrupted_drawing_is_drawn_again(tmp_path):
  data_dir = str(tmp_path / 'data')
  _, src_dir = demo.demo_folders(data_dir)
  os.makedirs(os.path.join(src_dir, 'NORMAL'))
  with open(os.path.join(src_dir, 'NORMAL', 'half.jpeg'), 'wb') as f:
    f.write(b'\xff\xd8')  # a file the killed drawing left half-written
  with open(os.path.join(data_dir + '-jpeg', demo.MARKER), 'w') as f:
    f.write('drawing\n')
  demo.ensure_demo_data(data_dir, num_images=60, image_size=16)
  assert dataset_info.is_converted(data_dir)
  assert not os.path.exists(os.path.join(src_dir, 'NORMAL', 'half.jpeg'))


@pytest.mark.parametrize('where', ['data_dir', 'pool', 'dataset'])
def test_refuses_a_folder_it_did_not_create_and_writes_nothing(tmp_path,
                                                               where):
  data_dir = tmp_path / 'mine'
  if where == 'data_dir':
    (data_dir / 'raw').mkdir(parents=True)
    (data_dir / 'raw' / 'scan.png').write_bytes(b'a user file')
  elif where == 'pool':
    (tmp_path / 'mine-jpeg').mkdir()
    (tmp_path / 'mine-jpeg' / 'notes.txt').write_text('a user file')
  else:  # a dataset of the user's, converted from elsewhere
    data_dir.mkdir()
    (data_dir / schema.INFO_FILENAME).write_text(
        '{"format_version": 2, "src_dir": "/elsewhere", "class_names": '
        '["NORMAL", "PNEUMONIA"], "image": {"height": 16, "width": 16}, '
        '"splits": {}}')
  before = _listing(str(tmp_path))
  with pytest.raises(demo.DemoError, match='--demo_images: .*mine'):
    demo.ensure_demo_data(str(data_dir), num_images=60, image_size=16)
  assert _listing(str(tmp_path)) == before


@pytest.mark.slow  # starts the tool
def test_train_with_the_demo_flagfile_refuses_a_users_folder(tmp_path):
  users = tmp_path / 'xrays'
  users.mkdir()
  (users / 'IM-0001-0001.jpeg').write_bytes(b'a user file')
  before = _listing(str(tmp_path))
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'tools', 'train'),
       '--flagfile=configs/demo.flags', f'--data_dir={users}',
       f'--model_dir={tmp_path / "model"}'],
      capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
  assert_one_line_error(result, '--demo_images', str(users),
                        'did not create')
  assert _listing(str(tmp_path)) == before
  assert not os.path.exists(tmp_path / 'model')
