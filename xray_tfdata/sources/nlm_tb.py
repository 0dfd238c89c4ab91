"""The NLM tuberculosis sets (Jaeger et al. 2014): Shenzhen and Montgomery
County.

  ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png     Shenzhen
  MontgomerySet/CXR_png/MCUCXR_0001_0.png         Montgomery
  <set>/ClinicalReadings/<stem>.txt               sex, age, the reading

src_dir holds one or both set folders. The label is the file name's last
digit (1: `Tuberculosis` positive, 0: negative), as published; a PNG under
CXR_png/ whose name is not <prefix>_NNNN_<0|1>.png is unlabelled, with that
reason. One patient per image, as published (the stem is the patient id,
stored hashed). No official split: val and test are drawn by patient
(--val_fraction, --test_fraction; --resplit is the default, and
--split=official is refused).

Sex and age come from the image's reading where it has one: Shenzhen's
first line `male 35yrs` (also `male35yrs`, `35 yrs`; an infant's
`8months` is 0), Montgomery's `Patient's Sex: M` and `Patient's Age:
035Y`; a reading that says neither leaves them unknown. A reading without an image, the masks
(ManualMask/) and other files beside CXR_png/ are listed in
`Plan.ignored`. `Plan.num_scanned` counts the images named as the sets
name them (one row each); the other files under CXR_png/ are unlabelled.
"""

import dataclasses
import os
import re

from xray_tfdata.sources import base
from xray_tfdata.sources import tables

SourceError = base.SourceError
LABELS = ('Tuberculosis',)
# set -> (folder, file name prefix)
SETS = {'shenzhen': ('ChinaSet_AllFiles', 'CHNCXR'),
        'montgomery': ('MontgomerySet', 'MCUCXR')}
IMAGES = 'CXR_png'
READINGS = 'ClinicalReadings'
_NAME = re.compile(r'^(CHNCXR|MCUCXR)_(\d+)_([01])\.png$', re.IGNORECASE)
_SHENZHEN_SEX = re.compile(r'^\s*(male|female)(?![a-z])', re.IGNORECASE)
# '35yrs', '35 yrs', '35y'; an infant's '8months' or '8 month' is 0 years.
_SHENZHEN_AGE = re.compile(r'(\d+)\s*(yrs?|years?|y|months?)\b',
                           re.IGNORECASE)
_MONTGOMERY_SEX = re.compile(r"Patient's Sex:\s*([MF])", re.IGNORECASE)
_MONTGOMERY_AGE = re.compile(r"Patient's Age:\s*(\d+)\s*Y?", re.IGNORECASE)


@dataclasses.dataclass
class Options(tables.Options):
  """`tables.Options`; no official split, so the default is a re-split."""
  SOURCE = 'nlm_tb'
  OFFICIAL = False

  @property
  def split_method(self):
    # Drawn unless --split=official is asked for (and refused by check()).
    return 'official' if self.split == 'official' else 'resplit'


def detect(src_dir):
  """Whether src_dir holds ChinaSet_AllFiles/CXR_png or
  MontgomerySet/CXR_png."""
  return any(os.path.isdir(os.path.join(src_dir, folder, IMAGES))
             for folder, _ in SETS.values())


def plan(src_dir, options, seed=0, progress=base.NO_PROGRESS):
  """A `base.Plan` of the NLM tuberculosis sets (`tables.plan`)."""
  return tables.plan(src_dir, options, scan, seed, progress)


def parse_reading(text):
  """(sex, age in years) of a clinical reading ('' and -1 where it does not
  say)."""
  sex, age = '', -1
  montgomery_sex = _MONTGOMERY_SEX.search(text)
  montgomery_age = _MONTGOMERY_AGE.search(text)
  if montgomery_sex or montgomery_age:
    if montgomery_sex:
      sex = tables.parse_sex(montgomery_sex.group(1))
    if montgomery_age:
      age = tables.parse_age(montgomery_age.group(1))
    return sex, age
  first = text.strip().splitlines()[0] if text.strip() else ''
  match = _SHENZHEN_SEX.match(first)
  if match:
    sex = tables.parse_sex(match.group(1))
  match = _SHENZHEN_AGE.search(first)
  if match:
    months = match.group(2).lower().startswith('month')
    age = 0 if months else tables.parse_age(match.group(1))
  return sex, age


def scan(src_dir, options, split_method, progress=base.NO_PROGRESS):
  """The images (one row each) and readings of the NLM sets (module
  docstring): (rows, found, ignored, folders read, LABELS), as
  `tables.plan` takes."""
  del options, split_method  # drawn either way
  folders = [folder for folder, _ in SETS.values()
             if os.path.isdir(os.path.join(src_dir, folder, IMAGES))]
  if not folders:
    raise SourceError(
        f'src_dir {src_dir} has neither ChinaSet_AllFiles/{IMAGES} nor '
        f'MontgomerySet/{IMAGES}, which the nlm_tb layout needs; give the '
        'folder that holds the Shenzhen or Montgomery set')
  found, ignored = base.walk(src_dir, [f'{f}/{IMAGES}' for f in folders],
                             progress)
  readings = {}
  for folder in folders:
    for entry in sorted(os.listdir(os.path.join(src_dir, folder))):
      if entry == IMAGES or base.is_litter(entry):
        continue
      if entry != READINGS:
        ignored.append(base.display_path(f'{folder}/{entry}'))
        continue
      for name in sorted(os.listdir(os.path.join(src_dir, folder, entry))):
        readings[f'{folder}/{os.path.splitext(name)[0]}'] = (
            f'{folder}/{entry}/{name}')
  rows, used = [], set()
  for path in sorted(found):
    folder, name = path.split('/')[0], os.path.basename(path)
    match = _NAME.match(name)
    if not match:
      continue  # unlabelled: listed there with the reason below
    stem = os.path.splitext(name)[0]
    sex, age = '', -1
    reading = readings.get(f'{folder}/{stem}')
    if reading:
      used.add(reading)
      try:
        with open(os.path.join(src_dir, reading), encoding='utf-8',
                  errors='replace') as f:
          sex, age = parse_reading(f.read())
      except OSError:
        pass  # a reading is optional: sex and age stay unknown
    rows.append(tables.Row(
        path, path, patient_id=stem, labels=(int(match.group(3)),),
        sex=sex, age_years=age, private_parts=((stem, stem),)))
  # PNGs under CXR_png/ that are not named as the sets name them get that
  # reason instead of 'no label row'.
  for path, (size, reason) in list(found.items()):
    if not reason and not _NAME.match(os.path.basename(path)):
      found[path] = (size, 'name is not <CHNCXR|MCUCXR>_NNNN_<0|1>.png: no '
                     'label')
  base.report_ids(ignored, sorted(set(readings.values()) - used),
                  f'{{}} clinical reading(s) without an image in {IMAGES}/')
  return rows, found, ignored, [f'{f}/{IMAGES}' for f in folders], LABELS
