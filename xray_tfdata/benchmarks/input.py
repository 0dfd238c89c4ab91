"""Images/s delivered to the model's first conv layer, side by side:
`tools/benchmark --mode=input`.

The reference notebook's `flow_from_directory` iterator (decode + augment +
preprocess_input on the host) and the pipeline a Keras user writes today
(`image_dataset_from_directory`, with and without `.cache()`, + the Keras
core augmentation layers + preprocess_input; see `peers`) against
DatasetBuilder + the augmentation layers (fused and keras-cv) +
preprocessing, as they run on the device.
"""

from xray_tfdata import pipeline
from xray_tfdata import reference
from xray_tfdata.benchmarks import baseline
from xray_tfdata.benchmarks import common
from xray_tfdata.benchmarks import library
from xray_tfdata.benchmarks import peers


def benchmark_input(src_dir, data_dir, image_size=reference.IMAGE_SIZE,
                    batch_size=reference.BATCH_SIZE, baseline_batches=15,
                    batches=60, repeats=3,
                    kinds=('host', 'none', 'fused', 'keras_cv'),
                    peer_variants=peers.VARIANTS):
  """Images/s of the reference's iterator against this pipeline, side by side.

  Args:
    src_dir: the pool of class folders the TFRecords were made from.
    data_dir: the converted dataset of the same images.
    baseline_batches, batches: batches timed per round for the baseline and
      for each pipeline variant (the baseline is about 50 times slower).
    repeats: rounds; each round times every variant once.
    kinds: what to time after the tf.data pipeline: 'host' nothing (the
      host's part alone: read, decode or cache, shuffle, batch, which is all
      the host does when the model runs on a GPU); 'none' the gray->BGR
      preprocessing; 'fused' and 'keras_cv' the augmentation and the
      preprocessing. On a CPU-only machine all of it shares the same cores.
    peer_variants: names from `peers.VARIANTS`: the Keras user's pipeline
      without and with `.cache()`, with its augmentation and preprocessing.

  Returns:
    dict with per-variant lists of images/s, medians, and ratios against the
    baseline (ratio_vs_baseline) and against each peer (ratio_vs_<peer>).
  """
  builder = pipeline.DatasetBuilder(data_dir)
  flow = baseline.reference_flow(src_dir, image_size, batch_size)
  flow_iter = iter(flow)
  variants = {'imagedatagenerator': lambda: next(flow_iter)[0]}
  runs = {}
  for kind in kinds:
    # Repeated: the timing loop draws more batches than one pass holds.
    ds = builder.as_dataset('train', batch_size, training=True, seed=0,
                            repeat=True)
    it = iter(ds)
    if kind == 'host':
      variants['tfdata+host'] = lambda it=it: next(it)[0]
    else:
      run = library.device_preprocess(kind)
      variants[f'tfdata+{kind}'] = lambda it=it, run=run: run(next(it)[0])
    runs[kind] = builder.steps_per_epoch('train', batch_size)
  for name in peer_variants:
    ds = peers.keras_user_dataset(src_dir, image_size, batch_size,
                                  cache=name == peers.KERAS_USER_CACHE)
    # One pass is the pool's batches; repeated, as ours.
    runs[name] = int(ds.cardinality())
    it = iter(ds.repeat())
    run = peers.keras_user_device_preprocess()
    variants[name] = lambda it=it, run=run: run(next(it)[0])
  # Warm-up: graph tracing, and one full pass so the cache holds the split
  # (its cold rate is reported separately).
  cold = {}
  for name, next_batch in variants.items():
    if name == 'imagedatagenerator':
      next_batch()
      continue
    steps = runs[name] if name in runs else runs[name.split('+', 1)[1]]
    cold[name], _ = common.time_batches(next_batch, steps, library.sync)
  rates = {name: [] for name in variants}
  images_timed = {name: 0 for name in variants}
  for _ in range(repeats):
    for name, next_batch in variants.items():
      n = baseline_batches if name == 'imagedatagenerator' else batches
      rate, images = common.time_batches(next_batch, n, library.sync)
      rates[name].append(rate)
      images_timed[name] += images
  medians = common.medians(rates)
  ratios = {f'ratio_vs_{peer}': common.ratios(medians, peer)
            for peer in peer_variants}
  return {
      'mode': 'input', 'machine': common.machine_info(), 'image_size': image_size,
      'batch_size': batch_size,
      'repeats': repeats, 'images_per_s': rates, 'median_images_per_s': medians,
      'first_pass_images_per_s': cold, 'images_timed': images_timed,
      'ratio_vs_baseline': common.ratios(medians, 'imagedatagenerator'),
      **ratios,
  }


def format_table(result):
  """A plain-text table of an input result: a ratio column per reference."""
  references = ['baseline'] + [k[len('ratio_vs_'):] for k in result
                               if k.startswith('ratio_vs_') and
                               k != 'ratio_vs_baseline']
  lines = [f'{"variant":<22}{"median img/s":>14}{"first pass":>12}'
           + ''.join(f'{"x " + r:>20}' for r in references) + '  all rounds']
  for name, median in result['median_images_per_s'].items():
    cold = result['first_pass_images_per_s'].get(name)
    lines.append(
        f'{name:<22}{median:>14.1f}'
        f'{(f"{cold:.1f}" if cold else "-"):>12}'
        + ''.join(f'{result["ratio_vs_" + r][name]:>20.2f}'
                  for r in references) + '  '
        + common.format_rounds(result['images_per_s'][name]))
  return '\n'.join(lines)
