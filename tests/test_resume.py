"""Resume state (xray_tfdata.resume): what a resumed run restores."""

import os

import keras
import pytest

from xray_tfdata import resume

import relabel

PATIENCE = 3
# val_loss per epoch: best at epoch 0, then two epochs without improvement
# (the run is killed after epoch 2), then a third: patience runs out.
VAL_LOSSES = [0.5, 0.7, 0.8, 0.9, 0.95]
KILLED_AFTER = 2


def _model():
  net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  net.compile(keras.optimizers.Adam(1e-3), 'mse')
  net.optimizer.build(net.trainable_variables)
  return net


def _callbacks(net, tmp_path):
  """The run's early stopping, best checkpoint and resume callback, as
  callbacks.make_callbacks wires them (resume state last)."""
  early_stopping = keras.callbacks.EarlyStopping(monitor='val_loss',
                                                 patience=PATIENCE)
  os.makedirs(tmp_path / 'checkpoints', exist_ok=True)
  checkpoint = keras.callbacks.ModelCheckpoint(
      str(tmp_path / 'checkpoints' / 'new-best.weights.h5'),
      monitor='val_loss', save_best_only=True, save_weights_only=True)
  state = resume.ResumeState(str(tmp_path / 'backup'))
  resumer = state.callback(net, early_stopping, checkpoint,
                           str(tmp_path / 'checkpoints' / 'best.weights.h5'))
  made = [early_stopping, checkpoint, resumer]
  for callback in made:
    callback.set_model(net)
  return made


def _run(made, epochs, resumer_saves=True):
  """fit's callback calls for `epochs`: train begin, then epoch ends with
  VAL_LOSSES; with resumer_saves False the last epoch's end never reaches
  the resume callback (killed while the others ran)."""
  for callback in made:
    callback.on_train_begin()
  for epoch in epochs:
    logs = {'loss': 0.1, 'val_loss': VAL_LOSSES[epoch]}
    for callback in made[:-1]:
      callback.on_epoch_end(epoch, logs)
    if resumer_saves or epoch != epochs[-1]:
      made[-1].on_epoch_end(epoch, logs)
    if made[0].model.stop_training:
      return epoch
  return None


def _snapshot(early_stopping, checkpoint):
  return {'wait': early_stopping.wait, 'best': early_stopping.best,
          'best_epoch': early_stopping.best_epoch,
          'checkpoint_best': checkpoint.best}


def test_a_resumed_run_restores_patience_and_best_val_loss(tmp_path):
  """A run killed after epoch 2 (its state saved), rerun with fresh
  callbacks: EarlyStopping's wait, best and best_epoch and the checkpoint's
  best are those the killed run held after epoch 2 (wait 2, not 0; best
  0.5, not inf), and the resumed run stops after the same epoch as an
  uninterrupted one (the reference: the same callbacks never killed)."""
  net = _model()
  killed = _callbacks(net, tmp_path / 'killed')
  assert _run(killed, range(KILLED_AFTER + 1)) is None
  saved = _snapshot(*killed[:2])
  assert saved == {'wait': 2, 'best': 0.5, 'best_epoch': 0,
                   'checkpoint_best': 0.5}

  net.stop_training = False
  resumed = _callbacks(net, tmp_path / 'killed')  # the rerun's own objects
  for callback in resumed[:2]:
    callback.on_train_begin()  # Keras resets them here
  assert resumed[0].wait == 0 and resumed[0].best != saved['best']
  resumed[-1].on_train_begin()  # last: restores them
  assert _snapshot(*resumed[:2]) == saved

  # Go on from epoch 3, as fit(initial_epoch=3) does.
  for callback in resumed:
    callback.on_train_begin = lambda logs=None: None  # already begun
  stopped = _run(resumed, range(KILLED_AFTER + 1, len(VAL_LOSSES)))
  net.stop_training = False
  reference = _callbacks(_model(), tmp_path / 'reference')
  assert stopped == _run(reference, range(len(VAL_LOSSES))) == PATIENCE


def test_the_state_of_the_last_saved_epoch_wins_over_a_killed_one(tmp_path):
  """Killed during epoch 3's end, after EarlyStopping counted it but before
  its state was saved: the rerun restores epoch 2's wait, not epoch 3's."""
  net = _model()
  killed = _callbacks(net, tmp_path)
  assert _run(killed, range(KILLED_AFTER + 2),
              resumer_saves=False) == KILLED_AFTER + 1
  assert killed[0].wait == 3
  resumed = _callbacks(net, tmp_path)
  for callback in resumed:
    callback.on_train_begin()
  assert resume.ResumeState(str(tmp_path / 'backup')).epoch() == 3
  assert resumed[0].wait == 2 and resumed[0].best == pytest.approx(0.5)
  assert resumed[1].best == pytest.approx(0.5)


@pytest.fixture(scope='module')
def relabelled(tmp_path_factory):
  """(data_dir, {case: DatasetInfo}): relabel's source converted into one
  data_dir as it is ('original') and then relabelled each way; each info
  read just after its conversion."""
  from xray_tfdata import dataset_info  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.mktemp('relabel')
  root = str(base / 'data')
  infos = {}
  for case, rows in [('original', relabel.ROWS), *relabel.CASES.items()]:
    relabel.convert(str(base / 'src'), root, rows)
    infos[case] = dataset_info.load_info(root)
  return root, infos


@pytest.mark.parametrize('case', sorted(relabel.CASES))
def test_a_run_on_a_relabelled_dataset_is_not_resumed(relabelled, tmp_path,
                                                      case):
  """Issue 32: a killed run's data_dir converted again with other labels
  (shard names, sizes and counts kept) refuses the resume in one line and
  leaves config.json as it was."""
  from xray_tfdata import config as config_lib  # pylint: disable=g-import-not-at-top
  root, infos = relabelled
  model_dir = str(tmp_path / 'model')
  config = config_lib.TrainConfig(data_dir=root)
  assert not resume.prepare_model_dir(model_dir, config,
                                      dataset=infos['original'])
  config_json = os.path.join(model_dir, resume.CONFIG_JSON)
  with open(config_json) as f:
    recorded = f.read()
  with pytest.raises(config_lib.TrainingError) as caught:
    resume.prepare_model_dir(model_dir, config, dataset=infos[case])
  message = str(caught.value)
  assert '\n' not in message
  assert f'{model_dir} holds an unfinished run on another dataset' in message
  assert 'its records hold other labels or images (content hash ' in message
  assert '--overwrite' in message
  with open(config_json) as f:
    assert f.read() == recorded  # nothing lost
  # The dataset it started on resumes.
  assert resume.prepare_model_dir(model_dir, config,
                                  dataset=infos['original'])
