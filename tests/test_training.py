"""train_and_evaluate on tiny records: results, resume state, bad input."""

import json
import os

import numpy as np
import pytest

from records import write_dataset
from xray_tfdata import evaluation
from xray_tfdata import pipeline
from xray_tfdata import training

SIZE = 32


def tiny_config(data_dir, **overrides):
  """The seed's settings shrunk: 32 px, small head, weights none."""
  config = training.TrainConfig(
      data_dir=data_dir, image_size=SIZE, batch_size=8, epochs=2,
      weights='none', dense_units=(16, 8), bootstrap_resamples=200,
      verbose=0)
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('records'))
  write_dataset(root, {'train': (10, 14), 'val': (5, 6), 'test': (6, 5)},
                num_shards=2, size=(SIZE, SIZE), learnable=True)
  return root


@pytest.fixture(scope='module')
def finished_run(data_dir, tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp('run') / 'model')
  results = training.train_and_evaluate(tiny_config(data_dir), model_dir)
  return model_dir, results


def test_run_writes_a_complete_model_dir(finished_run):
  model_dir, results = finished_run
  for name in ('results.json', 'results.md', 'model.keras', 'config.json',
               'history.csv', training.BEST_WEIGHTS,
               os.path.join('serving', 'saved_model.pb')):
    assert os.path.exists(os.path.join(model_dir, name)), name
  assert not os.path.exists(os.path.join(model_dir, 'backup'))
  assert os.listdir(os.path.join(model_dir, 'logs'))  # TensorBoard events
  with open(os.path.join(model_dir, 'history.csv')) as f:
    rows = f.read().strip().splitlines()
  assert len(rows) == 1 + 2  # header + 2 epochs
  assert 'val_auc' in rows[0]
  with open(os.path.join(model_dir, 'results.json')) as f:
    assert json.load(f)['splits']['test']['n'] == 11
  assert results['training']['epochs_run'] == 2


def test_results_agree_with_an_independent_evaluation(finished_run, data_dir):
  """Reload model.keras, predict every split, recount by hand."""
  import keras  # pylint: disable=g-import-not-at-top
  model_dir, results = finished_run
  net = keras.saving.load_model(os.path.join(model_dir, 'model.keras'))
  builder = pipeline.DatasetBuilder(data_dir)
  for split, n in (('train', 24), ('val', 11), ('test', 11)):
    images, labels = zip(*builder.as_dataset(split).as_numpy_iterator())
    probs = net.predict(np.stack(images), verbose=0).reshape(-1)
    predicted = probs >= 0.5
    labels = np.array(labels).astype(bool)
    got = results['splits'][split]
    assert got['tp'] == int(np.sum(predicted & labels))
    assert got['fp'] == int(np.sum(predicted & ~labels))
    assert got['tn'] == int(np.sum(~predicted & ~labels))
    assert got['fn'] == int(np.sum(~predicted & labels))
    assert got['tp'] + got['fp'] + got['tn'] + got['fn'] == n
    assert got['auc'] == pytest.approx(
        evaluation.roc_auc(labels.astype(int), probs), abs=1e-6)
  low, high = results['test_auc_ci95']
  assert low <= results['splits']['test']['auc'] <= high
  with open(os.path.join(model_dir, 'results.md')) as f:
    table = f.read()
  for split in ('train', 'val', 'test'):
    assert f'{results["splits"][split]["auc"]:.4f}' in table


def test_serving_model_reads_encoded_images(finished_run, data_dir, tmp_path):
  import keras  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  model_dir, _ = finished_run
  builder = pipeline.DatasetBuilder(data_dir)
  images, _ = next(iter(builder.as_dataset('test', batch_size=3)))
  paths = []
  for i, image in enumerate(images.numpy()):
    path = str(tmp_path / f'{i}.png')
    Image.fromarray(image[..., 0]).save(path)
    paths.append(path)
  served = training.predict_files(os.path.join(model_dir, 'serving'), paths)
  net = keras.saving.load_model(os.path.join(model_dir, 'model.keras'))
  direct = net.predict(images, verbose=0).reshape(-1)
  np.testing.assert_allclose(served, direct, atol=1e-5)


def test_finished_run_is_not_overwritten(finished_run, data_dir):
  model_dir, _ = finished_run
  with pytest.raises(training.TrainingError, match='already holds a finished'):
    training.train_and_evaluate(tiny_config(data_dir), model_dir)


def test_resume_continues_from_the_last_finished_epoch(
    data_dir, tmp_path, monkeypatch):
  """A run killed after epoch 1 was saved resumes at epoch 2, with the
  early-stopping and checkpoint state it had."""
  model_dir = str(tmp_path / 'model')
  config = tiny_config(data_dir, epochs=3)

  class Killed(Exception):
    pass

  save = training.ResumeCallback.on_epoch_end

  def save_then_die(self, epoch, logs=None):
    save(self, epoch, logs)
    if epoch == 0:
      raise Killed()

  monkeypatch.setattr(training.ResumeCallback, 'on_epoch_end', save_then_die)
  with pytest.raises(Killed):
    training.train_and_evaluate(config, model_dir)
  monkeypatch.setattr(training.ResumeCallback, 'on_epoch_end', save)
  assert not os.path.exists(os.path.join(model_dir, 'results.json'))
  state = training.ResumeState(os.path.join(model_dir, 'backup'))
  assert state.epoch() == 1
  with open(state.meta_path) as f:
    saved_best = json.load(f)['early_stopping']['best']
  assert np.isfinite(saved_best)

  restored = {}
  begin = training.ResumeCallback.on_train_begin

  def record(self, logs=None):
    begin(self, logs)
    restored['best'] = self.early_stopping.best
    restored['initial_epoch'] = state.epoch()

  monkeypatch.setattr(training.ResumeCallback, 'on_train_begin', record)
  results = training.train_and_evaluate(config, model_dir)
  assert restored == {'best': saved_best, 'initial_epoch': 1}
  assert results['training']['epochs_run'] == 3
  with open(os.path.join(model_dir, 'history.csv')) as f:
    epochs = [row.split(',')[0] for row in f.read().strip().splitlines()[1:]]
  assert epochs == ['0', '1', '2']  # epoch 0 was not trained twice


def test_other_settings_refuse_to_resume(data_dir, tmp_path):
  model_dir = str(tmp_path / 'model')
  training.prepare_model_dir(model_dir, tiny_config(data_dir))
  with pytest.raises(training.TrainingError, match='learning_rate'):
    training.prepare_model_dir(model_dir,
                               tiny_config(data_dir, learning_rate=1e-3))
  assert training.prepare_model_dir(model_dir, tiny_config(data_dir))


@pytest.mark.parametrize('overrides, error, message', [
    ({'batch_size': 0}, training.TrainingError, 'batch_size must be positive'),
    ({'learning_rate': -1.0}, training.TrainingError,
     'learning_rate must be positive'),
    ({'weights': '/nowhere/vgg16.h5'}, training.TrainingError,
     '/nowhere/vgg16.h5 does not exist'),
    ({'image_size': 64}, training.TrainingError, 'stored at 32x32'),
    ({'data_dir': '/nowhere'}, pipeline.DatasetError, 'does not exist'),
])
def test_bad_settings_fail_before_anything_is_written(
    data_dir, tmp_path, overrides, error, message):
  model_dir = str(tmp_path / 'model')
  overrides = dict(overrides)
  config = tiny_config(overrides.pop('data_dir', data_dir), **overrides)
  with pytest.raises(error, match=message):
    training.train_and_evaluate(config, model_dir)
  assert not os.path.exists(model_dir)


def test_missing_split_fails_before_training(tmp_path):
  root = str(tmp_path / 'data')
  os.makedirs(root)
  write_dataset(root, {'train': (4, 4), 'val': (2, 2)}, num_shards=1,
                size=(SIZE, SIZE))
  with pytest.raises(pipeline.DatasetError, match="split 'test' is not in"):
    training.train_and_evaluate(tiny_config(root), str(tmp_path / 'model'))
  assert not os.path.exists(str(tmp_path / 'model'))
