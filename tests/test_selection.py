"""selection.Selection called directly, on tiny hand-written records
(DatasetBuilder's delegates are tested in test_pipeline). The
expected counts come from the rows written here, not from the module."""

import pytest
import tensorflow as tf

from records import write_dataset, write_multilabel_dataset
from xray_tfdata import labels
from xray_tfdata import pipeline
from xray_tfdata import schema
from xray_tfdata import selection
from xray_tfdata import verify
from xray_tfdata.dataset_info import DatasetError, load_info

LABEL_NAMES = ('Atelectasis', 'Effusion')
# (codes, view) of the train split: PA 3, LL 2, AP 1, unknown 1.
TRAIN = [([1, 0], 'PA'), ([-1, 1], 'LL'), ([0, -2], 'PA'), ([1, 1], ''),
         ([0, 0], 'AP'), ([-2, -1], 'LL'), ([1, -1], 'PA')]
VAL = [([0, 1], 'PA'), ([1, 0], 'AP')]


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('selection'))
  expected = write_multilabel_dataset(
      root, LABEL_NAMES, {'train': TRAIN, 'val': VAL}, num_shards=2)
  return load_info(root), expected


def _selection(info):
  """A Selection, and the splits whose shard paths it asked for."""
  asked = []

  def shard_paths(split):
    asked.append(split)
    return verify.checked_shard_paths(info, split)

  return selection.Selection(info, shard_paths), asked


def test_views_are_counted_from_one_read_of_the_records(dataset):
  chosen, asked = _selection(dataset[0])
  assert chosen.views('train') == {'PA': 3, 'LL': 2, 'AP': 1,
                                   selection.UNKNOWN_VIEW: 1}
  assert chosen.num_examples('train', ('PA', 'unknown')) == 4
  assert chosen.label_code_counts('train', 'LL') == {
      'Atelectasis': {1: 0, 0: 0, -1: 1, -2: 1},
      'Effusion': {1: 1, 0: 0, -1: 1, -2: 0}}
  assert asked == ['train']
  # Without views, from xray_info.json: no read.
  assert chosen.num_examples('val') == 2 and asked == ['train']
  assert chosen.label_code_counts('val') == dataset[0].label_code_counts('val')
  assert asked == ['train']
  assert pipeline.UNKNOWN_VIEW == selection.UNKNOWN_VIEW == 'unknown'


def test_view_filter_line_counts_kept_and_dropped_most_first(dataset):
  chosen, _ = _selection(dataset[0])
  assert chosen.view_filter_line(['PA', 'AP'], ['train', 'val']) == (
      'views PA,AP: kept 4 of 7 train images (dropped 3: LL 2, unknown 1); '
      'kept 2 of 2 val images (dropped 0)')


def test_views_that_keep_nothing_name_the_split_s_views(dataset):
  chosen, _ = _selection(dataset[0])
  with pytest.raises(DatasetError) as caught:
    chosen.num_examples('val', ('LL',))
  message = str(caught.value)
  assert "split 'val'" in message and '(its views: AP 1, PA 1)' in message
  assert '\n' not in message and '--views=VIEW,VIEW' in message


def test_check_views_takes_a_name_a_sequence_or_nothing(dataset):
  chosen, _ = _selection(dataset[0])
  assert chosen.check_views('PA') == ('PA',)
  assert chosen.check_views(['PA', 'AP']) == ('PA', 'AP')
  assert chosen.check_views(None) is None and chosen.check_views([]) is None


def test_targets_are_the_policy_table_and_the_indices_asked(dataset):
  chosen, _ = _selection(dataset[0])
  rule, indices = chosen.targets('txv', ['Effusion', 'Atelectasis'])
  assert indices == [1, 0]
  # txv, by hand (labels.py's docstring): codes -2..1 -> M, M, 0, 1; no
  # No Finding label, so no No Finding step (test_labels has one).
  assert list(rule.table) == [labels.MASKED, labels.MASKED, 0.0, 1.0]
  assert rule.no_finding is None
  assert chosen.label_names() == LABEL_NAMES
  with pytest.raises(DatasetError, match='--label_policy=u_ones'):
    chosen.targets('u_maybe', None)
  with pytest.raises(DatasetError, match="'Cardiomegaly' not in"):
    chosen.label_names(['Effusion', 'Cardiomegaly'])


def test_filter_records_keeps_the_records_of_the_views(dataset):
  info, expected = dataset
  chosen, _ = _selection(info)
  records = tf.data.TFRecordDataset(verify.checked_shard_paths(info, 'train'))
  spec = {schema.FILENAME: tf.io.FixedLenFeature([], tf.string)}
  kept = chosen.filter_records(records, 'train', ('LL', 'unknown'))
  names = [tf.io.parse_single_example(r, spec)[schema.FILENAME].numpy()
           .decode() for r in kept]
  assert names == [e['filename'] for e in expected['train']
                   if e['view'] in ('LL', '')]
  assert chosen.filter_records(records, 'train', None) is records


# PadChest's MethodLabel per train row, beside its view (TRAIN above).
METHODS = ['Physician', 'RNN_model', 'RNN_model', 'Physician', 'Physician',
           'RNN_model', '']


@pytest.fixture(scope='module')
def with_methods(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('methods'))
  expected = write_multilabel_dataset(
      root, LABEL_NAMES, {'train': TRAIN, 'val': VAL}, num_shards=2,
      label_methods={'train': METHODS, 'val': ['RNN_model', 'RNN_model']})
  return load_info(root), expected


def test_label_methods_filter_the_records_and_the_counts(with_methods):
  info, expected = with_methods
  chosen, asked = _selection(info)
  assert chosen.label_methods('train') == {'Physician': 3, 'RNN_model': 3,
                                           selection.UNKNOWN_VIEW: 1}
  rows = [e for e, method in zip(expected['train'], METHODS)
          if method == 'Physician']
  assert chosen.num_examples('train', label_methods='Physician') == 3
  # Both filters at once: Physician and PA are rows 0 only ([1, 0], 'PA').
  assert chosen.num_examples('train', 'PA', ['Physician']) == 1
  codes = {name: {code: sum(e['codes'][i] == code for e in rows)
                  for code in schema.LABEL_CODES}
           for i, name in enumerate(LABEL_NAMES)}
  assert chosen.label_code_counts('train', None, 'Physician') == codes
  # u_zeros by hand: 1 -> 1, every other code -> 0.
  assert chosen.target_counts('train', 'u_zeros', None, None,
                              'Physician') == {
      name: {'positive': codes[name][1],
             'negative': len(rows) - codes[name][1]} for name in LABEL_NAMES}
  records = tf.data.TFRecordDataset(verify.checked_shard_paths(info, 'train'))
  spec = {schema.FILENAME: tf.io.FixedLenFeature([], tf.string)}
  kept = chosen.filter_records(records, 'train', ('PA', 'unknown'),
                               ('Physician', 'unknown'))
  names = [tf.io.parse_single_example(r, spec)[schema.FILENAME].numpy()
           .decode() for r in kept]
  assert names == [e['filename'] for e, method in zip(expected['train'],
                                                      METHODS)
                   if e['view'] in ('PA', '') and method in ('Physician', '')]
  assert asked == ['train']  # one read of the records for all of these
  assert chosen.view_filter_line(None, ['train', 'val'], ['Physician']) == (
      'label methods Physician: kept 3 of 7 train images (dropped 4: '
      'RNN_model 3, unknown 1); kept 0 of 2 val images (dropped 2: '
      'RNN_model 2)')


def test_label_methods_that_keep_nothing_or_are_not_stored_are_one_line(
    dataset, with_methods):
  chosen, _ = _selection(with_methods[0])
  with pytest.raises(DatasetError) as caught:
    chosen.num_examples('val', label_methods='Physician')
  message = str(caught.value)
  assert '\n' not in message and "split 'val'" in message
  assert 'its label methods: RNN_model 2' in message
  assert '--label_methods=METHOD,METHOD' in message
  plain, _ = _selection(dataset[0])
  with pytest.raises(DatasetError, match='leave --label_methods empty'):
    plain.num_examples('train', label_methods='Physician')


def test_a_class_dataset_has_one_label_its_positive_class_and_no_views(
    tmp_path):
  """L = 1: PNEUMONIA, counted from xray_info.json's class counts (2
  NORMAL, 3 PNEUMONIA written); its records store no view."""
  write_dataset(str(tmp_path), {'train': (2, 3)})
  chosen, asked = _selection(load_info(str(tmp_path)))
  assert chosen.targets('u_ones', None) is None
  assert chosen.label_names() == chosen.label_names('PNEUMONIA') == (
      'PNEUMONIA',)
  assert chosen.target_counts('train', 'u_ones') == {
      'PNEUMONIA': {'positive': 3, 'negative': 2}}
  with pytest.raises(DatasetError, match="'NORMAL' not in .*PNEUMONIA"):
    chosen.label_names(('NORMAL',))
  for ask in (lambda: chosen.check_views(('PA',)),
              lambda: chosen.target_counts('train', 'u_ones', views='PA'),
              lambda: chosen.views('train')):
    with pytest.raises(DatasetError, match='class dataset'):
      ask()
  assert asked == []
  assert chosen.num_examples('train') == 5


def test_an_empty_label_selection_is_refused_in_one_line(dataset):
  """labels=[] would build a model of no outputs: refused, as the docstring
  says, naming the dataset's labels (None still means all of them)."""
  chosen, _ = _selection(dataset[0])
  with pytest.raises(DatasetError) as caught:
    chosen.label_names([])
  message = str(caught.value)
  assert '(none) not in' in message and '\n' not in message
  assert 'Atelectasis, Effusion' in message and '--labels=NAME,NAME' in message
  with pytest.raises(DatasetError, match='--labels=NAME,NAME'):
    chosen.targets('u_ones', ())
  assert chosen.label_names(None) == LABEL_NAMES
