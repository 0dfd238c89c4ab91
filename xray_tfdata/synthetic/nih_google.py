"""A synthetic NIH tree with Google's expert labels (Majkowska et al.,
Radiology 2019), in the published files' layout.

The NIH tree (`nih.plan`: Data_Entry_2017_v2020.csv, the images, the
patient lists) plus Google's adjudicated labels for a part of it:
`four_findings_expert_labels_validation_labels.csv` (images of NIH's
train_val list) and `four_findings_expert_labels_test_labels.csv` (NIH's
test list), each with NIH's 11 columns then `Fracture, Pneumothorax,
Airspace opacity, Nodule or mass` coded YES/NO; or, with set_id_file, one
file `google2019_nih-chest-xray-labels.csv` with a `Set Id` column (val or
test), as torchxrayvision ships it (that header is checked against the
real file).

Airspace opacity shows in the pixels (the drawn basal opacity, NIH's
Effusion); the other three follow NIH's labels where NIH has them
(Pneumothorax, Nodule or Mass) and are otherwise random, as the experts
re-read the films.
"""

from xray_tfdata.synthetic import nih
from xray_tfdata.synthetic import tree

LAYOUT = 'nih_google'
_STREAM = 6  # the random stream of this layout (tree.write_planned)
DEFAULT_SIZE_SCALE = nih.DEFAULT_SIZE_SCALE
LABELS = ('Fracture', 'Pneumothorax', 'Airspace opacity', 'Nodule or mass')
VISIBLE_LABELS = ('Airspace opacity',)
SPLIT_FILES = {
    'validation': 'four_findings_expert_labels_validation_labels.csv',
    'test': 'four_findings_expert_labels_test_labels.csv',
}
SET_ID_FILE = 'google2019_nih-chest-xray-labels.csv'
SET_IDS = {'validation': 'val', 'test': 'test'}
_VALIDATION = 0.3  # of the train_val images re-read
_FRACTURE = 0.04


def make_synthetic_nih_google(out_dir, num_images=tree.DEFAULT_NUM_IMAGES,
                              seed=0, size_scale=None, num_workers=None,
                              progress=False, set_id_file=False,
                              source_style=False):
  """Writes an NIH tree with Google's expert labels into `out_dir`; NIH's
  1024 px times size_scale (default DEFAULT_SIZE_SCALE).

  Args:
    out_dir, num_images, seed, size_scale, num_workers, progress,
      source_style: as tree.write_planned.
    set_id_file: one file with a Set Id column instead of two per split.

  Returns:
    tree.write_planned's summary plus the recount: expert {split: images},
    expert_yes {split: {label: images coded YES}}.

  Raises:
    tree.SyntheticError: as tree.write_planned.
  """
  plan = lambda rng, n, scale: _plan(rng, n, scale, set_id_file)
  return tree.write_planned(
      out_dir, LAYOUT, _STREAM, plan, num_images, seed, size_scale,
      DEFAULT_SIZE_SCALE, num_workers, progress, _recount, source_style)


def _plan(rng, num_images, size_scale, set_id_file):
  images, files = nih.plan(rng, num_images, size_scale)
  header = nih.NIH_HEADER.split(',') + list(LABELS)
  tables = {split: [] for split in SPLIT_FILES}
  for image in images:
    if image['split'] == 'test':
      split = 'test'
    elif rng.random() < _VALIDATION:
      split = 'validation'
    else:
      continue
    image['expert_split'] = split
    image['expert'] = {
        'Fracture': rng.random() < _FRACTURE,
        'Pneumothorax': image['codes']['Pneumothorax'] == '1.0',
        'Airspace opacity': image['effusion'] > 0,
        'Nodule or mass': '1.0' in (image['codes']['Nodule'],
                                    image['codes']['Mass']),
    }
    tables[split].append(
        [image['name'], image['findings'], image['follow_up'],
         image['patient'], image['age'], image['sex'], image['view'],
         *image['original'], image['spacing'], image['spacing']] +
        ['YES' if image['expert'][label] else 'NO' for label in LABELS])
  if set_id_file:
    rows = [header + ['Set Id']] + [
        row + [SET_IDS[split]] for split in ('test', 'validation')
        for row in tables[split]]
    files[SET_ID_FILE] = tree.csv_bytes(rows)
  else:
    for split, name in SPLIT_FILES.items():
      files[name] = tree.csv_bytes([header] + tables[split])
  return images, files


def _recount(images):
  expert = [image for image in images if 'expert' in image]
  return {
      'expert': {split: sum(image['expert_split'] == split
                            for image in expert) for split in SPLIT_FILES},
      'expert_yes': {split: {label: sum(
          image['expert'][label] for image in expert
          if image['expert_split'] == split) for label in LABELS}
                     for split in SPLIT_FILES},
  }
