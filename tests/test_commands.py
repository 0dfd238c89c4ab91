"""Installed commands, shipped flagfiles, flagfiles read from another folder."""

import os
import shutil
import subprocess
import sys
import tomllib

import pytest

from xray_tfdata import runtime

from conftest import REPO_ROOT, assert_one_line_error

COMMANDS = ('xray-make-tfrecords', 'xray-train', 'xray-predict',
            'xray-benchmark', 'xray-make-synthetic', 'xray-data-service',
            'xray-evaluate')


def test_every_command_names_a_run_function():
  with open(os.path.join(REPO_ROOT, 'pyproject.toml'), 'rb') as f:
    scripts = tomllib.load(f)['project']['scripts']
  assert sorted(scripts) == sorted(COMMANDS)
  for command, target in scripts.items():
    module, function = target.split(':')
    tool = module.rsplit('.', 1)[1]
    assert command == 'xray-' + tool.replace('_', '-')
    # tools/NAME wraps the same module.
    with open(os.path.join(REPO_ROOT, 'tools', tool)) as f:
      assert f'from xray_tfdata.cli import {tool}' in f.read()
    with open(os.path.join(REPO_ROOT, *module.split('.')) + '.py') as f:
      assert f'def {function}():' in f.read()


def test_nested_flagfile_resolves_next_to_the_file_naming_it(tmp_path,
                                                             monkeypatch):
  (tmp_path / 'conf' / 'base').mkdir(parents=True)
  (tmp_path / 'conf' / 'base' / 'inner.flags').write_text(
      '# comment\n--epochs=3\n// another\n\n--batch_size=8\n')
  (tmp_path / 'conf' / 'outer.flags').write_text(
      '--flagfile=base/inner.flags\n--epochs=5\n')
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  monkeypatch.chdir(elsewhere)
  assert runtime.expand_flagfiles(
      ['--flagfile=../conf/outer.flags', '--epochs=7', 'image.png']) == [
          '--epochs=3', '--batch_size=8', '--epochs=5', '--epochs=7',
          'image.png']
  # A missing file is left for absl to report.
  assert runtime.expand_flagfiles(['--flagfile=nope.flags']) == [
      '--flagfile=nope.flags']


def test_shipped_flagfiles_are_found_from_any_folder(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  demo = runtime.expand_flagfiles(['--flagfile=configs/demo.flags'])
  # demo.flags nests kermany_vgg16.flags, then overrides some of its values.
  assert '--learning_rate=1e-4' in demo
  assert demo.index('--learning_rate=1e-4') < demo.index('--learning_rate=3e-4')
  assert os.path.isfile(os.path.join(runtime.CONFIGS_DIR, 'demo.flags'))


@pytest.mark.slow
def test_installed_commands_in_a_fresh_venv(tmp_path):
  """pip install into a new venv (dependencies from this one), then the
  console scripts run from another folder with the installed flagfiles."""
  src = tmp_path / 'src'
  src.mkdir()
  for name in ('pyproject.toml', 'README.md', 'setup.cfg'):
    shutil.copy(os.path.join(REPO_ROOT, name), src)
  shutil.copytree(os.path.join(REPO_ROOT, 'xray_tfdata'), src / 'xray_tfdata',
                  ignore=shutil.ignore_patterns('__pycache__'))
  venv = tmp_path / 'venv'
  # The installed package, not this checkout.
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)],
                 check=True)
  python = str(venv / 'bin' / 'python')
  site = subprocess.run(
      [python, '-c', 'import site; print(site.getsitepackages()[0])'],
      capture_output=True, text=True, check=True).stdout.strip()
  # This venv's packages (TensorFlow, ...) without copying them.
  with open(os.path.join(site, 'base.pth'), 'w') as f:
    f.write('\n'.join(p for p in sys.path if p.endswith('site-packages')))
  subprocess.run([python, '-m', 'pip', 'install', '-q', '--no-deps',
                  '--no-build-isolation', str(src)], check=True,
                 capture_output=True)
  configs = subprocess.run(
      [python, '-c', 'import xray_tfdata.runtime as r; print(r.CONFIGS_DIR)'],
      capture_output=True, text=True, check=True, cwd=str(tmp_path), env=env
  ).stdout.strip()
  assert configs.startswith(site)
  for command in COMMANDS:
    assert os.access(venv / 'bin' / command, os.X_OK), command
  # The demo's flagfile, nested flagfile and all, from another folder: the
  # flags parse up to the value we break on purpose.
  result = subprocess.run(
      [str(venv / 'bin' / 'xray-train'),
       f'--flagfile={os.path.join(configs, "demo.flags")}', '--batch_size=0'],
      capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=120)
  assert_one_line_error(result, 'batch_size')
