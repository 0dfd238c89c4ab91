"""Synthetic NLM tuberculosis sets (Jaeger et al. 2014), in the published
layout: Shenzhen and Montgomery County.

  ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png        Shenzhen
  ChinaSet_AllFiles/ClinicalReadings/CHNCXR_0001_0.txt
  MontgomerySet/CXR_png/MCUCXR_0001_0.png            Montgomery
  MontgomerySet/ClinicalReadings/MCUCXR_0001_0.txt

The file name's last digit is the label (1: tuberculosis), one patient per
image as published; no official split. A reading gives sex, age and the
finding (Shenzhen: `male 35yrs` then the reading; Montgomery: `Patient's
Sex: M`, `Patient's Age: 035Y`, then the reading). Shenzhen numbers its
normal images first; Montgomery mixes them. Montgomery's lung masks
(ManualMask/) are not written.

Tuberculosis shows in the pixels: a bright infiltrate in an upper lung
zone (`draw.add_mark` 'opacity').
"""

from xray_tfdata.synthetic import tree

LAYOUT = 'nlm_tb'
_STREAM = 7  # the random stream of this layout (tree.write_planned)
DEFAULT_SIZE_SCALE = 0.05  # of about 3,000 (Shenzhen), 4,020 x 4,892 px
# set -> (folder, file prefix, share of the images, tuberculosis share,
# real size (width, height))
SETS = {
    'shenzhen': ('ChinaSet_AllFiles', 'CHNCXR', 0.8, 336 / 662, (3000, 2900)),
    'montgomery': ('MontgomerySet', 'MCUCXR', 0.2, 58 / 138, (4020, 4892)),
}
VISIBLE_LABELS = ('Tuberculosis',)


def make_synthetic_nlm_tb(out_dir, num_images=tree.DEFAULT_NUM_IMAGES,
                          seed=0, size_scale=None, num_workers=None,
                          progress=False, source_style=False):
  """Writes the Shenzhen and Montgomery sets into `out_dir`; num_images
  PNGs over both sets.

  Args and raises: as tree.write_planned.

  Returns:
    tree.write_planned's summary plus the recount: sets {set:
    {'tuberculosis': n, 'normal': n}}, readings (text files written).
  """
  return tree.write_planned(
      out_dir, LAYOUT, _STREAM, _plan, num_images, seed, size_scale,
      DEFAULT_SIZE_SCALE, num_workers, progress, _recount, source_style)


def _plan(rng, num_images, size_scale):
  images, files = [], {}
  num_shenzhen = max(1, round(SETS['shenzhen'][2] * num_images))
  for name, count in (('shenzhen', num_shenzhen),
                      ('montgomery', num_images - num_shenzhen)):
    folder, prefix, _, tuberculosis, (width, height) = SETS[name]
    labels = [int(rng.random() < tuberculosis) for _ in range(count)]
    if name == 'shenzhen':
      labels.sort()  # Shenzhen numbers its normal images first
    for number, label in enumerate(labels, 1):
      stem = f'{prefix}_{number:04d}_{label}'
      sex = 'M' if rng.random() < 0.6 else 'F'
      age = int(rng.integers(8, 80))
      scale = size_scale * rng.uniform(0.9, 1.1)
      size = (tree.scaled(width, scale), tree.scaled(height, scale))
      if name == 'montgomery' and rng.random() < 0.5:
        size = size[::-1]  # Montgomery has both orientations
      marks, reading = [], 'normal'
      if label:
        side = 0.3 if rng.random() < 0.5 else 0.7
        marks.append(('opacity', (float(rng.uniform(0.26, 0.36)),
                                  float(side + rng.uniform(-0.04, 0.04)),
                                  0.07, 0.06)))
        # The image's left is the patient's right.
        reading = f'PTB in the {"right" if side < 0.5 else "left"} upper field'
      if name == 'shenzhen':
        text = f'{"male" if sex == "M" else "female"} {age}yrs\n{reading}\n'
      else:
        text = (f"Patient's Sex: {sex}\nPatient's Age: {age:03d}Y\n\n"
                f'{reading}\n')
      files[f'{folder}/ClinicalReadings/{stem}.txt'] = text.encode()
      images.append({
          'path': f'{folder}/CXR_png/{stem}.png', 'width': size[0],
          'height': size[1], 'lateral': False, 'effusion': 0.0,
          'cardiomegaly': 0.0, 'marks': marks, 'set': name,
          'tuberculosis': label, 'patient': stem, 'study': stem,
          'split': 'all'})
  return images, files


def _recount(images):
  sets = {name: {'tuberculosis': 0, 'normal': 0} for name in SETS}
  for image in images:
    sets[image['set']]['tuberculosis' if image['tuberculosis'] else
                       'normal'] += 1
  return {'sets': sets, 'readings': len(images)}
