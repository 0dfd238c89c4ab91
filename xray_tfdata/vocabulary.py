"""The field's label vocabulary: one name per finding and each source's
spellings of it, written as data.

Each converted dataset keeps its own label names (NIH `Effusion`, CheXpert
`Pleural Effusion`, PadChest `pleural effusion`); this table maps them
when datasets are read together or a model trained on one is evaluated on
another. Nothing is fuzzy: a source's name maps only where the table
lists it, exactly as the source spells it. Where a source reports a finding
under finer names (PadChest's `laminar atelectasis`, `rib fracture`), the
table lists each one it maps, and a reader takes their union; a coarser
name (VinDr's and Google's `Nodule/Mass`) is a finding of its own, never
split into Nodule and Mass. A finding a source does not list is unknown
there (masked), never negative.

The names are torchxrayvision's 18 (`xrv.datasets.default_pathologies`),
then No Finding, Support Devices, Tuberculosis and the findings only some
sources carry. Where torchxrayvision matches PadChest and VinDr terms by
substring (so that `infiltrates` also takes `consolidation`, and
`emphysema` takes `subcutaneous emphysema`), this table lists the terms.

No TensorFlow, no Keras.
"""

import dataclasses
import types

from xray_tfdata import errors

# The sources' layout names (tools/make_tfrecords --layout); 'csv' (a
# labels CSV of the user's) maps a name only where it is the vocabulary's
# own.
CLASS_FOLDER_LAYOUTS = ('kaggle', 'mendeley', 'pool')
SOURCE_LAYOUTS = CLASS_FOLDER_LAYOUTS + (
    'rsna', 'nih', 'chexpert', 'mimic', 'padchest', 'vindr', 'siim',
    'nih_google', 'nlm_tb')
OWN_NAMES_LAYOUT = 'csv'

_CHEXPERT = ('chexpert', 'mimic')  # MIMIC-CXR is labelled by CheXpert's labeller


@dataclasses.dataclass(frozen=True)
class Finding:
  """One label of the vocabulary.

  Attributes:
    name: the vocabulary's name (torchxrayvision's where it has one).
    spellings: {layout: the source's names of it, exactly as spelled}.
  """
  name: str
  spellings: types.MappingProxyType


def _finding(name, **by_layout):
  spellings = {}
  for layout, names in by_layout.items():
    names = (names,) if isinstance(names, str) else tuple(names)
    for source in (_CHEXPERT if layout == 'chexpert_mimic' else (layout,)):
      spellings[source] = names
  return Finding(name, types.MappingProxyType(spellings))


VOCABULARY = (
    # torchxrayvision's 18, in its order.
    _finding('Atelectasis', nih='Atelectasis', chexpert_mimic='Atelectasis',
             padchest=('atelectasis', 'laminar atelectasis',
                       'lobar atelectasis', 'segmental atelectasis',
                       'total atelectasis', 'round atelectasis',
                       'atelectasis basal'),
             vindr='Atelectasis'),
    _finding('Consolidation', nih='Consolidation',
             chexpert_mimic='Consolidation', padchest='consolidation',
             vindr='Consolidation'),
    _finding('Infiltration', nih='Infiltration', padchest='infiltrates',
             vindr='Infiltration'),
    _finding('Pneumothorax', nih='Pneumothorax',
             chexpert_mimic='Pneumothorax',
             padchest=('pneumothorax', 'hydropneumothorax'),
             vindr='Pneumothorax', siim='Pneumothorax',
             nih_google='Pneumothorax'),
    _finding('Edema', nih='Edema', chexpert_mimic='Edema',
             padchest='pulmonary edema'),
    _finding('Emphysema', nih='Emphysema', padchest='emphysema'),
    _finding('Fibrosis', nih='Fibrosis', padchest='pulmonary fibrosis',
             vindr='Pulmonary fibrosis'),
    _finding('Effusion', nih='Effusion', chexpert_mimic='Pleural Effusion',
             padchest=('pleural effusion', 'loculated pleural effusion'),
             vindr='Pleural effusion'),
    _finding('Pneumonia', nih='Pneumonia', chexpert_mimic='Pneumonia',
             padchest=('pneumonia', 'atypical pneumonia'),
             # Kermany's class folder and RSNA's Target = 1 (stored as the
             # class PNEUMONIA; RSNA's own word is "Lung Opacity").
             kaggle='PNEUMONIA', mendeley='PNEUMONIA', pool='PNEUMONIA',
             rsna='PNEUMONIA'),
    _finding('Pleural_Thickening', nih='Pleural_Thickening',
             padchest=('pleural thickening', 'apical pleural thickening',
                       'calcified pleural thickening'),
             vindr='Pleural thickening'),
    _finding('Cardiomegaly', nih='Cardiomegaly',
             chexpert_mimic='Cardiomegaly', padchest='cardiomegaly',
             vindr='Cardiomegaly'),
    _finding('Nodule', nih='Nodule', padchest=('nodule', 'multiple nodules')),
    _finding('Mass', nih='Mass', padchest=('mass', 'pulmonary mass')),
    _finding('Hernia', nih='Hernia', padchest='hiatal hernia'),
    _finding('Lung Lesion', chexpert_mimic='Lung Lesion'),
    _finding('Fracture', chexpert_mimic='Fracture',
             padchest=('fracture', 'rib fracture', 'callus rib fracture',
                       'clavicle fracture', 'vertebral fracture',
                       'humeral fracture'),
             nih_google='Fracture'),
    _finding('Lung Opacity', chexpert_mimic='Lung Opacity',
             vindr='Lung Opacity', nih_google='Airspace opacity'),
    _finding('Enlarged Cardiomediastinum',
             chexpert_mimic='Enlarged Cardiomediastinum'),
    # Beyond torchxrayvision's 18.
    _finding('No Finding', nih='No Finding', chexpert_mimic='No Finding',
             padchest='normal', vindr='No finding'),
    _finding('Support Devices', chexpert_mimic='Support Devices'),
    _finding('Tuberculosis', padchest='tuberculosis', nlm_tb='Tuberculosis'),
    _finding('Nodule/Mass', vindr='Nodule/Mass', nih_google='Nodule or mass'),
    _finding('Pleural Other', chexpert_mimic='Pleural Other'),
    _finding('Aortic enlargement', vindr='Aortic enlargement'),
    _finding('Calcification', vindr='Calcification'),
    _finding('ILD', vindr='ILD'),
    _finding('Other lesion', vindr='Other lesion'),
)

NAMES = tuple(f.name for f in VOCABULARY)
# torchxrayvision's default_pathologies, the first 18 names.
XRV_PATHOLOGIES = NAMES[:18]


class VocabularyError(errors.XrayError):
  """A layout or a label name the vocabulary cannot place."""


def _index():
  """{layout: {source name: vocabulary name}}."""
  out = {}
  for finding in VOCABULARY:
    for layout, names in finding.spellings.items():
      for name in names:
        out.setdefault(layout, {})[name] = finding.name
  return out


_BY_LAYOUT = _index()


def _check_layout(layout):
  if layout not in SOURCE_LAYOUTS + (OWN_NAMES_LAYOUT,):
    raise VocabularyError(
        f'no source layout {layout!r} in the label vocabulary: pass one of '
        f'{", ".join(SOURCE_LAYOUTS + (OWN_NAMES_LAYOUT,))}')


def vocabulary_name(layout, name):
  """The vocabulary's name of a source's label, or None where the table
  does not map it.

  Args:
    layout: the source's layout (a dataset's `info.layout`).
    name: the label as the source spells it.

  Raises:
    VocabularyError: an unknown layout.
  """
  _check_layout(layout)
  if layout == OWN_NAMES_LAYOUT:
    return name if name in NAMES else None
  return _BY_LAYOUT.get(layout, {}).get(name)


def source_names(layout, vocabulary_label):
  """The source's names of a vocabulary label, () where it has none
  (unknown there: masked, never negative).

  Raises:
    VocabularyError: an unknown layout or vocabulary name.
  """
  _check_layout(layout)
  if vocabulary_label not in NAMES:
    raise VocabularyError(
        f'{vocabulary_label!r} is not a label of the vocabulary: pass one '
        f'of {", ".join(NAMES)}')
  if layout == OWN_NAMES_LAYOUT:
    return (vocabulary_label,)
  finding = VOCABULARY[NAMES.index(vocabulary_label)]
  return tuple(finding.spellings.get(layout, ()))


def map_names(layout, names):
  """A dataset's label names in the vocabulary.

  Args:
    layout: the dataset's layout.
    names: its label names, as stored.

  Returns:
    ({source name: vocabulary name} for the names the table maps,
     [the names it does not map], in the order given).
  """
  mapped, unmapped = {}, []
  for name in names:
    label = vocabulary_name(layout, name)
    if label is None:
      unmapped.append(name)
    else:
      mapped[name] = label
  return mapped, unmapped


def unmapped_line(layout, names):
  """One line naming the labels a dataset keeps outside the vocabulary,
  or '' where every one maps."""
  _, unmapped = map_names(layout, names)
  if not unmapped:
    return ''
  return (f'{len(unmapped)} label{"s" if len(unmapped) > 1 else ""} of '
          f'the {layout} dataset outside the vocabulary (kept under their '
          f'own names, shared with no other source): {", ".join(unmapped)}')
