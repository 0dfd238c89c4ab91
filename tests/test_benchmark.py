"""The benchmark code runs and reports consistent figures (no timing asserts:
speed is measured by tools/benchmark, not by tests)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from conftest import assert_one_line_error

from xray_tfdata.benchmarks import common
from xray_tfdata.benchmarks import epoch
from xray_tfdata.benchmarks import input as input_lib
from xray_tfdata.benchmarks import ops as ops_lib


@pytest.fixture(scope='module')
def bench_data(tmp_path_factory):
  from xray_tfdata import synthetic  # pylint: disable=g-import-not-at-top
  from xray_tfdata import writer  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('bench')
  src, data = str(root / 'jpeg'), str(root / 'data')
  synthetic.make_synthetic_kermany(src, num_images=40, layout='pool',
                                   size_scale=0.05, num_workers=1)
  writer.convert(src, data, image_size=32, resplit=True,
                 val_counts={'NORMAL': 3, 'PNEUMONIA': 5},
                 test_counts={'NORMAL': 3, 'PNEUMONIA': 5}, num_shards=2,
                 num_workers=1, progress=False)
  return src, data


@pytest.mark.slow
def test_input_benchmark_reports_every_variant(bench_data, tmp_path):
  src, data = bench_data
  result = input_lib.benchmark_input(src, data, image_size=32, batch_size=4,
                                     baseline_batches=2, batches=3, repeats=2)
  names = {'imagedatagenerator', 'tfdata+host', 'tfdata+none',
           'tfdata+fused', 'tfdata+keras_cv', 'keras_user', 'keras_user+cache'}
  assert set(result['median_images_per_s']) == names
  for name in names:
    assert len(result['images_per_s'][name]) == 2
    assert all(rate > 0 for rate in result['images_per_s'][name])
  # Every image is counted: 2 rounds x 3 batches of 4 (an earlier version
  # counted the values it fetched back, 3 per batch, and under-reported 20x).
  for name in names - {'imagedatagenerator'}:
    assert result['images_timed'][name] == 2 * 3 * 4
  medians = result['median_images_per_s']
  assert result['ratio_vs_baseline']['imagedatagenerator'] == pytest.approx(1)
  # Ours against the Keras user's pipeline, from the same run's medians.
  for peer in ('keras_user', 'keras_user+cache'):
    assert result[f'ratio_vs_{peer}']['tfdata+fused'] == pytest.approx(
        medians['tfdata+fused'] / medians[peer])
  # The peer's pass is the pool's 40 images in batches of 4: its first pass
  # (the cache's fill) is timed over exactly that.
  assert result['first_pass_images_per_s']['keras_user+cache'] > 0
  table = input_lib.format_table(result)
  assert all(name in table for name in names)
  path = tmp_path / 'input.json'
  common.write_json(result, str(path))
  saved = json.loads(path.read_text())
  assert saved['mode'] == 'input'
  # Provenance travels with the figures: the allocator setting changes them.
  assert saved['machine']['env']['TF_CPU_ALLOCATOR_USE_BFC'] == 'true'
  assert saved['machine']['cpu_count'] >= 1 and saved['machine']['date']


@pytest.mark.slow
def test_epoch_benchmark_reports_ratios(bench_data):
  src, data = bench_data
  result = epoch.benchmark_epoch(src, data, image_size=32, batch_size=4,
                                     train_images=8, val_images=4, repeats=1)
  medians = result['median_epoch_seconds']
  assert set(medians) == {'baseline', 'keras_user', 'keras_user+cache',
                          'fused', 'keras_cv', 'floor'}
  assert result['speedup_vs_keras_user']['fused'] == pytest.approx(
      medians['keras_user'] / medians['fused'])
  assert result['speedup_vs_baseline']['fused'] == pytest.approx(
      medians['baseline'] / medians['fused'])
  assert result['overhead_vs_floor']['floor'] == pytest.approx(0)
  assert result['train_images'] == 8
  table = epoch.format_table(result)
  assert 'x baseline' in table and 'x keras_user+cache' in table
  with pytest.raises(common.BenchmarkError, match='unknown variants'):
    epoch.benchmark_epoch(src, data, variants=('imagedatagenerator',))


@pytest.mark.slow
def test_ops_benchmark_times_each_part():
  result = ops_lib.benchmark_ops(image_size=32, batch_size=4, calls=2,
                                   repeats=2)
  assert set(result['median_images_per_s']) == set(ops_lib.OPS)
  for rates in result['images_per_s'].values():
    assert len(rates) == 2 and all(rate > 0 for rate in rates)
  assert 'predict_one' in ops_lib.format_table(result)
  with pytest.raises(ValueError, match='unknown ops'):
    ops_lib.benchmark_ops(image_size=32, batch_size=4, ops=('resize',))


def _benchmark_tool(*args):
  return subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'tools', 'benchmark'), *args],
      capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_benchmark_tool_ops_mode_writes_json(tmp_path):
  # The default output goes into work_dir, which ops mode must create.
  work_dir = tmp_path / 'not' / 'yet'
  output = work_dir / 'benchmark_ops.json'
  process = _benchmark_tool(
      '--mode=ops', '--image_size=32', '--batch_size=4', '--calls=1',
      '--repeats=1', '--ops=transform,fused+preprocess',
      f'--work_dir={work_dir}')
  assert process.returncode == 0, process.stderr
  assert 'fused+preprocess' in process.stdout
  saved = json.loads(output.read_text())
  assert set(saved['median_images_per_s']) == {'transform', 'fused+preprocess'}
  assert saved['machine']['env']['TF_CPU_ALLOCATOR_USE_BFC'] == 'true'


@pytest.mark.parametrize('args, message', [
    (('--mode=ops', '--ops=resize'), 'unknown --ops resize'),
    (('--mode=input',), 'is a file'),
    (('--mode=ops', '--work_dir=.', '--output=/proc/no/such.json'),
     'cannot create the folder of --output'),
])
@pytest.mark.slow
def test_benchmark_tool_bad_input_is_one_line(tmp_path, args, message):
  not_a_folder = tmp_path / 'file'
  not_a_folder.write_text('x')
  # A work_dir in args wins over this one (later flags win).
  process = _benchmark_tool(f'--work_dir={not_a_folder}', *args)
  assert_one_line_error(process, 'error: ', message)
