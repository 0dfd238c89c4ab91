"""Benchmarks this library against the seed's ImageDataGenerator, side by side.

  tools/benchmark --mode=input --work_dir=runs/bench
  tools/benchmark --mode=epoch --work_dir=runs/bench --train_images=248 --val_images=62
  tools/benchmark --mode=ops --work_dir=runs/bench      # the parts, in memory
  KERAS_BACKEND=jax tools/benchmark --mode=device_epoch --work_dir=runs/bench \
      --num_images=5306                                 # no TensorFlow needed

Creates a synthetic Kermany-like JPEG tree and its TFRecords in work_dir when
missing (input and epoch modes; device_epoch makes only the JPEGs), prints a
table and writes JSON. Logic: xray_tfdata.benchmark (TensorFlow) and
xray_tfdata.benchmark_device (device_epoch: any Keras backend, no TensorFlow).
"""

import os
import sys

from xray_tfdata import runtime  # pylint: disable=g-import-not-at-top  (imports no TF)
runtime.configure_tensorflow_env()  # before TensorFlow is imported

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

_MODE = flags.DEFINE_enum('mode', 'input', ['input', 'epoch', 'ops', 'device_epoch'], 'What to measure: the input pipeline, whole epochs, the parts on tensors in memory, or whole epochs on any Keras backend (KERAS_BACKEND; no TensorFlow needed).')
_WORK_DIR = flags.DEFINE_string('work_dir', 'runs/bench', 'Holds the synthetic JPEG tree (jpeg/) and its TFRecords (tfrecords_<size>/).')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 1200, 'Synthetic images to create if work_dir has none.', lower_bound=12)
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Image size, as the seed.', lower_bound=8)
_BATCH = flags.DEFINE_integer('batch_size', 62, 'Batch size, as the seed.', lower_bound=1)
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Rounds; medians over rounds are reported.', lower_bound=1)
_BATCHES = flags.DEFINE_integer('batches', 60, 'input mode: batches timed per round for the tf.data variants.', lower_bound=1)
_BASELINE_BATCHES = flags.DEFINE_integer('baseline_batches', 15, 'input mode: batches timed per round for ImageDataGenerator.', lower_bound=1)
_TRAIN_IMAGES = flags.DEFINE_integer('train_images', None, 'epoch modes: training images per epoch (default: epoch 248, device_epoch the seed\'s 4756).', lower_bound=1)
_VAL_IMAGES = flags.DEFINE_integer('val_images', None, 'epoch modes: validation images per epoch (default: epoch 62, device_epoch the seed\'s 550).', lower_bound=1)
_POLICY = flags.DEFINE_enum('policy', 'auto', ['auto', 'float32', 'mixed_float16', 'mixed_bfloat16'], 'epoch and ops modes: dtype policy of the library model.')
_VARIANTS = flags.DEFINE_list('variants', None, 'epoch modes: variants to run (default all; epoch: baseline, fused, keras_cv, floor; device_epoch: baseline, library, library_float32, library_mixed_float16, library_mixed_bfloat16, floor).')
_OPS = flags.DEFINE_list('ops', None, 'ops mode: which parts (default all): transform, preprocess, fused+preprocess, train_step, predict_batch, predict_one.')
_CALLS = flags.DEFINE_integer('calls', 10, 'ops mode: calls timed per round (the model ops: a fifth of it).', lower_bound=1)
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
  from xray_tfdata import benchmark  # pylint: disable=g-import-not-at-top
  from xray_tfdata import pipeline  # pylint: disable=g-import-not-at-top

  from xray_tfdata import sources  # pylint: disable=g-import-not-at-top
  from xray_tfdata import synthetic  # pylint: disable=g-import-not-at-top
  from xray_tfdata import writer  # pylint: disable=g-import-not-at-top

  ops = tuple(_OPS.value or benchmark.OPS)
  if set(ops) - set(benchmark.OPS):
    raise SystemExit(f'error: unknown --ops {",".join(sorted(set(ops) - set(benchmark.OPS)))}; '
                     f'choose from {",".join(benchmark.OPS)}')
  output = _output_path()
  try:
    if _MODE.value == 'ops':
      result = benchmark.benchmark_ops(
          image_size=_IMAGE_SIZE.value, batch_size=_BATCH.value, calls=_CALLS.value,
          repeats=_REPEATS.value, ops=ops, policy=_POLICY.value)
    elif _MODE.value == 'input':
      src_dir, data_dir = benchmark.prepare_data(_WORK_DIR.value, _NUM_IMAGES.value, _IMAGE_SIZE.value)
      result = benchmark.benchmark_input(
          src_dir, data_dir, image_size=_IMAGE_SIZE.value, batch_size=_BATCH.value,
          baseline_batches=_BASELINE_BATCHES.value, batches=_BATCHES.value,
          repeats=_REPEATS.value)
    else:
      src_dir, data_dir = benchmark.prepare_data(_WORK_DIR.value, _NUM_IMAGES.value, _IMAGE_SIZE.value)
      result = benchmark.benchmark_epoch(
          src_dir, data_dir, image_size=_IMAGE_SIZE.value, batch_size=_BATCH.value,
          train_images=_TRAIN_IMAGES.value or 248, val_images=_VAL_IMAGES.value or 62,
          repeats=_REPEATS.value, policy=_POLICY.value,
          variants=tuple(_VARIANTS.value or ('baseline', 'fused', 'keras_cv', 'floor')))
  except (pipeline.DatasetError, sources.SourceError, synthetic.SyntheticError,
          writer.OutputError) as e:
    raise SystemExit(f'error: {e}')
  _report(benchmark.format_table(result), benchmark.write_json, result, output)


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
  from xray_tfdata import benchmark_device  # pylint: disable=g-import-not-at-top
  from xray_tfdata import synthetic  # pylint: disable=g-import-not-at-top

  output = _output_path()
  try:
    src_dir = benchmark_device.prepare_jpegs(_WORK_DIR.value, _NUM_IMAGES.value)
    result = benchmark_device.benchmark_device_epoch(
        src_dir, image_size=_IMAGE_SIZE.value, batch_size=_BATCH.value,
        train_images=_TRAIN_IMAGES.value or benchmark_device.REFERENCE_TRAIN_IMAGES,
        val_images=_VAL_IMAGES.value or benchmark_device.REFERENCE_VAL_IMAGES,
        repeats=_REPEATS.value,
        variants=tuple(_VARIANTS.value or benchmark_device.VARIANTS))
  except (benchmark_device.BenchmarkError, synthetic.SyntheticError) as e:
    raise SystemExit(f'error: {e}')
  _report(benchmark_device.format_table(result), benchmark_device.write_json, result, output)


def run():
  """The console script (xray-benchmark) and tools/benchmark."""
  runtime.run_tool(main, __name__)


if __name__ == '__main__':
  run()
