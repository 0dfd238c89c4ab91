"""vocabulary: the label table, checked against the sources' real names."""

import os

import pytest

from conftest import REPO_ROOT
from xray_tfdata import vocabulary

# torchxrayvision 1.5.7's xrv.datasets.default_pathologies, copied.
_XRV_DEFAULT_PATHOLOGIES = [
    'Atelectasis', 'Consolidation', 'Infiltration', 'Pneumothorax', 'Edema',
    'Emphysema', 'Fibrosis', 'Effusion', 'Pneumonia', 'Pleural_Thickening',
    'Cardiomegaly', 'Nodule', 'Mass', 'Hernia', 'Lung Lesion', 'Fracture',
    'Lung Opacity', 'Enlarged Cardiomediastinum']
# The real label names of each source, from its label file's header or
# values (NIH's Finding Labels, CheXpert's columns, VinDr-CXR's train.csv
# class_name values, Google's NIH columns).
_NIH = ('Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltration', 'Mass',
        'Nodule', 'Pneumonia', 'Pneumothorax', 'Consolidation', 'Edema',
        'Emphysema', 'Fibrosis', 'Pleural_Thickening', 'Hernia',
        'No Finding')
_CHEXPERT = ('No Finding', 'Enlarged Cardiomediastinum', 'Cardiomegaly',
             'Lung Opacity', 'Lung Lesion', 'Edema', 'Consolidation',
             'Pneumonia', 'Atelectasis', 'Pneumothorax', 'Pleural Effusion',
             'Pleural Other', 'Fracture', 'Support Devices')
_VINDR = ('No finding', 'Aortic enlargement', 'Cardiomegaly',
          'Pleural thickening', 'Pulmonary fibrosis', 'Nodule/Mass',
          'Lung Opacity', 'Pleural effusion', 'Other lesion', 'Infiltration',
          'ILD', 'Calcification', 'Consolidation', 'Atelectasis',
          'Pneumothorax')
_GOOGLE = ('Fracture', 'Pneumothorax', 'Airspace opacity', 'Nodule or mass')


def _padchest_terms():
  path = os.path.join(REPO_ROOT, 'tests', 'data', 'padchest_label_terms.tsv')
  with open(path) as f:
    return {line.split('\t')[0] for line in f if not line.startswith('#')}


def test_the_first_names_are_torchxrayvisions_18():
  assert list(vocabulary.XRV_PATHOLOGIES) == _XRV_DEFAULT_PATHOLOGIES
  assert {'No Finding', 'Support Devices', 'Tuberculosis'} <= set(
      vocabulary.NAMES)
  assert len(set(vocabulary.NAMES)) == len(vocabulary.NAMES)


@pytest.mark.parametrize('layout, names', [
    ('nih', _NIH), ('chexpert', _CHEXPERT), ('mimic', _CHEXPERT),
    ('vindr', _VINDR), ('nih_google', _GOOGLE)])
def test_every_real_label_of_a_source_maps(layout, names):
  mapped, unmapped = vocabulary.map_names(layout, names)
  assert unmapped == []
  # And each spelling the table lists for the source is one it really has.
  listed = {n for f in vocabulary.VOCABULARY for n in f.spellings.get(
      layout, ())}
  assert listed <= set(names)


def test_padchest_spellings_are_terms_of_the_real_file():
  terms = _padchest_terms()
  assert len(terms) == 193  # and the empty term
  listed = {n for f in vocabulary.VOCABULARY
            for n in f.spellings.get('padchest', ())}
  assert listed <= terms, listed - terms
  # Exact, not by substring: these are other findings.
  for other in ('subcutaneous emphysema', 'tuberculosis sequelae',
                'pericardial effusion', 'interstitial pattern'):
    assert vocabulary.vocabulary_name('padchest', other) is None


def test_the_issues_examples():
  # Effusion under each source's spelling; Google's airspace opacity.
  for layout, name in (('nih', 'Effusion'), ('chexpert', 'Pleural Effusion'),
                       ('mimic', 'Pleural Effusion'),
                       ('padchest', 'pleural effusion'),
                       ('vindr', 'Pleural effusion')):
    assert vocabulary.vocabulary_name(layout, name) == 'Effusion'
  assert vocabulary.vocabulary_name('nih_google',
                                    'Airspace opacity') == 'Lung Opacity'
  for layout in ('kaggle', 'rsna'):
    assert vocabulary.vocabulary_name(layout, 'PNEUMONIA') == 'Pneumonia'
  # A coarser name stays its own finding.
  assert vocabulary.vocabulary_name('vindr', 'Nodule/Mass') == 'Nodule/Mass'
  assert vocabulary.source_names('vindr', 'Nodule') == ()
  # Case matters: a source's spelling is taken exactly.
  assert vocabulary.vocabulary_name('nih', 'effusion') is None


def test_a_spelling_names_one_finding_per_source():
  seen = {}
  for finding in vocabulary.VOCABULARY:
    for layout, names in finding.spellings.items():
      for name in names:
        assert (layout, name) not in seen, (layout, name, seen.get(
            (layout, name)))
        seen[(layout, name)] = finding.name


def test_a_label_a_source_does_not_report_has_no_spelling_there():
  assert vocabulary.source_names('nih', 'Support Devices') == ()
  assert vocabulary.source_names('chexpert', 'Hernia') == ()
  assert vocabulary.source_names('siim', 'Pneumothorax') == ('Pneumothorax',)


def test_the_users_csv_maps_only_the_vocabularys_own_names():
  assert vocabulary.map_names('csv', ['Effusion', 'Pleural Effusion']) == (
      {'Effusion': 'Effusion'}, ['Pleural Effusion'])


def test_unmapped_names_get_one_line():
  line = vocabulary.unmapped_line('padchest', ['pleural effusion', 'COPD signs',
                                               'scoliosis'])
  assert line.count('\n') == 0
  assert 'COPD signs, scoliosis' in line and '2 labels' in line
  assert vocabulary.unmapped_line('nih', _NIH) == ''


def test_unknown_layouts_and_names_are_named():
  with pytest.raises(vocabulary.VocabularyError, match='padchets'):
    vocabulary.vocabulary_name('padchets', 'x')
  with pytest.raises(vocabulary.VocabularyError, match='Efusion'):
    vocabulary.source_names('nih', 'Efusion')
