"""tools/evaluate on multi-label datasets (issues 19 and 21): a model of one
label set scored on a dataset of another, labels matched by name; the
pointing game on a dataset with boxes."""

import io
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
from sklearn import metrics

from xray_tfdata import checks
from xray_tfdata import dataset_info
from xray_tfdata import labels as labels_lib
from xray_tfdata import pipeline
from xray_tfdata import schema
from xray_tfdata import scoring

SIZE = 16
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NIH = ('Effusion', 'Pleural_Thickening', 'Cardiomegaly', 'Mass')
CHEXPERT = ('Pleural Effusion', 'Cardiomegaly', 'Edema')


def _png(pixels):
  buffer = io.BytesIO()
  Image.fromarray(pixels, mode='L').save(buffer, format='PNG')
  return buffer.getvalue()


def write_multilabel(root, label_names, split_sizes, seed, images_per_patient=3):
  """A tiny multi-label dataset: image i's brightness in quarter q is
  its label q's signal, so a model of per-quarter means scores it.

  Returns:
    {split: (codes int [N, L], images uint8 [N, S, S, 1], patient ids)}.
  """
  rng = np.random.default_rng(seed)
  os.makedirs(root)
  splits, written = {}, {}
  for split, n in split_sizes.items():
    codes = rng.choice(schema.LABEL_CODES, (n, len(label_names)),
                       p=(0.35, 0.45, 0.1, 0.1))
    images = rng.integers(40, 90, (n, SIZE, SIZE)).astype(np.uint8)
    for i in range(n):
      for q in range(min(len(label_names), 4)):
        if codes[i, q] in (schema.POSITIVE, schema.UNCERTAIN):
          r, c = divmod(q, 2)
          images[i, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += np.uint8(
              rng.integers(20, 120))
    ids = [f'{split}-p{i // images_per_patient}' for i in range(n)]
    name = schema.shard_filename('tiny', split, 0, 1)
    with tf.io.TFRecordWriter(os.path.join(root, name)) as writer:
      for i in range(n):
        writer.write(schema.encode_example(
            _png(images[i]), SIZE, SIZE, None, None, f'{split}/{i}.png',
            ids[i], SIZE, SIZE, labels=codes[i].tolist(),
            view='PA' if i % 2 else 'AP', sex='F' if i % 3 else 'M',
            age_years=20 + i % 60))
    splits[split] = {
        'num_examples': n,
        'class_counts': {l: int((codes[:, j] == 1).sum())
                         for j, l in enumerate(label_names)},
        'label_code_counts': {
            l: {str(c): int((codes[:, j] == c).sum())
                for c in schema.LABEL_CODES}
            for j, l in enumerate(label_names)},
        'shards': [{'filename': name, 'num_examples': n,
                    'num_bytes': os.path.getsize(os.path.join(root, name))}]}
    written[split] = (codes, images[..., None], np.array(ids))
  info = dataset_info.build_info(
      name='tiny', class_names=label_names, stored_size=(SIZE, SIZE),
      resize_filter='box', splits=splits, src_dir=root, layout='csv',
      arguments={}, split_counts=None,
      counts={'scanned': 0, 'written': 0, 'skipped': 0, 'duplicates': 0},
      skipped=[], duplicates=[], ignored=[], created='now',
      timing={'elapsed_seconds': 0, 'decode_write_seconds': 0},
      num_workers=1, label_names=label_names)
  with open(os.path.join(root, schema.INFO_FILENAME), 'w') as f:
    json.dump(info, f)
  return written


def quarter_model(num_outputs, bias=-0.3):
  """uint8 [S, S, 1] -> sigmoid(10 * (mean of quarter q / 255) + bias) for
  q < num_outputs: a 1x1 conv, so that Grad-CAM has a Conv2D."""
  import keras  # pylint: disable=g-import-not-at-top
  keras.mixed_precision.set_global_policy('float32')
  inputs = keras.Input((SIZE, SIZE, 1), dtype='uint8')
  x = keras.layers.Rescaling(1 / 255)(inputs)
  x = keras.layers.Conv2D(1, 1, kernel_initializer='ones',
                          bias_initializer='zeros')(x)
  x = keras.layers.AveragePooling2D(8)(x)  # [2, 2]: the four quarters
  x = keras.layers.Flatten()(x)
  kernel = np.zeros((4, num_outputs), np.float32)
  for q in range(num_outputs):
    kernel[q % 4, q] = 10.0
  outputs = keras.layers.Dense(
      num_outputs, activation='sigmoid', dtype='float32',
      kernel_initializer=keras.initializers.Constant(kernel),
      bias_initializer=keras.initializers.Constant(bias * 10))(x)
  return keras.Model(inputs, outputs)


def write_run(model_dir, net, data_dir, label_names=None, results=None):
  os.makedirs(model_dir, exist_ok=True)
  net.save(os.path.join(model_dir, scoring.MODEL_FILE))
  config = {'image_size': SIZE, 'batch_size': 8, 'data_dir': data_dir,
            'bootstrap_resamples': 50, 'seed': 0}
  if label_names:
    config.update(label_names=list(label_names), label_policy='u_ones')
  with open(os.path.join(model_dir, scoring.CONFIG_JSON), 'w') as f:
    json.dump(config, f)  # flat, as tools/train writes it
  with open(os.path.join(model_dir, scoring.RESULTS_JSON), 'w') as f:
    json.dump(results or {}, f, default=float)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('multilabel')
  nih = str(root / 'nih')
  chexpert = str(root / 'chexpert')
  nih_data = write_multilabel(nih, NIH, {'train': 12, 'val': 60, 'test': 60}, 0)
  chexpert_data = write_multilabel(chexpert, CHEXPERT,
                                   {'val': 60, 'test': 72}, 1)
  net = quarter_model(len(NIH))
  # The run's own evaluation, as training.evaluate_splits makes it (H3):
  # targets from the records under the run's policy.
  predictions = {}
  for split in ('val', 'test'):
    codes, images, _ = nih_data[split]
    predictions[split] = (labels_lib.apply_policy(codes, 'u_ones'),
                          net.predict(images, verbose=0).astype(np.float64))
  builder = pipeline.DatasetBuilder(nih)
  own = scoring.evaluate_dataset(builder, predictions, NIH, num_resamples=50,
                                 model_data=nih, label_policy='u_ones')
  model_dir = str(root / 'run')
  write_run(model_dir, net, nih, NIH, {'evaluation': own})
  return {'root': root, 'nih': nih, 'chexpert': chexpert, 'net': net,
          'model_dir': model_dir, 'own': own, 'predictions': predictions,
          'nih_data': nih_data, 'chexpert_data': chexpert_data}


def test_label_matching_by_name_and_synonym():
  info = dataset_info.DatasetInfo(
      data_dir='x', name='x', class_names=CHEXPERT, image_height=1,
      image_width=1, channels=1, splits={}, raw={}, label_names=CHEXPERT)
  mapping = scoring.map_label_names(NIH, info)
  assert mapping['matched'] == {'Effusion': 'Pleural Effusion',
                                'Cardiomegaly': 'Cardiomegaly'}
  assert mapping['data_index'] == {'Effusion': 0, 'Cardiomegaly': 1}
  assert mapping['unmatched_model_labels'] == ['Pleural_Thickening', 'Mass']
  assert mapping['unmatched_data_labels'] == ['Edema']
  assert mapping['notes'] == ['Effusion scored against Pleural Effusion '
                              '(synonyms, see scoring.LABEL_SYNONYMS)']
  assert scoring.label_key('Pleural_Thickening') == scoring.label_key(
      'pleural thickening')
  assert scoring.label_key('Mass') != scoring.label_key('Lung Lesion')
  with pytest.raises(scoring.ScoringError, match=r'no label of the model '
                     r'\(Nodule\) is among the dataset.s labels'):
    scoring.map_label_names(['Nodule'], info)
  # A binary dataset's other class: the negatives, not an unmatched label.
  kermany = dataset_info.DatasetInfo(
      data_dir='x', name='x', class_names=('NORMAL', 'PNEUMONIA'),
      image_height=1, image_width=1, channels=1, splits={}, raw={})
  mapping = scoring.map_label_names(['Pneumonia', 'Effusion'], kermany)
  assert mapping['matched'] == {'Pneumonia': 'PNEUMONIA'}
  assert mapping['unmatched_model_labels'] == ['Effusion']
  assert mapping['unmatched_data_labels'] == []
  assert mapping['notes'] == ['dataset classes NORMAL taken as negatives']


def test_the_runs_own_evaluation_per_label(runs):
  own = runs['own']
  assert own['multilabel'] and own['label_names'] == list(NIH)
  codes, _, ids = runs['nih_data']['test']
  targets, probs = runs['predictions']['test']
  for column, name in enumerate(NIH):
    known = targets[:, column] != labels_lib.MASKED
    entry = own['labels'][name]['splits']['test']
    assert entry['n'] == known.sum()
    assert entry['patients'] == len(set(ids[known]))
    assert entry['auc']['value'] == pytest.approx(metrics.roc_auc_score(
        targets[known, column], probs[known, column]), abs=1e-12)
    assert set(entry['subgroups']) == {'view', 'sex', 'age_group'}
  assert own['macro']['test']['auc_labels'] == list(NIH)
  with pytest.raises(scoring.ScoringError, match='other targets under '
                     'policy u_zeros'):
    scoring.evaluate_dataset(pipeline.DatasetBuilder(runs['nih']),
                             runs['predictions'], NIH, num_resamples=0,
                             label_policy='u_zeros')


def test_external_dataset_with_another_label_set(runs):
  out_dir = str(runs['root'] / 'external')
  results = scoring.evaluate_run(runs['model_dir'], runs['chexpert'],
                                 out_dir=out_dir, num_resamples=50)
  evaluation_results = results['evaluation']
  mapping = evaluation_results['label_mapping']
  assert mapping['unmatched_model_labels'] == ['Pleural_Thickening', 'Mass']
  assert mapping['unmatched_data_labels'] == ['Edema']
  assert list(evaluation_results['labels']) == ['Effusion', 'Cardiomegaly']
  codes, images, _ = runs['chexpert_data']['test']
  probs = runs['net'].predict(images, verbose=0)
  for name, model_column, data_column in (('Effusion', 0, 0),
                                          ('Cardiomegaly', 2, 1)):
    targets = labels_lib.apply_policy(codes[:, data_column], 'u_ones')
    entry = evaluation_results['labels'][name]['splits']['test']
    assert entry['auc']['value'] == pytest.approx(metrics.roc_auc_score(
        targets, probs[:, model_column]), abs=1e-6)
    # The run's thresholds, not new ones.
    run_thresholds = runs['own']['labels'][name]['thresholds']
    got = evaluation_results['labels'][name]['thresholds']
    assert {k: v['threshold'] for k, v in got.items()} == {
        k: v['threshold'] for k, v in run_thresholds.items()}
  text = scoring.summary(results, out_dir)
  assert text.splitlines()[0] == (
      'labels scored: Effusion as Pleural Effusion, Cardiomegaly; model '
      'labels not in the dataset: Pleural_Thickening, Mass; dataset labels '
      'without a model output: Edema')
  assert 'macro mean on test: AUC' in text
  assert 'localization: ' in text and 'stores no boxes' in text
  table = open(os.path.join(out_dir, scoring.RESULTS_MD)).read()
  assert '| Effusion | Pleural Effusion | ' in table
  for name in ('roc_labels.png', 'pr_labels.png', 'reliability_labels.png'):
    with Image.open(os.path.join(out_dir, name)) as image:
      assert image.size == (2 * 320, 320)  # two labels in one row
    assert f']({name})' in table
  saved = json.load(open(os.path.join(out_dir, scoring.RESULTS_JSON)))
  assert saved['evaluation']['label_mapping']['unmatched_data_labels'] == [
      'Edema']
  with pytest.raises(scoring.ScoringError, match='stores no boxes'):
    scoring.evaluate_run(runs['model_dir'], runs['chexpert'],
                         out_dir=str(runs['root'] / 'x'), num_resamples=0,
                         localization=True)


def write_boxes_dataset(root, n=24, scale=1):
  """An RSNA-like single-label dataset with boxes: positive images have a
  bright spot at a known place, inside their box for 3 in 4 of them and
  outside it for the rest; negatives have no box. scale: the stored
  size in units of SIZE (the spot is then scale x scale pixels)."""
  os.makedirs(root)
  rng = np.random.default_rng(5)
  size = SIZE * scale
  splits, hits = {}, []
  for split in ('val', 'test'):
    name = schema.shard_filename('rsna', split, 0, 1)
    labels = np.array([0, 1] * (n // 2))
    with tf.io.TFRecordWriter(os.path.join(root, name)) as writer:
      for i, label in enumerate(labels):
        image = rng.integers(40, 60, (size, size)).astype(np.uint8)
        boxes = []
        if label:
          image[2 * scale:6 * scale, 2 * scale:6 * scale] += 60  # quarter 0
          boxes = [(1.0 * scale, 1.0 * scale, 6.0 * scale, 6.0 * scale)]
          inside = (i // 2) % 4 != 3
          row, column = (3, 3) if inside else (12, 12)
          image[row * scale:(row + 1) * scale,
                column * scale:(column + 1) * scale] = 255
          if split == 'test':
            hits.append(inside)
        writer.write(schema.encode_example(
            _png(image), size, size, int(label), ('NORMAL', 'PNEUMONIA')[label],
            f'{split}/{i}.dcm', f'{split}-{i // 4}', size, size,
            detailed_class='Lung Opacity' if label else 'Normal',
            boxes=boxes))
    splits[split] = {'num_examples': n,
                     'class_counts': {'NORMAL': n // 2, 'PNEUMONIA': n // 2},
                     'shards': [{'filename': name, 'num_examples': n,
                                 'num_bytes': os.path.getsize(
                                     os.path.join(root, name))}]}
  info = {'format_version': 2, 'name': 'rsna',
          'class_names': ['NORMAL', 'PNEUMONIA'],
          'image': {'height': size, 'width': size, 'channels': 1},
          'splits': splits, 'layout': 'rsna',
          'extra_features': list(schema.RSNA_FEATURES)}
  with open(os.path.join(root, schema.INFO_FILENAME), 'w') as f:
    json.dump(info, f)
  return np.array(hits)


@pytest.mark.slow  # starts tools/evaluate
def test_tool_reports_the_pointing_game_on_a_dataset_with_boxes(runs):
  rsna = str(runs['root'] / 'rsna')
  hits = write_boxes_dataset(rsna)
  model_dir = str(runs['root'] / 'binary-run')
  # A binary run: one output, the heatmap peaks at the brightest pixel
  # (a 1x1 conv of positive weight feeding the logit).
  write_run(model_dir, quarter_model(1), rsna)
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'tools', 'evaluate'),
       f'--model_dir={model_dir}', f'--data_dir={rsna}',
       '--bootstrap_resamples=50', '--localization'],
      capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
      env={**os.environ, 'PYTHONPATH': REPO_ROOT})
  assert result.returncode == 0, result.stderr
  want = (f'localization (PNEUMONIA): pointing-game hit rate '
          f'{hits.mean():.3f}')
  assert want in result.stdout, result.stdout
  assert f'on {hits.size} positive images with boxes ({hits.sum()} hits, 6 ' \
         'patients)' in result.stdout
  saved = json.load(open(os.path.join(model_dir, 'evaluation', 'rsna-test',
                                      scoring.RESULTS_JSON)))
  entry = saved['localization']['labels']['PNEUMONIA']
  assert entry['hits'] == hits.sum() and entry['flat_heatmaps'] == 0
  assert entry['ci'][0] <= hits.mean() <= entry['ci'][1]


@pytest.mark.slow  # starts tools/evaluate
def test_tool_on_another_label_set_and_localization_without_boxes(runs):
  from conftest import assert_one_line_error  # pylint: disable=g-import-not-at-top
  args = [sys.executable, os.path.join(REPO_ROOT, 'tools', 'evaluate'),
          f'--model_dir={runs["model_dir"]}',
          f'--data_dir={runs["chexpert"]}', '--bootstrap_resamples=20']
  env = {**os.environ, 'PYTHONPATH': REPO_ROOT}
  result = subprocess.run(args, capture_output=True, text=True, timeout=600,
                          cwd=REPO_ROOT, env=env)
  assert result.returncode == 0, result.stderr
  assert ('labels scored: Effusion as Pleural Effusion, Cardiomegaly; model '
          'labels not in the dataset: Pleural_Thickening, Mass; dataset '
          'labels without a model output: Edema') in result.stdout
  assert 'Cardiomegaly (as Cardiomegaly) on test: ' in result.stdout
  result = subprocess.run(args + ['--localization'], capture_output=True,
                          text=True, timeout=600, cwd=REPO_ROOT, env=env)
  assert_one_line_error(result, 'error: --localization:', 'stores no boxes')


def test_views_the_reader_kept_select_the_records_rows(runs):
  builder = pipeline.DatasetBuilder(runs['nih'])
  pa = {}
  for split, (targets, probs) in runs['predictions'].items():
    rows = np.arange(len(targets)) % 2 == 1  # write_multilabel: odd rows PA
    pa[split] = (targets[rows], probs[rows])
  scored = scoring.evaluate_dataset(builder, pa, NIH, num_resamples=0,
                                    views=('PA',), label_policy='u_ones')
  targets = pa['test'][0]
  assert scored['labels']['Mass']['splits']['test']['n'] == (
      targets[:, 3] != labels_lib.MASKED).sum()
  assert set(scored['labels']['Mass']['splits']['test']['subgroups'][
      'view']) == {'PA'}
  with pytest.raises(scoring.ScoringError, match=r"split 'val' of .* has 60 "
                     r'records but 30 predictions: pass the views'):
    scoring.evaluate_dataset(builder, pa, NIH, num_resamples=0)


def test_heatmaps_are_upsampled_to_the_stored_size_of_the_boxes(runs):
  """Stored at twice the model's size: the boxes are in stored pixels, the
  heatmaps at the model's, upsampled before the peak is taken."""
  rsna = str(runs['root'] / 'rsna-32')
  hits = write_boxes_dataset(rsna, scale=2)
  builder = pipeline.DatasetBuilder(rsna)
  labels = np.array([0, 1] * 12)
  found = scoring.localize(quarter_model(4), builder, 'test',
                           {'Effusion': (labels == 1, 0),
                            'Mass': (labels == 1, 3)}, SIZE, 8,
                           num_resamples=50)
  for label in ('Effusion', 'Mass'):
    entry = found['labels'][label]
    assert (entry['n'], entry['hits']) == (hits.size, hits.sum())
    assert entry['patients'] == 6 and entry['no_box_positives'] == 0
  assert not any(found['labels'][l]['flat_heatmaps'] for l in found['labels'])
  text = scoring.localization_lines({'localization': found})
  assert text[0].startswith(f'localization (Effusion): pointing-game hit '
                            f'rate {hits.mean():.3f} [')


def test_a_binary_model_on_a_dataset_of_labels(runs):
  """A PNEUMONIA/NORMAL run scored on a dataset of labels: its positive
  class against the label of that name, the other labels named."""
  binary_data = str(runs['root'] / 'rsna-for-binary')
  write_boxes_dataset(binary_data)
  model_dir = str(runs['root'] / 'binary-on-labels')
  net = quarter_model(1)
  write_run(model_dir, net, binary_data)
  labelled = str(runs['root'] / 'labelled')
  data = write_multilabel(labelled, ('Pneumonia', 'Effusion'),
                          {'val': 40, 'test': 40}, 2)
  results = scoring.evaluate_run(model_dir, labelled, out_dir=str(
      runs['root'] / 'binary-out'), num_resamples=0)
  evaluation_results = results['evaluation']
  assert evaluation_results['label_mapping']['matched'] == {
      'PNEUMONIA': 'Pneumonia'}
  assert evaluation_results['label_mapping']['unmatched_data_labels'] == [
      'Effusion']
  codes, images, _ = data['test']
  targets = labels_lib.apply_policy(codes[:, 0], checks.DEFAULT_LABEL_POLICY)
  entry = evaluation_results['labels']['PNEUMONIA']['splits']['test']
  assert entry['auc']['value'] == pytest.approx(metrics.roc_auc_score(
      targets, net.predict(images, verbose=0)[:, 0]), abs=1e-6)
  assert evaluation_results['labels']['PNEUMONIA']['thresholds'][
      'youden']['chosen_on'] == 'val'


def test_evaluate_with_views_scores_only_those_images(runs, capsys):
  """tools/evaluate --views=PA (in process): the external test's AUCs are
  sklearn's on the PA rows alone (write_multilabel: odd rows PA), at the
  run's thresholds; the results and their folder name the views; views
  that keep nothing fail in one line before the model loads."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from xray_tfdata.cli import evaluate as evaluate_tool  # pylint: disable=g-import-not-at-top
  flags.FLAGS(['evaluate', f'--model_dir={runs["model_dir"]}',
               f'--data_dir={runs["chexpert"]}', '--bootstrap_resamples=20',
               '--views=PA'])
  try:
    evaluate_tool.main(['evaluate'])
  finally:
    flags.FLAGS.unparse_flags()
  out_dir = scoring.default_out_dir(runs['model_dir'], runs['chexpert'],
                                    'test', ['PA'])
  assert out_dir.endswith('chexpert-test-PA')
  printed = capsys.readouterr().out
  assert 'views PA: kept 36 of 72 test images (dropped 36: AP 36)' in printed
  results = json.load(open(os.path.join(out_dir, scoring.RESULTS_JSON)))
  assert results['views'] == ['PA']
  codes, images, _ = runs['chexpert_data']['test']
  pa = np.arange(len(codes)) % 2 == 1
  probs = runs['net'].predict(images[pa], verbose=0)
  for name, model_column, data_column in (('Effusion', 0, 0),
                                          ('Cardiomegaly', 2, 1)):
    targets = labels_lib.apply_policy(codes[pa, data_column], 'u_ones')
    entry = results['evaluation']['labels'][name]['splits']['test']
    assert entry['n'] == pa.sum()
    assert entry['auc']['value'] == pytest.approx(metrics.roc_auc_score(
        targets, probs[:, model_column]), abs=1e-6)
    assert set(entry['subgroups']['view']) == {'PA'}
  with pytest.raises(dataset_info.DatasetError) as caught:
    scoring.evaluate_run(runs['model_dir'], runs['chexpert'],
                         out_dir=str(runs['root'] / 'none'), num_resamples=0,
                         views=['LL'])
  assert '\n' not in str(caught.value) and '--views=VIEW,VIEW' in str(
      caught.value)
  assert not os.path.exists(runs['root'] / 'none')
