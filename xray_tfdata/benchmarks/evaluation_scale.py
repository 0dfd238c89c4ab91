"""The end-of-run evaluation at NIH's size, on synthetic predictions.

  python -m xray_tfdata.benchmarks.evaluation_scale [--scale=1.0]
      [--resamples=2000] [--labels=14]

times what tools/train does after its last epoch once the predictions are
made: `evaluation.evaluate_labels` of train, val and test (operating points
chosen on val, temperature, every split's and subgroup's numbers, the
patient-level bootstrap of every label on val and test with its view / sex
/ age subgroups, the macro interval; train's point estimates only). Splits of 80,777 /
8,747 / 22,596 images (NIH's train_val list cut 90/10, and its test list
less 3,000 images) times --scale; patients drawn with a geometric number of
images (mean 3.64, NIH's 112,120 images over 30,805 patients); the 14 labels
at NIH's prevalences; probabilities float32, as a model outputs them. NumPy
only: the same script times an older checkout (PYTHONPATH) side by side.

--backbones=vgg16:224,densenet121:224 also times the training step of a
14-label model of each backbone and size (`model.build_model`, weights
None, the default frozen stages, fused augmentation, the 'auto' policy,
batch 16, one warm-up step then --steps steps on random uint8 images;
mini_vgg with every stage trained) and
prints the epoch of NIH's training split it implies: 80,777 images at that
rate. This needs Keras.
"""

import argparse
import json
import time

import numpy as np

from xray_tfdata import evaluation

# NIH ChestX-ray14's 14 labels and their share of positive images.
NIH_PREVALENCE = {
    'Infiltration': 0.177, 'Effusion': 0.119, 'Atelectasis': 0.103,
    'Nodule': 0.056, 'Mass': 0.052, 'Pneumothorax': 0.047,
    'Consolidation': 0.042, 'Pleural_Thickening': 0.030,
    'Cardiomegaly': 0.025, 'Emphysema': 0.022, 'Edema': 0.021,
    'Fibrosis': 0.015, 'Pneumonia': 0.013, 'Hernia': 0.002}
SPLIT_SIZES = {'train': 80777, 'val': 8747, 'test': 22596}
IMAGES_PER_PATIENT = 112120 / 30805


def synthetic_split(size, num_labels, seed):
  """(targets [N, L], probs [N, L] float32, patient ids, subgroups)."""
  rng = np.random.default_rng(seed)
  sizes = rng.geometric(1 / IMAGES_PER_PATIENT, size)
  ids = np.repeat(np.arange(size), sizes)[:size]
  names = list(NIH_PREVALENCE)[:num_labels]
  prevalence = np.array([NIH_PREVALENCE[n] for n in names])
  targets = (rng.random((size, num_labels)) < prevalence).astype(np.float64)
  logits = np.log(prevalence / (1 - prevalence)) + 1.2 * (
      targets - prevalence) + rng.normal(0, 1, targets.shape)
  probs = (1 / (1 + np.exp(-logits))).astype(np.float32).astype(np.float64)
  ages = rng.normal(47, 17, size)
  groups = {'view': np.where(rng.random(size) < 0.6, 'PA', 'AP'),
            'sex': np.where(rng.random(size) < 0.56, 'M', 'F'),
            'age_group': np.select(
                [ages < 20, ages < 40, ages < 60, ages < 80],
                ['0-19', '20-39', '40-59', '60-79'], '80+')}
  return targets, probs, ids.astype(str), groups, names


def train_rate(backbone, image_size, num_labels, steps, batch_size=16):
  """Images/s of a multi-label model's training step (see the docstring)."""
  import keras  # pylint: disable=g-import-not-at-top
  from xray_tfdata import model as model_lib  # pylint: disable=g-import-not-at-top
  # mini_vgg has no pretrained weights: its stages train (the demo's).
  frozen = {'frozen_blocks': 0} if backbone == 'mini_vgg' else {}
  net = model_lib.build_model(image_size, weights=None, augmentation='fused',
                              policy='auto', backbone=backbone,
                              num_labels=num_labels, **frozen)
  model_lib.compile_model(net, pos_weight=np.ones(num_labels, np.float32))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch_size, image_size, image_size, 1),
                        dtype=np.uint8)
  targets = (rng.random((batch_size, num_labels)) < 0.1).astype(np.float32)
  net.train_on_batch(images, targets)  # tracing
  begin = time.perf_counter()
  for _ in range(steps):
    net.train_on_batch(images, targets)
  del keras
  return steps * batch_size / (time.perf_counter() - begin)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--scale', type=float, default=1.0)
  parser.add_argument('--resamples', type=int, default=2000)
  parser.add_argument('--labels', type=int, default=14)
  parser.add_argument('--backbones', default='')
  parser.add_argument('--steps', type=int, default=3)
  args = parser.parse_args(argv)
  for spec in filter(None, args.backbones.split(',')):
    backbone, size = spec.split(':')
    rate = train_rate(backbone, int(size), args.labels, args.steps)
    print(json.dumps({'backbone': backbone, 'image_size': int(size),
                      'train_images_per_s': round(rate, 2),
                      'nih_epoch_s': round(SPLIT_SIZES['train'] / rate)}),
          flush=True)
  data = {split: synthetic_split(int(size * args.scale), args.labels, seed)
          for seed, (split, size) in enumerate(SPLIT_SIZES.items())}
  names = data['train'][4]
  begin = time.perf_counter()
  result = evaluation.evaluate_labels(
      {s: d[:2] for s, d in data.items()}, names,
      patient_ids={s: d[2] for s, d in data.items()},
      subgroups={s: d[3] for s, d in data.items()},
      num_resamples=args.resamples, min_subgroup=10,
      interval_splits=('val', 'test'))
  seconds = time.perf_counter() - begin
  print(json.dumps({
      'images': {s: len(d[0]) for s, d in data.items()},
      'patients': {s: len(set(d[2])) for s, d in data.items()},
      'labels': len(names), 'resamples': args.resamples,
      'evaluation_s': round(seconds, 1),
      'test_macro_auc': result['macro']['test']['auc'],
      'test_macro_auc_ci': result['macro']['test']['auc_ci'],
      'test_effusion_auc_ci': result['labels']['Effusion']['splits'][
          'test']['auc']['ci']}))


if __name__ == '__main__':
  main()
