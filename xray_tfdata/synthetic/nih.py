"""A synthetic NIH ChestX-ray14 tree, in the real file layout.

Data_Entry_2017_v2020.csv (NIH's 11 header names: the commas inside
`OriginalImage[Width,Height]` split it), findings `|`-separated in NIH's
spelling or `No Finding`, PNGs `images_001/images/00000001_000.png` over
several `images_00N` folders, train_val_list.txt and test_list.txt by
patient, View Position PA or AP. With boxes=True, also BBox_List_2017.csv
beside the label file (`Image Index, Finding Label, Bbox [x, y, w, h]` split
into four header names plus three empty ones, as the real file; NIH spells
Infiltration `Infiltrate` there), boxes in stored pixels.

Label frequencies follow Data_Entry_2017_v2020.csv except Effusion and
Cardiomegaly, raised so that every split of a small tree holds positives;
those two show in the pixels (`draw.draw_findings`), the others are random.
"""

import numpy as np

from xray_tfdata.synthetic import draw
from xray_tfdata.synthetic import tree

LAYOUT = 'nih'
_STREAM = 0  # the random stream of this layout (tree.write_planned)
DEFAULT_SIZE_SCALE = 0.125  # of NIH's 1024 px: 128 px images
NIH_LABELS = ('Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltration',
              'Mass', 'Nodule', 'Pneumonia', 'Pneumothorax', 'Consolidation',
              'Edema', 'Emphysema', 'Fibrosis', 'Pleural_Thickening',
              'Hernia')
NIH_NO_FINDING = 'No Finding'
NIH_CSV = 'Data_Entry_2017_v2020.csv'
NIH_HEADER = ('Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,'
              'Patient Gender,View Position,OriginalImage[Width,Height],'
              'OriginalImagePixelSpacing[x,y]')
NIH_LISTS = {'train_val': 'train_val_list.txt', 'test': 'test_list.txt'}

# BBox_List_2017.csv: the real header (Bbox [x,y,w,h] split by its commas,
# three empty names after), its 8 findings as it spells them.
BOX_CSV = 'BBox_List_2017.csv'
BOX_HEADER = 'Image Index,Finding Label,Bbox [x,y,w,h],,,'
BOX_FINDINGS = {'Atelectasis': 'Atelectasis', 'Cardiomegaly': 'Cardiomegaly',
                'Effusion': 'Effusion', 'Infiltration': 'Infiltrate',
                'Mass': 'Mass', 'Nodule': 'Nodule', 'Pneumonia': 'Pneumonia',
                'Pneumothorax': 'Pneumothorax'}
_BOXED = 0.4  # of the images with one of them (the real file: 880 images)

# The labels drawn into the pixels: (effusion, cardiomegaly).
VISIBLE_LABELS = ('Effusion', 'Cardiomegaly')

# Fraction of NIH images with each finding (Data_Entry_2017_v2020.csv),
# Effusion and Cardiomegaly raised from 11.9% and 2.5%.
_NIH_PREVALENCE = {
    'Atelectasis': 0.103, 'Cardiomegaly': 0.20, 'Effusion': 0.25,
    'Infiltration': 0.177, 'Mass': 0.052, 'Nodule': 0.057, 'Pneumonia': 0.013,
    'Pneumothorax': 0.047, 'Consolidation': 0.042, 'Edema': 0.021,
    'Emphysema': 0.022, 'Fibrosis': 0.015, 'Pleural_Thickening': 0.030,
    'Hernia': 0.002,
}
_NIH_NO_FINDING = 0.45  # 53.8% in the real file, less with the raised two
_NIH_TEST_PATIENTS = 0.22
_NIH_PIXEL_SPACINGS = ('0.14300000000000002', '0.168', '0.139', '0.171',
                       '0.19431099999999998')
# Codes as the other label files spell them (the summary counts 1.0).
_POSITIVE, _NEGATIVE = '1.0', '0.0'


def make_synthetic_nih(out_dir, num_images=tree.DEFAULT_NUM_IMAGES, seed=0,
                       size_scale=None, num_workers=None, progress=False,
                       boxes=False, source_style=False):
  """Writes an NIH ChestX-ray14 tree into `out_dir`; 1024 px images times
  size_scale (default DEFAULT_SIZE_SCALE).

  Args:
    out_dir, num_images, seed, size_scale, num_workers, progress,
      source_style: as tree.write_planned.
    boxes: also write BBox_List_2017.csv: boxes on some images with one of
      its 8 findings, around the drawn Effusion and Cardiomegaly.

  Returns:
    tree.write_planned's summary plus positives {visible label: images
    listing it}; with boxes, boxes {finding as the box file spells it:
    rows} and boxed_images.

  Raises:
    tree.SyntheticError: as tree.write_planned.
  """
  plan_tree = lambda rng, n, scale: plan(rng, n, scale, boxes)
  return tree.write_planned(
      out_dir, LAYOUT, _STREAM, plan_tree, num_images, seed, size_scale,
      DEFAULT_SIZE_SCALE, num_workers, progress, _recount, source_style)


def _recount(images):
  counts = {'positives': {label: sum(image['codes'][label] == _POSITIVE
                                     for image in images)
                          for label in VISIBLE_LABELS}}
  if any('boxes' in image for image in images):
    counts['boxes'] = {}
    for image in images:
      for finding, _ in image.get('boxes', ()):
        counts['boxes'][finding] = counts['boxes'].get(finding, 0) + 1
    counts['boxed_images'] = sum(bool(image.get('boxes')) for image in images)
  return counts


def plan(rng, num_images, size_scale, boxes=False):
  """NIH's images, Data_Entry_2017_v2020.csv and the two patient lists
  (and BBox_List_2017.csv with boxes): (images, {file: bytes})."""
  side = tree.scaled(1024, size_scale)  # every NIH PNG is 1024 x 1024
  images = []
  patient = 0
  while len(images) < num_images:
    patient += 1
    count = min(int(rng.geometric(0.35)), 20, num_images - len(images),
                tree.patient_budget(num_images))
    age = int(np.clip(rng.normal(47, 17), 1, 90))
    sex = 'M' if rng.random() < 0.565 else 'F'
    for follow_up in range(count):
      truth = _nih_findings(rng)
      findings = [name for name in NIH_LABELS if truth[name]]
      image = tree.image_record(
          rng, '', side, side, False, truth, VISIBLE_LABELS,
          name=f'{patient:08d}_{follow_up:03d}.png', patient=patient,
          study=(patient, follow_up), follow_up=follow_up,
          age=min(95, age + follow_up // 3), sex=sex,
          view='PA' if rng.random() < 0.6 else 'AP',
          original=(int(np.clip(rng.normal(2646, 350), 1143, 3827)),
                    int(np.clip(rng.normal(2486, 350), 966, 4715))),
          spacing=_NIH_PIXEL_SPACINGS[int(rng.integers(
              len(_NIH_PIXEL_SPACINGS)))],
          findings='|'.join(findings) or NIH_NO_FINDING,
          codes={name: _POSITIVE if truth[name] else _NEGATIVE
                 for name in NIH_LABELS})
      images.append(image)

  # Patients, not images, go to the test list, as in the real lists.
  patients = np.arange(1, patient + 1)
  num_test = max(2, round(_NIH_TEST_PATIENTS * patient))
  test = set(rng.permutation(patients)[:num_test].tolist())
  # The first images_00N folder holds half as many as the others, as the
  # real images_001 (4,999 of 112,120 in 12 folders).
  num_folders = min(12, max(2, num_images // 10))
  per_folder = -(-2 * num_images // (2 * num_folders - 1))
  for index, image in enumerate(images):
    folder = 1 + (index + per_folder // 2) // per_folder
    image['path'] = f'images_{folder:03d}/images/{image["name"]}'
    image['split'] = 'test' if image['patient'] in test else 'train_val'

  rows = [NIH_HEADER.split(',')]
  for image in images:
    rows.append([image['name'], image['findings'], image['follow_up'],
                 image['patient'], image['age'], image['sex'], image['view'],
                 *image['original'], image['spacing'], image['spacing']])
  files = {NIH_CSV: tree.csv_bytes(rows)}
  for split, name in NIH_LISTS.items():
    files[name] = ''.join(f'{image["name"]}\n' for image in images
                          if image['split'] == split).encode()
  if boxes:
    # Drawn last, from the same stream: the tree without boxes is unchanged.
    files[BOX_CSV] = _plan_boxes(rng, images)
  return images, files


def _plan_boxes(rng, images):
  """Boxes (x, y, w, h in the PNG's pixels) for a share of the images with
  one of the box file's findings; an effusion's box is at the side drawn."""
  rows = [BOX_HEADER]
  for image in images:
    findings = [name for name in BOX_FINDINGS
                if image['codes'][name] == _POSITIVE]
    if not findings or rng.random() > _BOXED:
      continue
    image['boxes'] = []
    for name in findings:
      side = image['width']
      if name == 'Effusion' and image['effusion']:
        image['effusion_sides'] = [int(rng.choice([-1, 1]))]
        box = draw.finding_box(rng, 'effusion', side, side,
                               image['effusion_sides'][0])
      elif name == 'Cardiomegaly' and image['cardiomegaly']:
        box = draw.finding_box(rng, 'cardiomegaly', side, side)
      else:
        box = draw.finding_box(rng, 'other', side, side)
      x_min, y_min, x_max, y_max = box
      spelled = BOX_FINDINGS[name]
      image['boxes'].append((spelled, box))
      rows.append(f'{image["name"]},{spelled},{x_min},{y_min},'
                  f'{round(x_max - x_min, 1)},{round(y_max - y_min, 1)}')
  return ('\n'.join(rows) + '\n').encode()


def _nih_findings(rng):
  """{finding: present} of one NIH image; `No Finding` when none."""
  if rng.random() < _NIH_NO_FINDING:
    return {name: False for name in NIH_LABELS}
  scale = 1 / (1 - _NIH_NO_FINDING)
  truth = {name: bool(rng.random() < min(0.9, p * scale))
           for name, p in _NIH_PREVALENCE.items()}
  if not any(truth.values()):  # not 'No Finding': at least one finding
    names = list(_NIH_PREVALENCE)
    weights = np.array([_NIH_PREVALENCE[n] for n in names])
    truth[names[int(rng.choice(len(names), p=weights / weights.sum()))]] = True
  return truth

