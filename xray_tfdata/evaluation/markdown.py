"""results.md and tools/evaluate's summary: views of one evaluation
(`run.results_document`), never a second computation.

The reference notebook's table (AUC, precision, recall, TP/TN/FP/FN,
accuracy on train, val and test) is the fixed 0.5 operating point of each
label; the Youden table is the 'youden' operating point on the splits it
was not chosen on; then per label the discrimination and calibration with
intervals, the operating points, the subgroups; a model of several labels
gets one overview row per label first.
"""

import math

from xray_tfdata.evaluation.bootstrap import CURVE_METRICS
from xray_tfdata.evaluation.calibration import CALIBRATION_BINS
from xray_tfdata.evaluation.curves import FIXED
from xray_tfdata.evaluation.curves import POINT_METRICS

SPLITS = ('train', 'val', 'test')


def _is_nan(value):
  return value is None or (isinstance(value, float) and math.isnan(value))


def with_ci(entry, digits=3):
  """'0.912 [0.871, 0.944]' from {'value', 'ci'}; '-' for NaN."""
  value = entry['value']
  if _is_nan(value):
    return '-'
  text = f'{value:.{digits}f}'
  ci = entry.get('ci')
  if ci and not any(_is_nan(c) for c in ci):
    text += f' [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]'
  return text


def _cell(value):
  return '-' if _is_nan(value) else f'{value:.4f}'


def _ordered(splits):
  return [s for s in SPLITS if s in splits] + [s for s in splits
                                               if s not in SPLITS]


def _ratio(value):
  """A ratio of the reference's tables: one undefined on a one-class split
  reads as Keras' 0, as the reference counted it."""
  return _cell(0.0 if _is_nan(value) else value)


def _counts_row(split, cells, point):
  """A row: the given cells, the counts, and the accuracy they give."""
  n = point['tp'] + point['tn'] + point['fp'] + point['fn']
  accuracy = (point['tp'] + point['tn']) / n if n else math.nan
  return (f'| {split} | ' + ' | '.join(cells) +
          f" | {point['tp']} | {point['tn']} | {point['fp']} | "
          f"{point['fn']} | {_cell(accuracy)} |")


def reference_table(label, result):
  """The reference's table of one label: its fixed 0.5 operating point on
  every split (precision = PPV, recall = sensitivity), then Youden's
  threshold chosen on val applied to the other splits.

  Returns:
    Markdown lines.
  """
  thresholds = result['thresholds']
  splits = result['splits']
  lines = []
  if FIXED in thresholds:
    lines += ['', f'## Results at threshold '
              f'{thresholds[FIXED]["threshold"]:g} ({label})', '',
              '| split | AUC | precision | recall | TP | TN | FP | FN | '
              'accuracy |', '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for split in _ordered(splits):
      point = splits[split]['operating_points'][FIXED]
      lines.append(_counts_row(split, [
          _cell(splits[split]['auc']['value']), _ratio(point['ppv']['value']),
          _ratio(point['sensitivity']['value'])], point))
  youden = thresholds.get('youden')
  if youden:
    chosen_on = youden['chosen_on']
    j = ''
    if chosen_on in splits:
      at = splits[chosen_on]['operating_points']['youden']
      j = (' (J = sensitivity + specificity - 1 = '
           f"{at['sensitivity']['value'] + at['specificity']['value'] - 1:.4f}"
           f' on {chosen_on})')
    lines += ['', f"## Threshold chosen on {chosen_on} (Youden's J) "
              f'({label})', '', f"Threshold {youden['threshold']:.4f}{j}.", '',
              '| split | sensitivity | specificity | precision | TP | TN | FP '
              '| FN | accuracy |',
              '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for split in _ordered(splits):
      if split == chosen_on:
        continue
      point = splits[split]['operating_points']['youden']
      lines.append(_counts_row(split, [
          _ratio(point['sensitivity']['value']),
          _ratio(point['specificity']['value']),
          _ratio(point['ppv']['value'])], point))
  return lines


def _curve_row(name, entry):
  return (f"| {name} | {entry['n']} | {entry['patients']} | "
          f"{entry['positives']} | " +
          ' | '.join(with_ci(entry[m]) for m in CURVE_METRICS) + ' |')


_CURVE_HEADER = ('| {what} | images | patients | positives | AUC | average '
                 'precision | Brier | ECE |\n|---|---:|---:|---:|---:|---:|'
                 '---:|---:|')


def _calibration_lines(label, calibration):
  if not calibration:
    return []
  lines = ['', f'## {label}: calibration (temperature scaling)', '',
           f"Temperature {calibration['temperature']:.4f}, fitted on "
           f"{calibration['fitted_on']}: P = sigmoid(logit / T).", '',
           '| split | ECE before | ECE after | Brier before | Brier after |',
           '|---|---:|---:|---:|---:|']
  for split, row in calibration['splits'].items():
    lines.append(f"| {split} | {row['ece_before']:.4f} | "
                 f"{row['ece_after']:.4f} | {row['brier_before']:.4f} | "
                 f"{row['brier_after']:.4f} |")
  return lines


def _mapping_lines(results):
  data = results['data']
  mapping = data['label_mapping'] or {}
  if data['data_dir'] == data['model_data'] and not mapping.get('notes') and (
      not mapping.get('unmatched_model_labels')):
    return []
  lines = ['', '## Labels', '',
           f"Model trained on {data['model_data']}, evaluated on "
           f"{data['data_dir']}.", '']
  for model_label, data_label in mapping.get('matched', {}).items():
    lines.append(f'- {model_label}: scored against {data_label}')
  for label in mapping.get('unmatched_model_labels', []):
    lines.append(f'- {label}: not in the dataset, not scored')
  for label in mapping.get('unmatched_data_labels', []):
    lines.append(f'- {label} (dataset): no model output, not scored')
  lines += [f'- {note}' for note in mapping.get('notes', [])]
  return lines


def _per_label_overview(results, how):
  """A model of several labels: per split one row per label, then the
  macro mean and how many labels it averages."""
  mapping = (results['data']['label_mapping'] or {}).get('matched', {})
  labels = results['labels']
  lines = ['', f"## AUC per label (--label_policy={results['label_policy']}"
           ', known targets only)', '',
           '| label | ' + ' | '.join(results['macro']) + ' |',
           '|---|' + '---:|' * len(results['macro'])]
  for label, result in labels.items():
    lines.append(f'| {label} | ' + ' | '.join(
        _cell(result['splits'][s]['auc']['value'])
        if s in result['splits'] else '-' for s in results['macro']) + ' |')
  lines.append('| macro mean | ' + ' | '.join(
      _cell(m['auc']) for m in results['macro'].values()) + ' |')
  for split, macro in results['macro'].items():
    lines += ['', f'## Per label on {split}', '',
              f'95% intervals in brackets ({how}); each label on its known '
              'targets (masked ones left out). Sensitivity and specificity '
              "at the label's Youden threshold"
              + (' (chosen on this split)' if any(
                  t['chosen_on'] == split for r in labels.values()
                  for t in r['thresholds'].values()) else '') + '.', '',
              '| label | scored as | images | patients | positives | AUC | '
              'average precision | threshold | sensitivity | specificity '
              '| note |',
              '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|']
    for label, result in labels.items():
      entry = result['splits'].get(split)
      as_name = mapping.get(label, label)
      if entry is None:
        lines.append(f'| {label} | {as_name} | 0 | | | - | - | | | | every '
                     'target masked |')
        continue
      youden = entry['operating_points'].get('youden')
      point = ([f"{youden['threshold']:.4f}",
                with_ci(youden['sensitivity']),
                with_ci(youden['specificity'])] if youden
               else ['-', '-', '-'])
      note = '; '.join(entry[m]['reason'] for m in ('auc',
                                                   'average_precision')
                       if entry[m].get('reason'))
      if not youden and not note:
        note = 'no operating points'
      lines.append(
          f"| {label} | {as_name} | {entry['n']} | {entry['patients']} | "
          f"{entry['positives']} | {with_ci(entry['auc'])} | "
          f"{with_ci(entry['average_precision'])} | " + ' | '.join(point)
          + f' | {note} |')
    auc = with_ci({'value': macro['auc'], 'ci': macro.get('auc_ci')})
    ap = with_ci({'value': macro['average_precision']})
    lines += ['', f'Macro mean on {split}: AUC {auc} over the '
              f"{len(macro['auc_labels'])} of {macro['labels_scored']} "
              'scored labels with a defined AUC (the interval resamples '
              'patients once for all labels); average precision '
              f"{ap} over {len(macro['average_precision_labels'])}."]
  return lines


def _label_lines(label, result, how):
  """One label's sections: discrimination and calibration per split, the
  operating points and subgroups of the splits they were not chosen on."""
  splits = result['splits']
  if not splits:
    return (['', f'## {label}: not scored', ''] +
            [f'- {note}' for note in result.get('notes', [])])
  lines = ['', f'## {label}: discrimination and calibration', '',
           f'95% intervals in brackets ({how}). ECE: {CALIBRATION_BINS} '
           'equal-width bins of P(' + label + '), weighted by count.', '',
           _CURVE_HEADER.format(what='split')]
  for split in _ordered(splits):
    lines.append(_curve_row(split, splits[split]))
  if result.get('notes'):
    lines += [''] + [f'- {note}' for note in result['notes']]
  thresholds = result['thresholds']
  chosen_on = {t['chosen_on'] for t in thresholds.values()}
  for split in _ordered(splits):
    entry = splits[split]
    if split in chosen_on or split == 'train' or not thresholds:
      continue  # numbers at thresholds chosen on the split itself
    lines += ['', f'## {label}: operating points on {split} (thresholds '
              f'chosen on {", ".join(sorted(chosen_on - {"fixed"}))})', '',
              '| operating point | threshold | sensitivity | specificity | '
              'PPV | NPV | F1 | TP | FP | TN | FN |',
              '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for op, point in entry['operating_points'].items():
      lines.append(
          f"| {thresholds[op]['rule']} | {point['threshold']:.4f} | " +
          ' | '.join(with_ci(point[m]) for m in POINT_METRICS) +
          f" | {point['tp']} | {point['fp']} | {point['tn']} | "
          f"{point['fn']} |")
    for field, groups in entry.get('subgroups', {}).items():
      lines += ['', f'## {label}: {split} by {field}', '',
                f'| {field} | images | patients | positives | AUC | '
                'average precision | Brier | ECE | sensitivity (Youden) '
                '| specificity (Youden) |', '|---|' + '---:|' * 9]
      for value, group in groups.items():
        if 'auc' not in group:
          lines.append(f"| {value} | {group['n']} | | | too few images "
                       '| | | | | |')  # 10 cells, as the header
          continue
        youden = group['operating_points'].get('youden')
        extra = (' | '.join(with_ci(youden[m]) for m in
                            ('sensitivity', 'specificity'))
                 if youden else '- | -')
        lines.append(_curve_row(value, group) + f' {extra} |')
  return lines + _calibration_lines(label, result.get('calibration'))


def localization_lines(localization):
  """Markdown of the pointing game (`localization.localize`)."""
  lines = ['', '## Localization (pointing game)', '']
  if 'skipped' in localization:
    return lines + [localization['skipped']]
  regions = localization.get('regions', 'boxes')  # 'masks': SIIM
  lines += [f"Rule: {localization['rule']}; 95% interval from a "
            'patient-level bootstrap.', '',
            f'| label | positive images with {regions} | patients | hits | '
            f'hit rate | flat heatmaps | positives without {regions} |',
            '|---|---:|---:|---:|---:|---:|---:|']
  for label, entry in localization['labels'].items():
    rate = with_ci({'value': entry['hit_rate'], 'ci': entry.get('ci')})
    lines.append(f"| {label} | {entry['n']} | {entry['patients']} | "
                 f"{entry['hits']} | {rate} | {entry['flat_heatmaps']} | "
                 f"{entry['no_box_positives']} |")
  return lines


def results_markdown(results, pictures=None):
  """results.md of a `run.results_document`.

  Args:
    results: the results dict (format 2).
    pictures: {title: file name} to link, or None.

  Returns:
    The Markdown text, ending in a newline.
  """
  boot = results['bootstrap']
  how = (f"{boot['unit']}-level percentile bootstrap, "
         f"{boot['num_resamples']} resamples, seed {boot['seed']}")
  lines = []
  for label, result in results['labels'].items():
    lines += reference_table(label, result)
  lines += _mapping_lines(results)
  if len(results['label_names']) > 1:
    lines += _per_label_overview(results, how)
  for label, result in results['labels'].items():
    lines += _label_lines(label, result, how)
  if results.get('sources'):
    lines += sources_lines(results['sources'], how)
  if results.get('localization'):
    lines += localization_lines(results['localization'])
  if pictures:
    lines += ['', '## Pictures', '']
    for name, path in pictures.items():
      lines += [f'{name}: [{path}]({path})', '', f'![{name}]({path})', '']
  return '\n'.join(lines).lstrip('\n') + '\n'


def sources_lines(sources, how):
  """A mixture run's table: each label's AUC on each source's splits (a
  label the source does not report blank), each source's macro, and the
  macro over sources (`run.evaluate_sources`).

  Returns:
    Markdown lines.
  """
  by_source = sources['by_source']
  splits = list(sources['macro_over_sources'])
  labels = list(dict.fromkeys(
      label for entry in by_source.values() for label in entry['labels']))
  columns = [(name, split) for name in by_source for split in splits]
  lines = ['', f'## AUC per source ({how}; operating points and '
           'calibration of each source on its own val)', '',
           '| label | ' + ' | '.join(f'{name} {split}' for name, split
                                     in columns) + ' |',
           '|---|' + '---:|' * len(columns)]
  for label in labels:
    cells = []
    for name, split in columns:
      entry = by_source[name]['labels'].get(label, {}).get('splits', {})
      cells.append(with_ci(entry[split]['auc']) if split in entry else '')
    lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  lines.append('| macro | ' + ' | '.join(
      with_ci({'value': by_source[name]['macro'][split]['auc'],
               'ci': by_source[name]['macro'][split].get('auc_ci')})
      for name, split in columns) + ' |')
  lines += ['', 'Macro AUC over sources: ' + ', '.join(
      f"{split} {_cell(entry['auc'])} ({len(entry['sources'])} sources)"
      for split, entry in sources['macro_over_sources'].items()) + '.',
            'Policies: ' + ', '.join(
                f"{name} {entry['label_policy'] or 'none (classes)'}"
                for name, entry in by_source.items()) + '.']
  return lines


def label_matching_line(mapping):
  """One line: which labels were matched, and the unmatched ones of both
  sides."""
  matched = ', '.join(label if label == name else f'{label} as {name}'
                      for label, name in mapping['matched'].items())
  line = f'labels scored: {matched}'
  if mapping['unmatched_model_labels']:
    line += ('; model labels not in the dataset: '
             + ', '.join(mapping['unmatched_model_labels']))
  if mapping['unmatched_data_labels']:
    line += ('; dataset labels without a model output: '
             + ', '.join(mapping['unmatched_data_labels']))
  return line


def summary(results, out_dir_md):
  """The lines tools/evaluate prints: the label matching, per label and
  split its AUC and Youden point, the macro mean of several labels, the
  pointing game, where results.md is."""
  mapping = results['data']['label_mapping']
  lines = [label_matching_line(mapping)]
  for label, result in results['labels'].items():
    for split, entry in result['splits'].items():
      youden = entry['operating_points'].get('youden')
      reason = entry['auc'].get('reason')
      lines.append(
          f"{label} (as {mapping['matched'][label]}) on {split}: "
          f"{entry['n']} images, {entry['patients']} patients, "
          f"{entry['positives']} positive, AUC "
          + (reason or with_ci(entry['auc']))
          + (f", at Youden's threshold {youden['threshold']:.4f} "
             f"sensitivity {with_ci(youden['sensitivity'])}, specificity "
             f"{with_ci(youden['specificity'])}"
             if youden else ', no operating points'))
    if not result['splits']:
      lines.append(f'{label}: every target masked, not scored')
  if len(results['labels']) > 1:
    for split, macro in results['macro'].items():
      auc = with_ci({'value': macro['auc'], 'ci': macro.get('auc_ci')})
      lines.append(f'macro mean on {split}: AUC {auc} over '
                   f"{len(macro['auc_labels'])} of {macro['labels_scored']} "
                   'labels (those with a defined AUC)')
  lines += [f'note: {note}' for note in mapping['notes']]
  found = results.get('localization')
  if found and 'skipped' in found:
    lines.append(f"localization: {found['skipped']}")
  elif found:
    for label, entry in found['labels'].items():
      ci = entry.get('ci')
      lines.append(
          f"localization ({label}): pointing-game hit rate "
          f"{entry['hit_rate']:.3f}"
          + (f' [{ci[0]:.3f}, {ci[1]:.3f}]' if ci else '')
          + f" on {entry['n']} positive images with "
          f"{found.get('regions', 'boxes')} ({entry['hits']} "
          f"hits, {entry['patients']} patients)")
  lines.append(f'wrote {out_dir_md}')
  return '\n'.join(lines)
