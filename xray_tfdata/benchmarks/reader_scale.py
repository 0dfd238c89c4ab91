"""The reader on a split larger than its memory budget:
`tools/benchmark --mode=reader_scale`.

Converts (once) a synthetic dataset whose decoded training split is larger
than `cache_limit_bytes`, then times, side by side and interleaved round by
round, images/s of DatasetBuilder's training pipeline (no augmentation, no
model: the host's part):

  decode        epoch 1 with --cache_dir: read, decode, and write the disk
                cache (each round into a new cache_dir, so it decodes).
  disk_cache    epoch 2 of the same pipeline: reads the disk cache. The file
                was just written, so its pages are likely still in the OS
                page cache: this is the rate of a warm disk, an upper bound
                for a cold one.
  no_cache      an epoch with cache=False: what a split too large for memory
                costs every epoch without --cache_dir.
  memory        an epoch of the in-memory cache (cache=True; filled once
                before the rounds), the path of a split that fits.
"""

import os
import shutil
import tempfile

from xray_tfdata import demo
from xray_tfdata import pipeline
from xray_tfdata import reference
from xray_tfdata.benchmarks import baseline
from xray_tfdata.benchmarks import common
from xray_tfdata.benchmarks import library

VARIANTS = ('decode', 'disk_cache', 'no_cache', 'memory')


def prepare_data(work_dir, num_images, image_size, seed=0):
  """The synthetic pool and its TFRecords at image_size, made once; returns
  data_dir (see `library.prepare_data`)."""
  src_dir = baseline.prepare_jpegs(work_dir, num_images, seed=seed)
  data_dir = os.path.join(work_dir, f'tfrecords_{image_size}')
  demo.convert_pool(src_dir, data_dir, num_images, image_size, seed=seed)
  return data_dir


def benchmark_reader_scale(data_dir, cache_limit_bytes, work_dir,
                           batch_size=reference.BATCH_SIZE,
                           repeats=3, log=print):
  """Images/s of the training pipeline's epochs; see the module docstring.

  Args:
    data_dir: a converted dataset.
    cache_limit_bytes: the memory budget given to the reader; the decoded
      training split must be larger.
    work_dir: the rounds' cache folders go in work_dir/reader_cache (deleted
      after each round).
    batch_size: of the training pipeline.
    repeats: rounds; each times every variant once.
    log: called with the reader's cache lines and progress; None: silent.

  Returns:
    A JSON-ready dict: per-variant images/s, medians, ratios against
    `decode` and `no_cache`, the split's decoded size and the budget.

  Raises:
    common.BenchmarkError: the decoded split fits the budget.
  """
  log = log or (lambda line: None)
  builder = pipeline.DatasetBuilder(data_dir)
  size = builder.info.image_size
  examples = builder.info.num_examples('train')
  decoded = examples * size[0] * size[1] * builder.info.channels
  if decoded <= cache_limit_bytes:
    raise common.BenchmarkError(
        f'the decoded training split ({decoded / 1024**2:.1f} MiB) fits the '
        f'{cache_limit_bytes / 1024**2:.1f} MiB budget: pass a smaller '
        '--cache_limit, or more --num_images or a larger --image_size')
  steps = builder.steps_per_epoch('train', batch_size)
  cache_root = os.path.join(work_dir, 'reader_cache')
  os.makedirs(cache_root, exist_ok=True)

  def dataset(**options):
    return builder.as_dataset('train', batch_size, training=True, seed=0,
                              cache_limit_bytes=cache_limit_bytes, **options)

  def epoch_rate(ds):
    # One pass, a new iterator: an epoch as Model.fit runs it.
    iterator = iter(ds)
    rate, _ = common.time_batches(lambda: next(iterator)[0], steps,
                                   library.sync)
    return rate

  memory = dataset(cache=True)
  first_memory = epoch_rate(memory)  # fills the memory cache
  no_cache = dataset(cache=False)
  epoch_rate(no_cache)  # warm-up: tracing, thread pools
  rates = {name: [] for name in VARIANTS}
  for round_index in range(repeats):
    cache_dir = tempfile.mkdtemp(prefix='round-', dir=cache_root)
    try:
      disk = dataset(cache_dir=cache_dir)
      rates['decode'].append(epoch_rate(disk))
      rates['disk_cache'].append(epoch_rate(disk))
      del disk
    finally:
      shutil.rmtree(cache_dir, ignore_errors=True)
    rates['no_cache'].append(epoch_rate(no_cache))
    rates['memory'].append(epoch_rate(memory))
    log(f'round {round_index + 1}: ' + ', '.join(
        f'{n} {r[-1]:.0f} img/s' for n, r in rates.items()))
  medians = common.medians(rates)
  return {
      'mode': 'reader_scale', 'machine': common.machine_info(),
      'data_dir': data_dir, 'image_size': list(size),
      'batch_size': batch_size, 'train_images': steps * batch_size,
      'decoded_split_bytes': decoded, 'cache_limit_bytes': cache_limit_bytes,
      'repeats': repeats, 'images_per_s': rates,
      'median_images_per_s': medians,
      'memory_first_pass_images_per_s': first_memory,
      'ratio_vs_decode': common.ratios(medians, 'decode'),
      'ratio_vs_no_cache': common.ratios(medians, 'no_cache'),
  }


def format_table(result):
  """A plain-text table of a reader_scale result."""
  size = result['image_size']
  lines = [f'training split: {result["train_images"]} images at '
           f'{size[0]}x{size[1]}, {result["decoded_split_bytes"] / 1024**2:.1f}'
           f' MiB decoded, memory budget '
           f'{result["cache_limit_bytes"] / 1024**2:.1f} MiB',
           f'{"variant":<12}{"median img/s":>14}{"x decode":>10}'
           f'{"x no_cache":>12}  all rounds']
  for name, median in result['median_images_per_s'].items():
    lines.append(f'{name:<12}{median:>14.1f}'
                 f'{result["ratio_vs_decode"][name]:>10.2f}'
                 f'{result["ratio_vs_no_cache"][name]:>12.2f}  '
                 + common.format_rounds(result['images_per_s'][name]))
  return '\n'.join(lines)
