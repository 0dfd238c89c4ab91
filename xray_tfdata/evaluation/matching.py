"""Label matching across datasets: which of a dataset's labels each model
output is scored against, through the label vocabulary (`vocabulary`).

A model's outputs are read in the spelling of the dataset it was trained
on (its layout, which config.json's dataset record keeps; a run on several
datasets outputs the vocabulary's names), a dataset's labels in its own
layout's: NIH's 'Effusion' is CheXpert's 'Pleural Effusion' and Kermany's
'PNEUMONIA' is CheXpert's 'Pneumonia' because the table says so, nothing
fuzzy. A name the vocabulary does not map, or one of a layout it does not
know (a user's own csv, a test's), matches only the same name. A dataset
of classes (Kermany, RSNA) offers each class as a label of its own images:
a model's 'PNEUMONIA' output is scored against whether the image is of
that class.
"""

from xray_tfdata import errors
from xray_tfdata import vocabulary

# The layout of a run trained on several datasets (`mixture.MixtureInfo`):
# its outputs are the vocabulary's names.
MIXTURE_LAYOUT = 'mixture'


class MatchingError(errors.XrayError):
  """No label of the model is among the dataset's."""


def vocabulary_key(layout, name):
  """The name a label is matched by: the vocabulary's name of it where the
  layout's table maps it, else the name as spelled."""
  if layout in vocabulary.SOURCE_LAYOUTS + (vocabulary.OWN_NAMES_LAYOUT,):
    return vocabulary.vocabulary_name(layout, name) or name
  return name


def data_labels(info):
  """The labels a dataset offers: a multi-label dataset's label names, a
  dataset of classes' class names (each a label of its own images)."""
  return list(info.label_names) if info.is_multilabel else list(
      info.class_names)


def match_labels(model_label_names, info, model_layout=None):
  """Matches a model's outputs to a dataset's labels through the
  vocabulary.

  Args:
    model_label_names: the model's outputs, in order.
    info: the dataset's `DatasetInfo`.
    model_layout: the layout the outputs are spelled in (the training
      dataset's; MIXTURE_LAYOUT or None: as spelled, e.g. vocabulary
      names).

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
    by_key.setdefault(vocabulary_key(info.layout, name), name)
  matched, unmatched = {}, []
  for label in model_label_names:
    key = vocabulary_key(model_layout, label)
    if key in by_key:
      matched[label] = by_key[key]
    else:
      unmatched.append(label)
  if not matched:
    raise MatchingError(
        f'no label of the model ({", ".join(unmatched)}) is among the '
        f'dataset\'s labels ({", ".join(names)}): nothing to score; '
        'evaluate on a dataset with one of them (names are matched through '
        'the label vocabulary, xray_tfdata.vocabulary)')
  used = set(matched.values())
  others = [name for name in names if name not in used]
  notes = [f'{label} scored against {name} (both '
           f'{vocabulary_key(model_layout, label)} in xray_tfdata.vocabulary)'
           for label, name in matched.items() if label != name]
  if not info.is_multilabel and others:
    # A dataset of classes: its other classes are the negatives of the
    # matched labels, not labels without an output.
    notes.append(f'dataset classes {", ".join(others)} taken as negatives')
    others = []
  return {'matched': matched, 'unmatched_model_labels': unmatched,
          'unmatched_data_labels': others, 'notes': notes}
