"""Label matching across datasets (evaluation.matching): through the label
vocabulary, each side read in its own layout's spelling, nothing fuzzy; a
dataset of classes offers each class as a label of its own images."""

import pytest

from xray_tfdata import dataset_info
from xray_tfdata.evaluation import matching

NIH = ('Effusion', 'Pleural_Thickening', 'Cardiomegaly', 'Mass')
CHEXPERT = ('Pleural Effusion', 'Cardiomegaly', 'Edema')


def info_of(class_names, label_names=(), layout=None):
  return dataset_info.DatasetInfo(
      data_dir='x', name='x', class_names=class_names, image_height=1,
      image_width=1, channels=1, splits={}, raw={}, label_names=label_names,
      layout=layout)


def test_label_matching_through_the_vocabulary():
  """An NIH model on CheXpert: Effusion is Pleural Effusion because the
  vocabulary lists both spellings; what either side has alone is named."""
  info = info_of(CHEXPERT, CHEXPERT, layout='chexpert')
  mapping = matching.match_labels(NIH, info, model_layout='nih')
  assert mapping['matched'] == {'Effusion': 'Pleural Effusion',
                                'Cardiomegaly': 'Cardiomegaly'}
  assert mapping['unmatched_model_labels'] == ['Pleural_Thickening', 'Mass']
  assert mapping['unmatched_data_labels'] == ['Edema']
  assert mapping['notes'] == ['Effusion scored against Pleural Effusion '
                              '(both Effusion in xray_tfdata.vocabulary)']
  # A mixture-trained model's outputs are the vocabulary's names.
  mixed = matching.match_labels(['Effusion', 'Edema'], info,
                                model_layout=matching.MIXTURE_LAYOUT)
  assert mixed['matched'] == {'Effusion': 'Pleural Effusion',
                              'Edema': 'Edema'}
  with pytest.raises(matching.MatchingError, match=r'no label of the model '
                     r'\(Nodule\) is among the dataset.s labels'):
    matching.match_labels(['Nodule'], info, model_layout='nih')


def test_nothing_fuzzy():
  """Spellings the vocabulary does not list do not meet: case, '_' and
  '-' count, and a layout outside the vocabulary matches equal names
  only."""
  info = info_of(CHEXPERT, CHEXPERT, layout='chexpert')
  with pytest.raises(matching.MatchingError):
    matching.match_labels(['pleural effusion', 'CARDIOMEGALY'], info,
                          model_layout='chexpert')
  assert matching.vocabulary_key('nih', 'Pleural_Thickening') != (
      matching.vocabulary_key('chexpert', 'pleural thickening'))
  own = info_of(('A', 'B_c'), ('A', 'B_c'), layout='multilabel_test')
  mapping = matching.match_labels(['B_c', 'B c'], own,
                                  model_layout='multilabel_test')
  assert mapping['matched'] == {'B_c': 'B_c'}
  assert mapping['unmatched_model_labels'] == ['B c']


@pytest.mark.parametrize('layout', ['kaggle', 'rsna'])
def test_a_dataset_of_classes_offers_its_classes(layout):
  """Kermany's (or RSNA's) PNEUMONIA is CheXpert's Pneumonia through the
  vocabulary: the matched class is the positive, the other classes its
  negatives, not unmatched labels."""
  classes = ('NORMAL', 'PNEUMONIA')
  for model, model_layout in ((['PNEUMONIA'], 'kaggle'),
                              (['Pneumonia', 'Effusion'], 'chexpert')):
    mapping = matching.match_labels(model, info_of(classes, layout=layout),
                                    model_layout=model_layout)
    assert mapping['matched'] == {model[0]: 'PNEUMONIA'}
    assert mapping['unmatched_model_labels'] == model[1:]
    assert mapping['unmatched_data_labels'] == []
    assert mapping['notes'][-1] == 'dataset classes NORMAL taken as negatives'
  with pytest.raises(matching.MatchingError,
                     match=r'no label of the model \(PNEUMONIA\) is among '
                     r"the dataset's labels \(CAT, DOG\)"):
    matching.match_labels(['PNEUMONIA'], info_of(('CAT', 'DOG')),
                          model_layout='kaggle')
