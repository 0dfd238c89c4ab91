"""A synthetic PadChest tree, in the real file layout.

PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv (or .csv.gz): the
first column is an unnamed index; the real file's 35 header names in its
order; `Labels` a Python-list string (`['pleural effusion',
'cardiomegaly']`, `['normal']`, and `['']` in some rows, as the real file's
777; a few cells empty); `Projection` PA, L, AP_horizontal, AP or COSTAL;
`MethodLabel` Physician or RNN_model; sex, birth year and study date;
children among the patients. Images are 16-bit grayscale PNGs at
`<ImageDir>/<ImageID>`, ImageDir a number: most hold 12-bit content
(BitsStored_DICOM 12, the window in WindowCenter/WindowWidth_DICOM or
`None`), some 10-bit (window centre 511.5), some use the full 16 bits
(BitsStored_DICOM 16, window `None`; the real file has no such rows: they
are there for the 16-to-8-bit rule's image-range branch).

`pleural effusion` and `cardiomegaly` show in the pixels (drawn on
laterals too); the other terms are random. Counts as in the real file
where they matter (PA about 57%, L 31%, Physician 24%).
"""

import numpy as np

from xray_tfdata.synthetic import tree

LAYOUT = 'padchest'
_STREAM = 3  # the random stream of this layout (tree.write_planned)
DEFAULT_SIZE_SCALE = 0.06  # of about 2,800 x 2,700 px: 150-180 px images
CSV_NAME = 'PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv'
# The real header, its first name empty (the unnamed index column).
HEADER = (
    ',ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,PatientBirth,'
    'PatientSex_DICOM,ViewPosition_DICOM,Projection,MethodProjection,'
    'Pediatric,Modality_DICOM,Manufacturer_DICOM,'
    'PhotometricInterpretation_DICOM,PixelRepresentation_DICOM,'
    'PixelAspectRatio_DICOM,SpatialResolution_DICOM,BitsStored_DICOM,'
    'WindowCenter_DICOM,WindowWidth_DICOM,Rows_DICOM,Columns_DICOM,'
    'XRayTubeCurrent_DICOM,Exposure_DICOM,ExposureInuAs_DICOM,ExposureTime,'
    'RelativeXRayExposure_DICOM,ReportID,Report,MethodLabel,Labels,'
    'Localizations,LabelsLocalizationsBySentence,labelCUIS,'
    'LocalizationsCUIS').split(',')
# The labels drawn into the pixels (effusion, cardiomegaly), as spelled.
VISIBLE_LABELS = ('pleural effusion', 'cardiomegaly')
NORMAL = 'normal'
# Share of studies with each finding; the visible two raised (real: 6.2%
# and 9.3% of rows), the rest near the real file's.
_PREVALENCE = {
    'pleural effusion': 0.25, 'cardiomegaly': 0.22, 'COPD signs': 0.14,
    'unchanged': 0.09, 'aortic elongation': 0.07, 'scoliosis': 0.05,
    'pneumonia': 0.05, 'interstitial pattern': 0.05, 'chronic changes': 0.05,
    'infiltrates': 0.04, 'kyphosis': 0.03, 'nodule': 0.03,
}
_FRONTAL = {'PA': 0.75, 'AP_horizontal': 0.15, 'AP': 0.07, 'COSTAL': 0.03}
_VIEW_POSITION = {'PA': 'POSTEROANTERIOR', 'L': 'LATERAL', 'AP': 'AP',
                  'AP_horizontal': 'AP', 'COSTAL': 'PA'}
_PHYSICIAN = 0.24  # of studies (the real file: 39,053 of 160,861 rows)
_EMPTY_LIST, _MISSING = 0.04, 0.02  # rows with Labels ['']; with no cell
# (share, bits stored, low and high stored value drawn from, window given)
_DEPTHS = ((0.70, 12, (0, 400), (3000, 4095)),
           (0.15, 10, (0, 100), (800, 1023)),
           (0.15, 16, (0, 3000), (50000, 65535)))
_WINDOW_MISSING = 0.1  # of the 12-bit rows: WindowCenter 'None'


def make_synthetic_padchest(out_dir, num_images=tree.DEFAULT_NUM_IMAGES,
                            seed=0, size_scale=None, num_workers=None,
                            progress=False, gzip_csv=False,
                            source_style=False):
  """Writes a PadChest tree into `out_dir`; one CSV row per image file.

  Args:
    out_dir, num_images, seed, size_scale, num_workers, progress,
      source_style: as tree.write_planned.
    gzip_csv: write the label file as .csv.gz, as some copies have it.

  Returns:
    tree.write_planned's summary plus the recount of what the CSV says:
    rows, labels {term: rows listing it}, normal, empty_list (rows with
    ['']), missing (rows with no Labels cell), projections {value: rows},
    methods {MethodLabel: rows}, bits_stored {bits: rows}, children (rows
    of patients aged ten or under at the study), positives {visible
    label: rows listing it}.

  Raises:
    tree.SyntheticError: as tree.write_planned.
  """
  plan = lambda rng, n, scale: _plan(rng, n, scale, gzip_csv)
  return tree.write_planned(
      out_dir, LAYOUT, _STREAM, plan, num_images, seed, size_scale,
      DEFAULT_SIZE_SCALE, num_workers, progress, _recount, source_style)


def _plan(rng, num_images, size_scale, gzip_csv):
  images = []
  patient = 0
  while len(images) < num_images:
    patient += 1
    patient_id = _digits(rng, 36)
    birth = int(rng.integers(1920, 2015))
    sex = 'M' if rng.random() < 0.5 else 'F'
    for _ in range(min(int(rng.geometric(0.6)), 4)):
      study_id = _digits(rng, 38)
      year = int(rng.integers(max(2009, birth), 2018))
      date = (f'{year}{int(rng.integers(1, 13)):02d}'
              f'{int(rng.integers(1, 29)):02d}')
      truth = {term: bool(rng.random() < p)
               for term, p in _PREVALENCE.items()}
      terms = [term for term, present in truth.items() if present] or [NORMAL]
      method = 'Physician' if rng.random() < _PHYSICIAN else 'RNN_model'
      projections = [str(rng.choice(list(_FRONTAL),
                                    p=list(_FRONTAL.values())))]
      if rng.random() < 0.45:
        projections.append('L')
      for number, projection in enumerate(projections):
        if len(images) == num_images:
          break
        rows = tree.scaled(int(np.clip(rng.normal(2800, 300), 1500, 4000)),
                           size_scale)
        columns = tree.scaled(int(np.clip(rng.normal(2700, 300), 1500, 4000)),
                              size_scale)
        draw_labels = rng.random()
        labels = (repr(terms) if draw_labels >= _EMPTY_LIST + _MISSING else
                  "['']" if draw_labels >= _MISSING else '')
        images.append(tree.image_record(
            rng, '', columns, rows, projection == 'L', truth, VISIBLE_LABELS,
            patient=patient, patient_id=patient_id, study=study_id,
            image_id=f'{study_id}_{rng.bytes(3).hex()}{number}.png',
            birth=birth, sex=sex, date=date, projection=projection,
            method=method, terms=terms, labels=labels,
            age=year - birth, **_depth(rng), split='all'))
  num_dirs = min(55, max(2, num_images // 20))
  table = [HEADER]
  for index, image in enumerate(images):
    image['path'] = f'{index * num_dirs // len(images)}/{image["image_id"]}'
    bits, low, high = image['stored']
    center, width = image['window']
    localizations = ("['loc basal']" if 'pleural effusion' in image['terms']
                     else '[]')
    table.append([
        index, image['image_id'], image['path'].split('/')[0], image['date'],
        image['study'], image['patient_id'], f'{image["birth"]}.0',
        image['sex'], _VIEW_POSITION[image['projection']],
        image['projection'], 'Manual review of DICOM fields',
        'PED' if image['age'] <= 10 else 'No', 'CR',
        'ImagingDynamicsCompanyLtd', 'MONOCHROME2', 0, 'None', 'None', bits,
        center, width, image['height'], image['width'], 250, 2, 2500, 10,
        'None', image['study'][:7], ' '.join(image['terms']) + ' .',
        image['method'], image['labels'], localizations, '[]', '[]', '[]'])
  data = tree.csv_bytes(table)
  name = CSV_NAME + '.gz' if gzip_csv else CSV_NAME
  return images, {name: tree.gzip_bytes(data) if gzip_csv else data}


def _digits(rng, count):
  """A decimal id of `count` digits, as PadChest's (too long for int64)."""
  return str(int(rng.integers(1, 10))) + ''.join(
      str(d) for d in rng.integers(0, 10, count - 1))


def _depth(rng):
  """The image's stored range (bits, low, high) and the CSV's window."""
  draw_depth = rng.random()
  for share, bits, low_range, high_range in _DEPTHS:
    if draw_depth < share:
      break
    draw_depth -= share
  low, high = int(rng.integers(*low_range)), int(rng.integers(*high_range))
  if bits == 16 or (bits == 12 and rng.random() < _WINDOW_MISSING):
    window = ('None', 'None')
  else:
    window = (f'{(low + high) / 2:.1f}', str(high - low))
  return {'stored': (bits, low, high), 'window': window}


def _recount(images):
  """What the CSV says, counted from the planned rows."""
  def count(values):
    counts = {}
    for value in values:
      counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items()))
  listed = [image for image in images if image['labels'] not in ('', "['']")]
  labels = count(term for image in listed for term in image['terms'])
  return {
      'rows': len(images),
      'labels': labels,
      'normal': labels.get(NORMAL, 0),
      'empty_list': sum(image['labels'] == "['']" for image in images),
      'missing': sum(image['labels'] == '' for image in images),
      'projections': count(image['projection'] for image in images),
      'methods': count(image['method'] for image in images),
      'bits_stored': count(image['stored'][0] for image in images),
      'children': sum(image['age'] <= 10 for image in images),
      'positives': {label: labels.get(label, 0) for label in VISIBLE_LABELS},
  }
