"""DatasetBuilder on multi-label records: policies, label selection, views.

The datasets are written by tests/records.py from schema.encode_example,
and the expected targets come from a table written out here, not from
xray_tfdata.labels."""

import numpy as np
import pytest

from records import write_dataset, write_multilabel_dataset
from xray_tfdata import checks
from xray_tfdata import pipeline

LABEL_NAMES = ('Atelectasis', 'Effusion', 'Pleural_Thickening')
M = -1.0
# labels.py's docstring, by hand: policy -> {raw code: target}.
POLICY_TARGETS = {
    'u_ones': {1: 1.0, 0: 0.0, -1: 1.0, -2: 0.0},
    'u_zeros': {1: 1.0, 0: 0.0, -1: 0.0, -2: 0.0},
    'u_ignore': {1: 1.0, 0: 0.0, -1: M, -2: 0.0},
    'txv': {1: 1.0, 0: 0.0, -1: M, -2: M},
}
VIEWS = ('PA', 'AP', 'LL', 'PA', '', 'AP', 'PA', 'LL', 'LL', 'PA', 'AP', 'PA')


def _rows(n, seed):
  """Every code in every label column, and the VIEWS cycle."""
  rng = np.random.default_rng(seed)
  codes = [[(i + l) % 4 - 2 for l in range(len(LABEL_NAMES))]
           for i in range(4)]
  codes += rng.choice([1, 0, -1, -2], size=(n - 4, len(LABEL_NAMES))).tolist()
  return [(row, VIEWS[i % len(VIEWS)]) for i, row in enumerate(codes)]


@pytest.fixture(scope='module')
def multilabel(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('multilabel'))
  expected = write_multilabel_dataset(
      root, LABEL_NAMES, {'train': _rows(23, 0), 'val': _rows(10, 1),
                          'test': _rows(9, 2)}, num_shards=3)
  return root, expected


def _read(builder, split, **kwargs):
  """(images, targets, metadata) of one deterministic pass."""
  images, targets, metadata = [], [], []
  for x, y, meta in builder.as_dataset(split, 4, with_metadata=True,
                                       **kwargs).as_numpy_iterator():
    images.append(x)
    targets.append(y)
    metadata += [dict(zip(meta, values)) for values in zip(*meta.values())]
  return np.concatenate(images), np.concatenate(targets), metadata


@pytest.mark.parametrize('policy', sorted(POLICY_TARGETS))
def test_each_policy_gives_the_documented_targets_of_the_stored_codes(
    multilabel, policy):
  root, expected = multilabel
  builder = pipeline.DatasetBuilder(root)
  images, targets, _ = _read(builder, 'train', label_policy=policy)
  assert targets.dtype == np.float32
  assert targets.shape == (23, len(LABEL_NAMES))
  want = np.array([[POLICY_TARGETS[policy][c] for c in e['codes']]
                   for e in expected['train']], np.float32)
  np.testing.assert_array_equal(targets, want)
  np.testing.assert_array_equal(
      images[..., 0], np.stack([e['pixels'] for e in expected['train']]))


def test_the_default_policy_is_u_ones(multilabel):
  root, expected = multilabel
  _, targets, _ = _read(pipeline.DatasetBuilder(root), 'val')
  assert checks.DEFAULT_LABEL_POLICY == 'u_ones'
  np.testing.assert_array_equal(
      targets, [[POLICY_TARGETS['u_ones'][c] for c in e['codes']]
                for e in expected['val']])


def test_labels_select_columns_in_the_order_asked(multilabel):
  root, expected = multilabel
  builder = pipeline.DatasetBuilder(root)
  _, targets, _ = _read(builder, 'val', label_policy='txv',
                        labels=('Pleural_Thickening', 'Atelectasis'))
  want = [[POLICY_TARGETS['txv'][e['codes'][2]],
           POLICY_TARGETS['txv'][e['codes'][0]]] for e in expected['val']]
  np.testing.assert_array_equal(targets, want)
  assert builder.label_names(['Effusion']) == ('Effusion',)
  assert builder.label_names() == LABEL_NAMES


def test_unknown_label_names_the_available_ones_in_one_line(multilabel):
  builder = pipeline.DatasetBuilder(multilabel[0])
  with pytest.raises(pipeline.DatasetError) as caught:
    builder.as_dataset('val', 4, labels=('Effusion', 'Pleural Effusion'))
  message = str(caught.value)
  assert '\n' not in message
  assert "'Pleural Effusion'" in message
  assert ', '.join(LABEL_NAMES) in message and '--labels' in message
  with pytest.raises(pipeline.DatasetError, match='twice'):
    builder.as_dataset('val', 4, labels=('Effusion', 'Effusion'))
  with pytest.raises(pipeline.DatasetError, match='u_ones'):
    builder.as_dataset('val', 4, label_policy='u_maybe')


def test_metadata_has_view_sex_age_and_study(multilabel):
  root, expected = multilabel
  _, _, metadata = _read(pipeline.DatasetBuilder(root), 'test')
  got = [(m['filename'].decode(), m['patient_id'].decode(),
          m['view'].decode(), m['sex'].decode(), int(m['age_years']),
          m['study_id'].decode()) for m in metadata]
  assert got == [(e['filename'], e['patient_id'], e['view'], e['sex'],
                  e['age_years'], e['study_id']) for e in expected['test']]


def test_views_keep_only_those_views_and_count_what_they_drop(multilabel):
  root, expected = multilabel
  builder = pipeline.DatasetBuilder(root)
  views = ('PA', 'AP')
  kept = [e for e in expected['train'] if e['view'] in views]
  dropped = [e['view'] for e in expected['train'] if e['view'] not in views]
  assert 0 < len(kept) < 23 and dropped.count('LL') > dropped.count('') > 0
  _, targets, metadata = _read(builder, 'train', views=views,
                               label_policy='u_zeros')
  assert [m['filename'].decode() for m in metadata] == [
      e['filename'] for e in kept]
  np.testing.assert_array_equal(
      targets, [[POLICY_TARGETS['u_zeros'][c] for c in e['codes']]
                for e in kept])
  assert builder.num_examples('train', views) == len(kept)
  assert builder.num_examples('train') == 23
  ds = builder.as_dataset('train', 4, views=views)
  assert int(ds.cardinality()) == -(-len(kept) // 4)
  assert builder.steps_per_epoch('train', 4, views=views) == len(kept) // 4
  assert builder.views('train') == {
      view or 'unknown': sum(e['view'] == view for e in expected['train'])
      for view in set(VIEWS)}
  line = builder.view_filter_line(views, ['train'])
  assert line == (
      f'views PA,AP: kept {len(kept)} of 23 train images (dropped '
      f'{len(dropped)}: LL {dropped.count("LL")}, unknown {dropped.count("")})')


def test_a_training_pass_over_filtered_views_has_steps_per_epoch_batches(
    multilabel):
  builder = pipeline.DatasetBuilder(multilabel[0])
  views = ('LL',)
  batches = list(builder.as_dataset('train', 2, training=True, seed=1,
                                    views=views).as_numpy_iterator())
  assert len(batches) == builder.steps_per_epoch('train', 2, views=views)
  assert all(y.shape == (2, 3) for _, y in batches)


def test_label_code_counts_follow_the_views(multilabel):
  root, expected = multilabel
  builder = pipeline.DatasetBuilder(root)
  kept = [e for e in expected['val'] if e['view'] in ('PA', 'unknown', '')]
  counts = builder.label_code_counts('val', ('PA', 'unknown'))
  for index, name in enumerate(LABEL_NAMES):
    assert counts[name] == {code: sum(e['codes'][index] == code for e in kept)
                            for code in (1, 0, -1, -2)}
  assert builder.label_code_counts('val') == builder.info.label_code_counts(
      'val')


def test_views_that_keep_nothing_fail_in_one_line(multilabel):
  builder = pipeline.DatasetBuilder(multilabel[0])
  with pytest.raises(pipeline.DatasetError) as caught:
    builder.as_dataset('val', 4, views=('LATERAL',))
  message = str(caught.value)
  assert '\n' not in message and 'PA' in message and '--views' in message


def test_single_label_datasets_refuse_labels_and_views_and_read_as_before(
    tmp_path):
  write_dataset(str(tmp_path), {'train': (2, 3), 'val': (1, 2)})
  builder = pipeline.DatasetBuilder(str(tmp_path))
  for kwargs in ({'labels': ('PNEUMONIA',)}, {'views': ('PA',)}):
    with pytest.raises(pipeline.DatasetError, match='single-label'):
      builder.as_dataset('val', 2, **kwargs)
  _, y = next(builder.as_dataset('val', 3).as_numpy_iterator())
  assert y.shape == (3,) and y.dtype == np.float32
  assert builder.num_examples('val') == 3
