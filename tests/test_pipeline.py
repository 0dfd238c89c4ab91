"""DatasetBuilder on tiny hand-written records (independent of the writer)."""

import ast
import inspect
import os

import numpy as np
import pytest
import tensorflow as tf

from xray_tfdata import checks
from xray_tfdata import pipeline

from records import H, W, write_multilabel_dataset
from records import write_dataset as _write_dataset


@pytest.fixture()
def tiny(tmp_path):
  expected = _write_dataset(str(tmp_path))
  return str(tmp_path), expected


def test_info_and_class_weights(tiny):
  root, _ = tiny
  info = pipeline.DatasetBuilder(root).info
  assert info.class_names == ('NORMAL', 'PNEUMONIA')
  assert info.num_examples('train') == 14
  assert info.class_counts('train') == [5, 9]
  weights = info.class_weights('train')
  # 'balanced': n / (classes * count); equal total weight per class.
  assert weights[0] == pytest.approx(14 / (2 * 5))
  assert weights[1] == pytest.approx(14 / (2 * 9))
  assert weights[0] * 5 == pytest.approx(weights[1] * 9)


def test_eval_pass_is_exact_and_in_order(tiny):
  root, expected = tiny
  ds = pipeline.DatasetBuilder(root).as_dataset('train', with_metadata=True)
  got = list(ds.as_numpy_iterator())
  assert len(got) == len(expected['train'])
  names = [m['filename'].decode() for _, _, m in got]
  assert names == [name for _, _, name in expected['train']]
  for (image, label, _), (pixels, exp_label, _) in zip(got, expected['train']):
    assert image.dtype == np.uint8 and image.shape == (H, W, 1)
    np.testing.assert_array_equal(image[..., 0], pixels)
    # One label, PNEUMONIA: [1], 1.0 for the positive class.
    assert label.dtype == np.float32 and label.shape == (1,)
    assert label[0] == exp_label


def test_eval_batches_keep_remainder(tiny):
  root, _ = tiny
  builder = pipeline.DatasetBuilder(root)
  batches = list(builder.as_dataset('train', batch_size=4).as_numpy_iterator())
  assert [len(b[1]) for b in batches] == [4, 4, 4, 2]
  assert builder.steps_per_epoch('train', 4, training=False) == 4
  assert batches[0][0].dtype == np.uint8 and batches[0][0].shape == (4, H, W, 1)
  assert batches[0][1].dtype == np.float32 and batches[0][1].shape == (4, 1)


def test_training_pipeline_shuffles_repeats_and_drops_remainder(tiny):
  root, expected = tiny
  builder = pipeline.DatasetBuilder(root)
  ds = builder.as_dataset('train', batch_size=4, training=True, seed=1,
                          repeat=True)
  steps = builder.steps_per_epoch('train', 4)
  assert steps == 3
  # 7 batches of 4 are exactly two passes over the 14 examples: repeat comes
  # after shuffle, so each pass is a permutation, and a new one.
  values = np.concatenate([b[0][:, 1, 1, 0].numpy() for b in ds.take(7)])
  first, second = values[:14], values[14:]
  assert sorted(first.tolist()) == list(range(14))
  assert sorted(second.tolist()) == list(range(14))
  assert not np.array_equal(first, second)
  assert not np.array_equal(first, np.arange(14))


def test_labels_follow_images_through_the_shuffle(tiny):
  root, expected = tiny
  label_of_value = {i: label for i, (_, label, _) in enumerate(expected['train'])}
  ds = pipeline.DatasetBuilder(root).as_dataset('train', batch_size=5,
                                                 training=True, seed=3,
                                                 repeat=True)
  for images, labels in ds.take(6):
    for value, label in zip(images[:, 1, 1, 0].numpy(), labels.numpy()):
      assert label.shape == (1,) and label_of_value[int(value)] == label[0]


def test_input_context_shards_by_file(tiny):
  root, expected = tiny
  builder = pipeline.DatasetBuilder(root)
  seen = []
  for pipeline_id in range(3):
    ctx = tf.distribute.InputContext(num_input_pipelines=3,
                                     input_pipeline_id=pipeline_id)
    ds = builder.as_dataset('train', input_context=ctx, with_metadata=True)
    seen.append({m['filename'].decode() for _, _, m in ds.as_numpy_iterator()})
  assert sum(len(s) for s in seen) == len(expected['train'])
  assert set.union(*seen) == {name for _, _, name in expected['train']}


def test_resize_on_purpose(tiny):
  root, _ = tiny
  builder = pipeline.DatasetBuilder(root)
  with pytest.raises(pipeline.DatasetError, match='stored at 12x10'):
    builder.as_dataset('val', image_size=(24, 20))
  images, _ = next(iter(builder.as_dataset('val', batch_size=2,
                                            image_size=(24, 20), resize=True)))
  assert images.shape == (2, 24, 20, 1) and images.dtype == tf.uint8


@pytest.mark.parametrize('kwargs, message', [
    ({'split': 'test'}, "split 'test' is not in"),
    ({'split': 'train', 'batch_size': 0}, 'batch_size must be at least 1'),
    # Before, a raw TensorFlow TypeError from batch().
    ({'split': 'train', 'batch_size': 2.5},
     'batch_size must be at least 1, a whole number of examples; got 2.5'),
    ({'split': 'train', 'batch_size': True}, 'got True'),
])
def test_bad_requests(tiny, kwargs, message):
  root, _ = tiny
  with pytest.raises(pipeline.DatasetError, match=message):
    pipeline.DatasetBuilder(root).as_dataset(**kwargs)


@pytest.mark.parametrize('batch_size', [0, -3, 2.5, '4'])
def test_steps_per_epoch_refuses_a_bad_batch_size(tiny, batch_size):
  """Before, 0 raised ZeroDivisionError."""
  root, _ = tiny
  builder = pipeline.DatasetBuilder(root)
  with pytest.raises(pipeline.DatasetError, match='batch_size must be at '
                     f'least 1.*got {batch_size!r}'):
    builder.steps_per_epoch('train', batch_size)
  # 14 examples: 3 full batches of 4 when training, 4 with the partial one.
  assert builder.steps_per_epoch('train', 4) == 3
  assert builder.steps_per_epoch('train', np.int64(4), training=False) == 4


def _stored_labels(root, split):
  """Labels as the records store them, read without the pipeline."""
  labels = []
  for name in sorted(os.listdir(root)):
    if f'-{split}.tfrecord' in name:
      for record in tf.data.TFRecordDataset(os.path.join(root, name)):
        example = tf.train.Example.FromString(record.numpy())
        labels.append(example.features.feature['label'].int64_list.value[0])
  return labels


def test_positive_class_relabels_and_reorders_the_classes(tiny):
  root, _ = tiny
  stored = _stored_labels(root, 'train')
  default = pipeline.DatasetBuilder(root)
  same = pipeline.DatasetBuilder(root, positive_class='PNEUMONIA')
  flipped = pipeline.DatasetBuilder(root, positive_class='NORMAL')
  assert default.info.class_names == same.info.class_names == (
      'NORMAL', 'PNEUMONIA')
  assert flipped.info.class_names == ('PNEUMONIA', 'NORMAL')

  def labels(builder):
    return [int(y[0]) for _, y in
            builder.as_dataset('train').as_numpy_iterator()]

  assert labels(default) == labels(same) == stored
  assert labels(flipped) == [1 - y for y in stored]
  # The one label is named by the positive class.
  assert default.label_names() == same.label_names() == ('PNEUMONIA',)
  assert flipped.label_names() == ('NORMAL',)
  # Counts and 'balanced' weights follow the new ids: NORMAL (5 of 14) is
  # now id 1.
  assert flipped.info.class_counts('train') == [9, 5]
  assert flipped.info.class_weights('train') == pytest.approx(
      {0: 14 / (2 * 9), 1: 14 / (2 * 5)})
  with pytest.raises(pipeline.DatasetError,
                     match="positive_class 'COVID' is not one of the two "
                     'classes .*NORMAL, PNEUMONIA.*--positive_class=PNEUMONIA'):
    pipeline.DatasetBuilder(root, positive_class='COVID')


def test_fingerprint_follows_the_shards_not_the_conversion_time(tmp_path):
  first, again, other = (str(tmp_path / name) for name in ('a', 'b', 'c'))
  for root in (first, again, other):
    os.makedirs(root)
  _write_dataset(first)
  _write_dataset(again)  # the same images
  _write_dataset(other, learnable=True)  # other images, same counts
  fingerprints = [pipeline.DatasetBuilder(root).info.fingerprint()
                  for root in (first, again, other)]
  assert fingerprints[0] == fingerprints[1] != fingerprints[2]
  summary = pipeline.DatasetBuilder(first).info.summary()
  assert summary['splits']['train']['num_examples'] == 14
  assert summary['splits']['train']['num_bytes'] == sum(
      os.path.getsize(os.path.join(first, name)) for name in os.listdir(first)
      if '-train.tfrecord' in name)


def test_missing_info_names_the_fix(tmp_path):
  with pytest.raises(pipeline.DatasetError, match='does not exist'):
    pipeline.DatasetBuilder(str(tmp_path / 'nowhere'))
  with pytest.raises(pipeline.DatasetError, match='run tools/make_tfrecords'):
    pipeline.DatasetBuilder(str(tmp_path))


def test_truncated_shard_is_named(tiny):
  root, _ = tiny
  builder = pipeline.DatasetBuilder(root)
  path = builder.shard_paths('train')[1]
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(pipeline.DatasetError, match=os.path.basename(path)):
    builder.as_dataset('train')


def test_corrupt_shard_is_named_by_verify(tiny):
  root, _ = tiny
  builder = pipeline.DatasetBuilder(root)
  path = builder.shard_paths('val')[2]
  with open(path, 'r+b') as f:
    f.seek(40)
    byte = f.read(1)
    f.seek(40)
    f.write(bytes([byte[0] ^ 0xFF]))  # same size, bad CRC
  assert builder.verify('train') == 14
  with pytest.raises(pipeline.DatasetError, match=os.path.basename(path)):
    builder.verify('val')


def test_eval_cardinality_is_known(tiny):
  root, _ = tiny
  builder = pipeline.DatasetBuilder(root)
  assert builder.as_dataset('train').cardinality() == 14
  assert builder.as_dataset('train', batch_size=4).cardinality() == 4
  # Training is finite too (one pass, remainder dropped) unless repeat=True.
  assert builder.as_dataset('train', batch_size=4, training=True).cardinality() == 3
  assert builder.as_dataset('train', batch_size=4, training=True,
                            repeat=True).cardinality() == tf.data.INFINITE_CARDINALITY


def test_training_pass_is_finite_and_reshuffled_each_iteration(tiny):
  root, _ = tiny
  ds = pipeline.DatasetBuilder(root).as_dataset('train', training=True, seed=2)
  passes = [[int(image[1, 1, 0]) for image, _ in ds.as_numpy_iterator()]
            for _ in range(2)]
  # Each iteration is one whole pass, in a new order (a new epoch in fit).
  assert [sorted(p) for p in passes] == [list(range(14))] * 2
  assert passes[0] != passes[1]


def test_fit_without_steps_per_epoch_runs_every_epoch(tiny):
  """tfds' habit: fit(ds, epochs=N) on a finite dataset, no steps_per_epoch."""
  import keras  # pylint: disable=g-import-not-at-top
  root, _ = tiny
  builder = pipeline.DatasetBuilder(root)
  ds = builder.as_dataset('train', batch_size=4, training=True, seed=0)
  net = keras.Sequential([keras.Input((H, W, 1)), keras.layers.Flatten(),
                          keras.layers.Rescaling(1 / 255),
                          keras.layers.Dense(1, activation='sigmoid')])
  net.compile('sgd', 'binary_crossentropy')
  history = net.fit(ds, epochs=2, validation_data=builder.as_dataset('val', 4),
                    shuffle=False, verbose=0)
  assert len(history.history['loss']) == 2
  assert len(history.history['val_loss']) == 2


def test_reads_datasets_converted_before_format_2(tmp_path):
  """Format 1: the old feature keys (written by records.py under their
  literal names, not schema's), our metadata in dataset_info.json; every
  split's labels read back as written."""
  expected = _write_dataset(str(tmp_path), format_version=1)
  builder = pipeline.DatasetBuilder(str(tmp_path))
  assert builder.info.format_version == 1
  for split in expected:
    labels = [int(y[0]) for _, y in
              builder.as_dataset(split).as_numpy_iterator()]
    assert labels == [label for _, label, _ in expected[split]], split
    assert set(labels) == {0, 1}
  got = list(builder.as_dataset('val', with_metadata=True).as_numpy_iterator())
  assert [(int(image[1, 1, 0]), label[0], m['filename'].decode())
          for image, label, m in got] == [
              (int(pixels[1, 1]), label, name)
              for pixels, label, name in expected['val']]
  assert builder.verify('val') == 5


def test_tfds_dataset_of_another_origin_is_named(tmp_path):
  (tmp_path / 'dataset_info.json').write_text('{"name": "mnist"}')
  with pytest.raises(pipeline.DatasetError, match='tfds.builder_from_directory'):
    pipeline.DatasetBuilder(str(tmp_path))


def _ops(ds):
  """The dataset graph's nodes, by op name."""
  graph = tf.compat.v1.GraphDef.FromString(ds._as_serialized_graph().numpy())  # pylint: disable=protected-access
  return {node.name: node for node in graph.node}


def _shuffle_buffer(ds):
  """The example shuffle's buffer size (not the shard list's shuffle)."""
  nodes = _ops(ds)
  shuffles = [n for n in nodes.values() if n.op.startswith('ShuffleDataset')
              and nodes[n.input[0].split(':')[0]].op != 'TensorSliceDataset']
  assert len(shuffles) == 1
  const = nodes[shuffles[0].input[1].split(':')[0]]
  return tf.make_ndarray(const.attr['value'].tensor).item()


def _has_cache(ds):
  return any(n.op.startswith('CacheDataset') for n in _ops(ds).values())


def test_read_config_and_its_keywords_build_the_same_pipeline(tiny):
  root, _ = tiny
  builder = pipeline.DatasetBuilder(root)
  config = pipeline.ReadConfig(cache=False, shuffle_buffer=5)
  by_config = builder.as_dataset('train', 4, training=True, read_config=config)
  by_keywords = builder.as_dataset('train', 4, training=True, cache=False,
                                   shuffle_buffer=5)
  for ds in (by_config, by_keywords):
    assert not _has_cache(ds) and _shuffle_buffer(ds) == 5
  # A keyword overrides the same field of read_config.
  ds = builder.as_dataset('train', 4, training=True, read_config=config,
                          cache=True)
  assert _has_cache(ds) and _shuffle_buffer(ds) == 5
  with pytest.raises(TypeError, match='shuffle_bufer'):
    builder.as_dataset('train', shuffle_bufer=5)


def test_shuffle_buffer_holds_the_split_only_when_cached(tiny, monkeypatch):
  root, _ = tiny
  builder = pipeline.DatasetBuilder(root)
  # 14 examples of H*W bytes; a cap of 3 examples' worth.
  monkeypatch.setattr(pipeline, 'UNCACHED_SHUFFLE_BUFFER_BYTES', 3 * H * W + 1)
  cached = builder.as_dataset('train', training=True)
  assert _has_cache(cached) and _shuffle_buffer(cached) == 14
  uncached = builder.as_dataset('train', training=True, cache=False)
  assert not _has_cache(uncached) and _shuffle_buffer(uncached) == 3
  values = sorted(int(image[1, 1, 0]) for image, _ in uncached)
  assert values == list(range(14))  # a smaller buffer, still every example


@pytest.mark.parametrize('cache, decoded_bytes, service, expected', [
    ('auto', pipeline.DEFAULT_CACHE_LIMIT_BYTES, None, 'memory'),
    ('auto', pipeline.DEFAULT_CACHE_LIMIT_BYTES + 1, None, 'none'),
    ('auto', 1, 'localhost:5050', 'none'),
    (True, pipeline.DEFAULT_CACHE_LIMIT_BYTES * 2, 'localhost:5050', 'memory'),
    (False, 1, None, 'none'),
])
def test_choose_cache(cache, decoded_bytes, service, expected):
  # Without a cache_dir (tests/test_cache.py has the disk cache).
  config = pipeline.ReadConfig(cache=cache, data_service=service)
  assert pipeline._choose_cache(config, decoded_bytes, None).kind == expected  # pylint: disable=protected-access


def test_three_channels_repeat_the_grey_one(tiny):
  import keras  # pylint: disable=g-import-not-at-top
  root, _ = tiny
  builder = pipeline.DatasetBuilder(root)
  kwargs = dict(batch_size=4, image_size=32, resize=True, with_metadata=True)
  grey = list(builder.as_dataset('val', **kwargs).as_numpy_iterator())
  rgb = list(builder.as_dataset(
      'val', read_config=pipeline.ReadConfig(channels=3),
      **kwargs).as_numpy_iterator())
  assert len(rgb) == len(grey) == 2
  for (grey_images, grey_labels, grey_meta), (images, labels, meta) in zip(
      grey, rgb):
    assert images.dtype == np.uint8 and images.shape[-1] == 3
    np.testing.assert_array_equal(images, np.repeat(grey_images, 3, axis=-1))
    np.testing.assert_array_equal(labels, grey_labels)
    assert list(meta['filename']) == list(grey_meta['filename'])
  # What keras.applications models other than our VGG16 builder take.
  net = keras.applications.MobileNet(input_shape=(32, 32, 3), alpha=0.25,
                                     weights=None, classes=2)
  assert net(rgb[0][0].astype('float32')).shape == (4, 2)
  with pytest.raises(pipeline.DatasetError, match='channels must be 1 or 3'):
    builder.as_dataset('val', channels=2)


def test_evaluation_sharded_by_data_without_warnings(tiny, caplog):
  """distribute.shard_by_batch on our evaluation datasets (the trainer
  validates and predicts through it) logged "Changing the value of option
  auto_shard_policy from FILE to DATA" each time."""
  from xray_tfdata import distribute  # pylint: disable=g-import-not-at-top
  root, _ = tiny
  builder = pipeline.DatasetBuilder(root)
  policy = tf.data.experimental.AutoShardPolicy
  # tf.data logs through absl, which hands its records to Python logging.
  with caplog.at_level('WARNING'):
    val = distribute.shard_by_batch(builder.as_dataset('val', 4))
    # As training.predict_split does it.
    images = distribute.shard_by_batch(
        builder.as_dataset('train', 4).map(lambda x, y: x))
    changes = [r.getMessage() for r in caplog.records
               if 'Changing the value of option' in r.getMessage()]
    assert not changes
    # The check itself can fail: a real change of policy is logged.
    distribute.shard_by_batch(builder.as_dataset('train', 4, training=True))
    assert any('auto_shard_policy' in r.getMessage() for r in caplog.records)
  for ds in (val, images):
    assert ds.options().experimental_distribute.auto_shard_policy == policy.DATA
  train = builder.as_dataset('train', 4, training=True).options()
  assert train.experimental_distribute.auto_shard_policy == policy.FILE
  off = builder.as_dataset('train', 4, training=True,
                           auto_shard_policy=policy.OFF)
  assert off.options().experimental_distribute.auto_shard_policy == policy.OFF


_SHARD_BY_BATCH_SCRIPT = '''
import sys
from records import write_dataset
from xray_tfdata import distribute, pipeline
write_dataset(sys.argv[1])
builder = pipeline.DatasetBuilder(sys.argv[1])
# As training.py validates and predicts.
for _ in distribute.shard_by_batch(builder.as_dataset('val', 4)):
  pass
for _ in distribute.shard_by_batch(
    builder.as_dataset('train', 4).map(lambda x, y: x)):
  pass
print('CHECK', file=sys.stderr, flush=True)
train = builder.as_dataset('train', 4, training=True)
for _ in distribute.shard_by_batch(train):
  pass
'''


@pytest.mark.slow
def test_no_auto_shard_warnings_from_python_or_cpp(tmp_path):
  """Both tf.data's Python warning and its C++ one (dataset.cc), with
  TensorFlow's C++ logging on, in a process of its own."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  tests = os.path.dirname(os.path.abspath(__file__))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='0',
             PYTHONPATH=os.pathsep.join(
                 [os.path.dirname(tests), tests,
                  os.environ.get('PYTHONPATH', '')]))
  result = subprocess.run(
      [sys.executable, '-c', _SHARD_BY_BATCH_SCRIPT, str(tmp_path)],
      env=env, capture_output=True, text=True, timeout=120, check=True)
  ours, check = result.stderr.split('CHECK\n')
  assert 'Changing the value of option' not in ours, ours
  # A real change of policy (a training dataset) is still reported.
  assert 'Changing the value of option' in check, result.stderr


def test_dataset_builder_stays_under_300_lines():
  """Issue 23: the builder reads as a list of stages; selection, shard
  checks and stateless stages live in modules and functions of their own."""
  with open(inspect.getsourcefile(pipeline), encoding='utf-8') as f:
    tree = ast.parse(f.read())
  [builder] = [node for node in tree.body if isinstance(node, ast.ClassDef)
               and node.name == 'DatasetBuilder']
  assert builder.end_lineno - builder.lineno + 1 < 300


# Multi-label records: policies, label selection, views. The expected
# targets come from a table written out here, not from xray_tfdata.labels.

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


def test_label_methods_keep_their_records_with_the_method_in_metadata(
    tmp_path):
  rows = _rows(11, 3)
  methods = ['Physician' if i % 3 == 0 else 'RNN_model' for i in range(11)]
  root = str(tmp_path)
  expected = write_multilabel_dataset(
      root, LABEL_NAMES, {'train': rows, 'test': rows}, num_shards=2,
      label_methods={'train': methods, 'test': methods})
  builder = pipeline.DatasetBuilder(root)
  kept = [e for e, method in zip(expected['test'], methods)
          if method == 'Physician']
  _, targets, metadata = _read(builder, 'test', label_methods=['Physician'],
                               label_policy='u_zeros')
  assert [(m['filename'].decode(), m['label_method'].decode())
          for m in metadata] == [(e['filename'], 'Physician') for e in kept]
  np.testing.assert_array_equal(
      targets, [[POLICY_TARGETS['u_zeros'][c] for c in e['codes']]
                for e in kept])
  ds = builder.as_dataset('train', 2, training=True, seed=0,
                          label_methods=['Physician'])
  assert len(list(ds)) == builder.steps_per_epoch(
      'train', 2, label_methods=['Physician']) == len(kept) // 2
  # Unfiltered, every record says its method.
  _, _, metadata = _read(builder, 'test')
  assert [m['label_method'].decode() for m in metadata] == methods


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


@pytest.fixture(params=['class', 'multilabel'])
def any_dataset(request, tmp_path):
  """A class dataset (L = 1) and a multi-label one (L = 3), with the label
  names and the [N, L] targets written into their records."""
  if request.param == 'class':
    expected = _write_dataset(str(tmp_path), {'train': (2, 3), 'val': (1, 2)})
    targets = [[float(label)] for _, label, _ in expected['val']]
    return str(tmp_path), ('PNEUMONIA',), targets
  expected = write_multilabel_dataset(
      str(tmp_path), LABEL_NAMES, {'train': _rows(6, 0), 'val': _rows(5, 1)})
  targets = [[POLICY_TARGETS['u_ones'][c] for c in e['codes']]
             for e in expected['val']]
  return str(tmp_path), LABEL_NAMES, targets


def test_every_dataset_reads_targets_of_its_label_names(any_dataset):
  """One label form from the reader on: float32 [B, L], L = the label
  names (a class dataset's one label is its positive class), single
  examples [L]; those names can be asked for."""
  root, names, want = any_dataset
  builder = pipeline.DatasetBuilder(root)
  assert builder.label_names() == names
  ys = [y for _, y in builder.as_dataset('val', 3).as_numpy_iterator()]
  assert all(y.dtype == np.float32 and y.shape[1:] == (len(names),)
             for y in ys)
  np.testing.assert_array_equal(np.concatenate(ys), want)
  _, y = next(builder.as_dataset('val').as_numpy_iterator())
  assert y.shape == (len(names),)
  _, y = next(builder.as_dataset('val', 2, labels=names[-1:])
              .as_numpy_iterator())
  np.testing.assert_array_equal(y, np.array(want)[:2, -1:])
  with pytest.raises(pipeline.DatasetError, match=r'--labels=NAME,NAME'):
    builder.as_dataset('val', 2, labels=('COVID',))


def test_class_datasets_refuse_views_in_one_line(tmp_path):
  """Class records store no view: --views names what is not there."""
  _write_dataset(str(tmp_path), {'train': (2, 3), 'val': (1, 2)})
  builder = pipeline.DatasetBuilder(str(tmp_path))
  with pytest.raises(pipeline.DatasetError,
                     match='class dataset, whose records store no view: '
                     'leave --views empty'):
    builder.as_dataset('val', 2, views=('PA',))
  assert builder.num_examples('val') == 3
