"""Label matching across datasets (evaluation.matching): by name, case
and separators ignored, through the synonym table; a dataset of classes
offers each class as a label of its own images."""

import pytest

from xray_tfdata import dataset_info
from xray_tfdata.evaluation import matching

NIH = ('Effusion', 'Pleural_Thickening', 'Cardiomegaly', 'Mass')
CHEXPERT = ('Pleural Effusion', 'Cardiomegaly', 'Edema')


def info_of(class_names, label_names=()):
  return dataset_info.DatasetInfo(
      data_dir='x', name='x', class_names=class_names, image_height=1,
      image_width=1, channels=1, splits={}, raw={}, label_names=label_names)


def test_label_matching_by_name_and_synonym():
  info = info_of(CHEXPERT, CHEXPERT)
  mapping = matching.match_labels(NIH, info)
  assert mapping['matched'] == {'Effusion': 'Pleural Effusion',
                                'Cardiomegaly': 'Cardiomegaly'}
  assert mapping['unmatched_model_labels'] == ['Pleural_Thickening', 'Mass']
  assert mapping['unmatched_data_labels'] == ['Edema']
  assert mapping['notes'] == ['Effusion scored against Pleural Effusion '
                              '(synonyms, see '
                              'evaluation.matching.LABEL_SYNONYMS)']
  assert matching.label_key('Pleural_Thickening') == matching.label_key(
      'pleural thickening')
  assert matching.label_key('Mass') != matching.label_key('Lung Lesion')
  with pytest.raises(matching.MatchingError, match=r'no label of the model '
                     r'\(Nodule\) is among the dataset.s labels'):
    matching.match_labels(['Nodule'], info)


@pytest.mark.parametrize('classes', [('NORMAL', 'PNEUMONIA'),
                                     ('healthy', ' pneumonia')])
def test_a_dataset_of_classes_offers_its_classes(classes):
  """One label (Kermany's PNEUMONIA) or several: the matched class is the
  positive, the other classes its negatives, not unmatched labels."""
  for model in (['PNEUMONIA'], ['Pneumonia', 'Effusion']):
    mapping = matching.match_labels(model, info_of(classes))
    positive = [c for c in classes if c.strip().lower() == 'pneumonia'][0]
    assert mapping['matched'] == {model[0]: positive}
    assert mapping['unmatched_model_labels'] == model[1:]
    assert mapping['unmatched_data_labels'] == []
    other = [c for c in classes if c != positive][0]
    assert mapping['notes'] == [f'dataset classes {other} taken as negatives']
  with pytest.raises(matching.MatchingError,
                     match=r'no label of the model \(PNEUMONIA\) is among '
                     r"the dataset's labels \(CAT, DOG\)"):
    matching.match_labels(['PNEUMONIA'], info_of(('CAT', 'DOG')))
