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
  from xray_tfdata.synthetic import kermany as synthetic  # pylint: disable=g-import-not-at-top
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
  # The library without its exact levers (issue 37) runs only when named.
  before = epoch.benchmark_epoch(src, data, image_size=32, batch_size=4,
                                 train_images=8, val_images=4, repeats=1,
                                 variants=('fused_uncached',))
  assert list(before['median_epoch_seconds']) == ['fused_uncached']


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


def test_model_flops_are_the_layers_multiply_accumulates_times_two():
  import keras  # pylint: disable=g-import-not-at-top
  inputs = keras.Input((8, 8, 2))
  conv = keras.layers.Conv2D(4, 3, padding='same')
  depthwise = keras.layers.DepthwiseConv2D(3, padding='same')
  x = depthwise(conv(inputs))
  out = keras.layers.Dense(3)(keras.layers.Flatten()(x))
  net = keras.Model(inputs, out)
  macs = {'conv': 8 * 8 * 4 * 3 * 3 * 2, 'depthwise': 8 * 8 * 4 * 3 * 3,
          'dense': 8 * 8 * 4 * 3}
  forward = 2 * sum(macs.values())
  flops = common.model_flops(net)
  assert flops['forward'] == forward
  # All trainable: each layer's kernel gradient, and the input gradient of
  # every layer after the first.
  assert flops['train'] == 2 * forward + 2 * (macs['depthwise'] +
                                              macs['dense'])
  conv.trainable = False  # a frozen first layer needs no backward pass
  flops = common.model_flops(net)
  assert flops['train'] == (forward + 2 * (macs['depthwise'] + macs['dense'])
                            + 2 * macs['dense'])
  assert flops['trainable_share'] == pytest.approx(
      (macs['depthwise'] + macs['dense']) / sum(macs.values()))


def test_model_flops_of_vgg16_follow_its_architecture_table():
  import keras  # pylint: disable=g-import-not-at-top
  size = 32
  # Simonyan & Zisserman's configuration D: 3x3 convs, 'same' padding, the
  # resolution halved after each block.
  blocks = [(64, 64), (128, 128), (256, 256, 256), (512, 512, 512),
            (512, 512, 512)]
  macs, channels, side = 0, 3, size
  for block in blocks:
    for width in block:
      macs += side * side * width * 3 * 3 * channels
      channels = width
    side //= 2
  base = keras.applications.VGG16(include_top=False, weights=None,
                                  input_shape=(size, size, 3))
  assert common.model_flops(base)['forward'] == 2 * macs


def test_dense_peak_knows_the_lent_gpus_only():
  name, row = common.dense_peak(['gpu:NVIDIA H200'])
  assert name == 'H200' and row['bfloat16'] > row['tf32'] > row['float32']
  assert common.peak_for_policy(row, 'mixed_bfloat16') == row['bfloat16']
  assert common.peak_for_policy(row, 'float32') == row['tf32']
  assert common.dense_peak(['CPU:/physical_device:CPU:0']) == (None, None)


@pytest.mark.slow
def test_device_epoch_runs_a_backbone_with_its_keras_core_peer(bench_data):
  from xray_tfdata.benchmarks import device_epoch  # pylint: disable=g-import-not-at-top
  src, _ = bench_data
  for backbone in ('mini_vgg', 'vgg16'):
    result = device_epoch.benchmark_device_epoch(
        src, image_size=32, batch_size=4, train_images=8, val_images=4,
        repeats=1, variants=('library', 'keras_core', 'floor'),
        backbone=backbone, warmup_steps=1, idg_batches=1, log=None)
    assert result['backbone'] == backbone
    assert set(result['median_epoch_seconds']) == {'library', 'keras_core',
                                                   'floor'}
    for name, median in result['median_epoch_seconds'].items():
      flops = result['flops_per_image'][name]
      assert flops['train'] > flops['forward'] > 0
      assert result['achieved_tflops'][name] == pytest.approx(
          (8 * flops['train'] + 4 * flops['forward']) / median / 1e12)
      assert result['share_of_peak'][name] is None  # a CPU: no known peak
    # The peer is the same model: the same FLOPs.
    assert (result['flops_per_image']['keras_core'] ==
            result['flops_per_image']['library'])
    table = device_epoch.format_table(result)
    assert 'keras_core' in table and 'TFLOP/s' in table and backbone in table
  with pytest.raises(common.BenchmarkError, match='baseline is the reference'):
    device_epoch.benchmark_device_epoch(src, variants=('baseline',),
                                        backbone='densenet121')
  with pytest.raises(common.BenchmarkError, match='unknown backbone'):
    device_epoch.benchmark_device_epoch(src, variants=('library',),
                                        backbone='vgg19')


@pytest.mark.slow
def test_reader_scale_times_decode_disk_cache_and_memory(bench_data, tmp_path,
                                                         capsys, monkeypatch):
  from xray_tfdata.benchmarks import reader_scale  # pylint: disable=g-import-not-at-top
  from xray_tfdata import cache as cache_lib  # pylint: disable=g-import-not-at-top
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top
  # Earlier tests of this process may have said the same lines already.
  monkeypatch.setattr(cache_lib, '_said', set())
  _, data = bench_data
  info = pipeline.DatasetBuilder(data).info
  decoded = info.num_examples('train') * 32 * 32
  result = reader_scale.benchmark_reader_scale(
      data, decoded // 2, str(tmp_path), batch_size=4, repeats=2, log=None)
  assert set(result['median_images_per_s']) == set(reader_scale.VARIANTS)
  for rates in result['images_per_s'].values():
    assert len(rates) == 2 and all(r > 0 for r in rates)
  assert result['decoded_split_bytes'] == decoded
  assert result['ratio_vs_decode']['decode'] == pytest.approx(1)
  out = capsys.readouterr().out
  assert f"'train' of {data}: disk" in out
  assert f"'train' of {data}: memory" in out
  # cache=False is the caller's own choice: no line (issue 32's case of a
  # second pipeline saying "no cache_dir was given").
  assert f"'train' of {data}: none" not in out
  assert os.listdir(tmp_path / 'reader_cache') == []  # rounds clean up
  assert 'disk_cache' in reader_scale.format_table(result)
  with pytest.raises(common.BenchmarkError, match='fits the'):
    reader_scale.benchmark_reader_scale(data, decoded, str(tmp_path))
