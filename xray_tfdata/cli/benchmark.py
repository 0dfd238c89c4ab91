"""Benchmarks this library against the reference's ImageDataGenerator.

  tools/benchmark --mode=input --work_dir=runs/bench
  tools/benchmark --mode=epoch --work_dir=runs/bench --train_images=248 --val_images=62
  tools/benchmark --mode=ops --work_dir=runs/bench      # the parts, in memory
  tools/benchmark --mode=reader_scale --work_dir=runs/bench --image_size=512 \
      --num_images=400 --cache_limit=64                 # decode vs disk cache vs memory
  KERAS_BACKEND=jax tools/benchmark --mode=device_epoch --work_dir=runs/bench \
      --num_images=5306                                 # no TensorFlow needed
  KERAS_BACKEND=jax tools/benchmark --mode=device_epoch --backbone=densenet121 \
      --image_size=512 --work_dir=runs/bench            # another backbone and size

Creates a synthetic Kermany-like JPEG tree and its TFRecords in work_dir when
missing (input and epoch modes; device_epoch makes only the JPEGs), prints a
table and writes JSON. Logic: xray_tfdata.benchmarks.<mode> (TensorFlow;
device_epoch: any Keras backend, no TensorFlow).
"""

import os
import sys

from xray_tfdata import runtime  # pylint: disable=g-import-not-at-top  (imports no TF)
runtime.configure_tensorflow_env()  # before TensorFlow is imported

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from xray_tfdata import checks  # pylint: disable=g-import-not-at-top  (no TF)
from xray_tfdata import reference

_MODE = flags.DEFINE_enum('mode', 'input', ['input', 'epoch', 'ops', 'device_epoch', 'reader_scale'], 'What to measure: the input pipeline, whole epochs, the parts on tensors in memory, whole epochs on any Keras backend (KERAS_BACKEND; no TensorFlow needed), or the reader on a split larger than --cache_limit (decode, disk cache, memory).')
_WORK_DIR = flags.DEFINE_string('work_dir', 'runs/bench', 'Holds the synthetic JPEG tree (jpeg/) and its TFRecords (tfrecords_<size>/).')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 1200, 'Synthetic images to create if work_dir has none.', lower_bound=12)
_IMAGE_SIZE = flags.DEFINE_integer('image_size', reference.IMAGE_SIZE, 'Image size; the reference\'s by default.', lower_bound=8)
_BATCH = flags.DEFINE_integer('batch_size', reference.BATCH_SIZE, 'Batch size; the reference\'s by default.', lower_bound=1)
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Rounds; medians over rounds are reported.', lower_bound=1)
_BATCHES = flags.DEFINE_integer('batches', 60, 'input mode: batches timed per round for the tf.data variants.', lower_bound=1)
_BASELINE_BATCHES = flags.DEFINE_integer('baseline_batches', 15, 'input mode: batches timed per round for ImageDataGenerator.', lower_bound=1)
_TRAIN_IMAGES = flags.DEFINE_integer('train_images', None, f'epoch modes: training images per epoch (default: epoch four of the reference\'s batches of {reference.BATCH_SIZE}, device_epoch the reference\'s {reference.TRAIN_IMAGES}).', lower_bound=1)
_VAL_IMAGES = flags.DEFINE_integer('val_images', None, f'epoch modes: validation images per epoch (default: epoch one of the reference\'s batches, device_epoch the reference\'s {reference.VAL_IMAGES}).', lower_bound=1)
_POLICY = flags.DEFINE_enum('policy', 'auto', ['auto', 'float32', 'mixed_float16', 'mixed_bfloat16'], 'epoch and ops modes: dtype policy of the library model.')
_VARIANTS = flags.DEFINE_list('variants', None, 'epoch modes: variants to run (default all; epoch: baseline, keras_user, keras_user+cache, fused, keras_cv, floor, and when named fused_uncached (the library without its trunk cache, as before issue 37), fused_folded, fused_folded_uncached (with the folded first conv, measured slower); device_epoch: baseline (vgg16 only), library, keras_core, library_float32, library_mixed_float16, library_mixed_bfloat16, floor).')
_OPS = flags.DEFINE_list('ops', None, 'ops mode: which parts (default all): transform, preprocess, fused+preprocess, train_step, predict_batch, predict_one, predict_trunk, predict_head (the validation pass split where the trunk cache cuts it), first_conv, first_conv_folded (VGG16\'s first convolution, three-channel and folded for gray).')
_CALLS = flags.DEFINE_integer('calls', 10, 'ops mode: calls timed per round (the model ops: a fifth of it).', lower_bound=1)
_BACKBONE = flags.DEFINE_enum('backbone', 'vgg16', list(checks.BACKBONES), 'device_epoch mode: the model of every variant but the baseline (the reference\'s VGG16, run with vgg16 only).')
_FROZEN = flags.DEFINE_integer('frozen_blocks', None, f'device_epoch mode: backbone stages frozen (default: {reference.FROZEN_BLOCKS} for vgg16, as the reference; 0 for the others).', lower_bound=0)
_CACHE_LIMIT = flags.DEFINE_integer('cache_limit', 64, 'reader_scale mode: the reader\'s memory budget in MiB; the decoded training split must be larger.', lower_bound=1)
_OUTPUT = flags.DEFINE_string('output', None, 'JSON output path (default work_dir/benchmark_<mode>.json).')


def main(argv):
  # A full disk, Ctrl-C and SIGTERM end in one line too, as in every tool.
  with runtime.tool_errors():
    return _benchmark(argv)


def _benchmark(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if _MODE.value == 'device_epoch':
    return device_epoch()
  # pylint: disable=g-import-not-at-top
  from xray_tfdata import pipeline
  from xray_tfdata.benchmarks import common
  from xray_tfdata.benchmarks import epoch
  from xray_tfdata.benchmarks import input as input_lib
  from xray_tfdata.benchmarks import library
  from xray_tfdata.benchmarks import ops as ops_lib
  from xray_tfdata.benchmarks import reader_scale

  from xray_tfdata import sources
  from xray_tfdata.synthetic import tree
  from xray_tfdata import writer
  # pylint: enable=g-import-not-at-top

  ops = tuple(_OPS.value or ops_lib.OPS)
  if set(ops) - set(ops_lib.OPS):
    raise SystemExit(f'error: unknown --ops {",".join(sorted(set(ops) - set(ops_lib.OPS)))}; '
                     f'choose from {",".join(ops_lib.OPS)}')
  output = _output_path()
  try:
    if _MODE.value == 'ops':
      module = ops_lib
      result = ops_lib.benchmark_ops(
          image_size=_IMAGE_SIZE.value, batch_size=_BATCH.value, calls=_CALLS.value,
          repeats=_REPEATS.value, ops=ops, policy=_POLICY.value)
    elif _MODE.value == 'reader_scale':
      data_dir = reader_scale.prepare_data(_WORK_DIR.value, _NUM_IMAGES.value, _IMAGE_SIZE.value)
      module = reader_scale
      result = reader_scale.benchmark_reader_scale(
          data_dir, _CACHE_LIMIT.value * 1024**2, _WORK_DIR.value,
          batch_size=_BATCH.value, repeats=_REPEATS.value)
    elif _MODE.value == 'input':
      src_dir, data_dir = library.prepare_data(_WORK_DIR.value, _NUM_IMAGES.value, _IMAGE_SIZE.value)
      module = input_lib
      result = input_lib.benchmark_input(
          src_dir, data_dir, image_size=_IMAGE_SIZE.value, batch_size=_BATCH.value,
          baseline_batches=_BASELINE_BATCHES.value, batches=_BATCHES.value,
          repeats=_REPEATS.value)
    else:
      src_dir, data_dir = library.prepare_data(_WORK_DIR.value, _NUM_IMAGES.value, _IMAGE_SIZE.value)
      module = epoch
      result = epoch.benchmark_epoch(
          src_dir, data_dir, image_size=_IMAGE_SIZE.value, batch_size=_BATCH.value,
          train_images=_TRAIN_IMAGES.value or epoch.TRAIN_IMAGES,
          val_images=_VAL_IMAGES.value or epoch.VAL_IMAGES,
          repeats=_REPEATS.value, policy=_POLICY.value,
          variants=tuple(_VARIANTS.value or epoch.DEFAULT_VARIANTS))
  except (common.BenchmarkError, pipeline.DatasetError, sources.SourceError,
          tree.SyntheticError, writer.OutputError) as e:
    raise SystemExit(f'error: {e}')
  _report(module.format_table(result), common.write_json, result, output)


def _output_path():
  """--output, or work_dir/benchmark_<mode>.json, with its folder made."""
  if os.path.exists(_WORK_DIR.value) and not os.path.isdir(_WORK_DIR.value):
    raise SystemExit(f'error: --work_dir {_WORK_DIR.value} is a file; pass a folder (it is created if missing)')
  # The output folder first: ops mode creates nothing else in work_dir, and a
  # bad --output should fail before the benchmark, not after it.
  output = _OUTPUT.value or os.path.join(_WORK_DIR.value, f'benchmark_{_MODE.value}.json')
  try:
    os.makedirs(os.path.dirname(output) or '.', exist_ok=True)
  except OSError as e:
    raise SystemExit(f'error: cannot create the folder of --output {output}: {e.strerror}; pass a writable path')
  return output


def _report(table, write_json, result, output):
  print(table)
  try:
    write_json(result, output)
  except OSError as e:
    raise SystemExit(f'error: cannot write --output {output}: {e.strerror}; pass a writable path')
  print(f'wrote {output}')


def device_epoch():
  """--mode=device_epoch: imports no TensorFlow (a JAX GPU host has none)."""
  # pylint: disable=g-import-not-at-top
  from xray_tfdata.synthetic import tree
  from xray_tfdata.benchmarks import baseline
  from xray_tfdata.benchmarks import common
  from xray_tfdata.benchmarks import device_epoch as device_lib
  # pylint: enable=g-import-not-at-top

  output = _output_path()
  try:
    src_dir = baseline.prepare_jpegs(_WORK_DIR.value, _NUM_IMAGES.value)
    result = device_lib.benchmark_device_epoch(
        src_dir, image_size=_IMAGE_SIZE.value, batch_size=_BATCH.value,
        train_images=_TRAIN_IMAGES.value or reference.TRAIN_IMAGES,
        val_images=_VAL_IMAGES.value or reference.VAL_IMAGES,
        repeats=_REPEATS.value,
        variants=tuple(_VARIANTS.value) if _VARIANTS.value else None,
        backbone=_BACKBONE.value, frozen_blocks=_FROZEN.value)
  except (common.BenchmarkError, tree.SyntheticError) as e:
    raise SystemExit(f'error: {e}')
  _report(device_lib.format_table(result), common.write_json, result, output)


def run():
  """The console script (xray-benchmark) and tools/benchmark."""
  runtime.run_tool(main, __name__)


if __name__ == '__main__':
  run()
