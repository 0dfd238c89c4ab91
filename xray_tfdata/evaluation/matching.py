"""Label matching across datasets: which of a dataset's labels each model
output is scored against, by name.

One rule for every pair of datasets: names are compared after `label_key`
(case, '_' and '-' ignored, then `LABEL_SYNONYMS`), so NIH's
'Pleural_Thickening' is 'pleural thickening' and Kermany's 'PNEUMONIA' is
CheXpert's 'Pneumonia' without an entry. A dataset of classes (Kermany,
RSNA) offers each class as a label of its own images: a model's
'PNEUMONIA' output is scored against whether the image is of that class.
"""

from xray_tfdata import errors

# Spellings of one finding in different sources, matched as the same label
# (an explicit table, nothing fuzzy). As torchxrayvision renames them: its
# CheXpert and MIMIC datasets call 'Pleural Effusion' 'Effusion' (NIH's
# name), its NIH_Google dataset calls 'Airspace opacity' 'Lung Opacity'.
LABEL_SYNONYMS = {
    'effusion': ('pleural effusion',),
    'lung opacity': ('airspace opacity',),
}
_CANONICAL = {spelling: name for name, spellings in LABEL_SYNONYMS.items()
              for spelling in spellings}


class MatchingError(errors.XrayError):
  """No label of the model is among the dataset's."""


def _spelling(name):
  return ' '.join(str(name).lower().replace('_', ' ').replace('-', ' ')
                  .split())


def label_key(name):
  """The name labels are matched by: lower case, '_' and '-' as spaces,
  then `LABEL_SYNONYMS`' common spelling."""
  return _CANONICAL.get(_spelling(name), _spelling(name))


def data_labels(info):
  """The labels a dataset offers: a multi-label dataset's label names, a
  dataset of classes' class names (each a label of its own images)."""
  return list(info.label_names) if info.is_multilabel else list(
      info.class_names)


def match_labels(model_label_names, info):
  """Matches a model's outputs to a dataset's labels by name.

  Args:
    model_label_names: the model's outputs, in order.
    info: the dataset's `DatasetInfo`.

  Returns:
    {'matched': {model label: dataset label}, 'unmatched_model_labels',
     'unmatched_data_labels', 'notes'}; a dataset of classes has no
    unmatched labels (its other classes are the matched ones' negatives).

  Raises:
    MatchingError: no label of the model is in the dataset.
  """
  names = data_labels(info)
  by_key = {}
  for name in names:
    by_key.setdefault(label_key(name), name)
  matched, unmatched = {}, []
  for label in model_label_names:
    if label_key(label) in by_key:
      matched[label] = by_key[label_key(label)]
    else:
      unmatched.append(label)
  if not matched:
    raise MatchingError(
        f'no label of the model ({", ".join(unmatched)}) is among the '
        f'dataset\'s labels ({", ".join(names)}): nothing to score; '
        'evaluate on a dataset with one of them (names are matched ignoring '
        'case, _ and -, and through evaluation.matching.LABEL_SYNONYMS)')
  used = set(matched.values())
  others = [name for name in names if name not in used]
  notes = [f'{label} scored against {name} (synonyms, see '
           'evaluation.matching.LABEL_SYNONYMS)'
           for label, name in matched.items()
           if _spelling(label) != _spelling(name)]
  if not info.is_multilabel and others:
    # A dataset of classes: its other classes are the negatives of the
    # matched labels, not labels without an output.
    notes.append(f'dataset classes {", ".join(others)} taken as negatives')
    others = []
  return {'matched': matched, 'unmatched_model_labels': unmatched,
          'unmatched_data_labels': others, 'notes': notes}
