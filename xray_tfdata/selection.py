"""The labels, views and label methods a reader selects of a dataset.

Every dataset is read as targets [B, L] with label names
(`DatasetInfo.target_names`): a multi-label dataset's labels, or a class
dataset's one label, its positive class. A multi-label dataset (xray_info.json
lists 'label_names') stores a raw code per label and each image's view.
`Selection` checks the label names, label policy and views asked of a
dataset, gives the decoder its targets (a policy table from
`xray_tfdata.labels` and the indices of the labels read), and counts each
split's views from one read of its records: xray_info.json counts codes, not
views. A dataset that stores how each image's labels were made (PadChest's
MethodLabel, `schema.LABEL_METHOD`) can be cut to some label methods the
same way, e.g. a test split of the physician-labelled images.
`DatasetBuilder`'s label_names, views, label_methods, num_examples,
label_code_counts, target_counts and view_filter_line are these.
"""

import numpy as np
import tensorflow as tf

from xray_tfdata import checks
from xray_tfdata import labels as labels_lib
from xray_tfdata import schema
from xray_tfdata.dataset_info import DatasetError

# How a view filter's count names images whose view the source leaves out.
UNKNOWN_VIEW = 'unknown'


class Selection:
  """The label names, targets and views of one dataset's reads.

  Usage:
    selection = Selection(builder.info, builder.shard_paths)
    selection.num_examples('train', ('PA', 'AP'))   # 812
  """

  def __init__(self, info, shard_paths, reader_policy=None):
    """Args:
      info: the dataset's `DatasetInfo`, as the reader labels it.
      shard_paths: split -> its checked shard paths, in index order
        (`DatasetBuilder.shard_paths`); read only to count views.
      reader_policy: for a dataset that keeps every reader (VinDr-CXR), one
        of `checks.READER_POLICIES` (None: `checks.DEFAULT_READER_POLICY`);
        ignored by the others.

    Raises:
      DatasetError: an unknown reader policy.
    """
    self.info = info
    self._shard_paths = shard_paths
    # split -> (views, codes) of its records, read once (see _view_table),
    # and, where stored, (marks, readers) and label methods in the same
    # order.
    self._view_tables = {}
    self._reader_tables = {}
    self._method_tables = {}
    if reader_policy is not None and (
        reader_policy not in checks.READER_POLICIES):
      raise DatasetError(
          f'reader policy {reader_policy!r} is not one of '
          f'{", ".join(checks.READER_POLICIES)}: pass '
          f'--reader_policy={checks.DEFAULT_READER_POLICY}, for example')
    self.reader_policy = None
    if schema.NUM_READERS in info.extra_features:
      self.reader_policy = reader_policy or checks.DEFAULT_READER_POLICY

  def label_names(self, labels=None):
    """The label names `as_dataset(labels=labels)` reads, in order.

    A class dataset has one label, its positive class (PNEUMONIA).

    Raises:
      DatasetError: an unknown or a repeated name, or an empty selection.
    """
    available = self.info.target_names
    if labels is None:
      return available
    if isinstance(labels, str):
      labels = (labels,)
    labels = tuple(labels)
    unknown = [name for name in labels if name not in available]
    if unknown or not labels:
      raise DatasetError(
          f'label{"s" if len(unknown) != 1 else ""} '
          f'{", ".join(map(repr, unknown)) or "(none)"} not in '
          f'{self.info.data_dir}; its labels are {", ".join(available)}: '
          'pick from those with --labels=NAME,NAME')
    repeated = sorted({name for name in labels if labels.count(name) > 1})
    if repeated:
      raise DatasetError(f'labels {", ".join(repeated)} asked for twice: name '
                         'each once in --labels')
    return labels

  def targets(self, label_policy, labels):
    """The decoder's (`labels.TargetRule`, label indices) of a multi-label
    dataset; None for a class dataset, whose records store a class id that
    the decoder compares with the positive class (no policy applies).

    Raises:
      DatasetError: an unknown label policy, or labels as `label_names`.
    """
    if not self.info.is_multilabel:
      self.label_names(labels)  # labels asked of it: one line
      return None
    if label_policy not in checks.LABEL_POLICIES:
      raise DatasetError(
          f'label policy {label_policy!r} is not one of '
          f'{", ".join(checks.LABEL_POLICIES)}: pass '
          f'--label_policy={checks.DEFAULT_LABEL_POLICY}, for example')
    names = self.label_names(labels)
    indices = [self.info.label_names.index(name) for name in names]
    return labels_lib.target_rule(label_policy, self.info.label_names,
                                  self.info.layout,
                                  self.reader_policy), indices

  def target_counts(self, split, label_policy, labels=None, views=None,
                    label_methods=None):
    """{label: {'positive': n, 'negative': n}}: the known targets the
    reader makes of the split (of the images `views` and `label_methods`
    keep) under the policy, for the labels asked; what class weights and
    the small-label warnings count.

    Raises:
      DatasetError: as `targets` and `num_examples`.
    """
    if not self.info.is_multilabel:
      # A class id per record: the class counts of xray_info.json.
      self.check_views(views)  # views asked of it: one line
      self.check_label_methods(label_methods)
      (name,) = self.label_names(labels)
      negative, positive = self.info.class_counts(split)
      return {name: {'positive': positive, 'negative': negative}}
    rule, indices = self.targets(label_policy, labels)
    names = self.label_names(labels)
    if rule.no_finding is None and rule.reader_policy is None:
      # Each target follows its own code: xray_info.json's code counts
      # suffice, without reading the records (unless views filter them).
      counts = self.label_code_counts(split, views, label_methods)
      return {name: {
          kind: sum(n for code, n in counts[name].items()
                    if rule.table[code - labels_lib.OFFSET] == target)
          for kind, target in (('positive', 1.0), ('negative', 0.0))}
              for name in names}
    # A target depends on the image's No Finding code or its readers' marks
    # too: count from the records (read once, kept for the view filter).
    views = self.check_views(views)
    label_methods = self.check_label_methods(label_methods)
    _, codes = self._view_table(split)
    marked_by, num_readers = self._reader_tables.get(split, (None, None))
    if views is not None or label_methods is not None:
      # none kept: one line
      self.num_examples(split, views, label_methods)
      kept = self._kept(split, views, label_methods)
      codes = codes[kept]
      if marked_by is not None:
        marked_by, num_readers = marked_by[kept], num_readers[kept]
    targets = rule.apply(codes, marked_by, num_readers)
    return {name: labels_lib.count_targets(targets[:, index])
            for name, index in zip(names, indices)}

  def check_views(self, views):
    """views as a tuple of str, or None (keep all): a str is one view, an
    empty sequence keeps all.

    Raises:
      DatasetError: views of a class dataset, whose records store none.
    """
    if views is None or (not isinstance(views, str) and not len(views)):
      return None
    views = (views,) if isinstance(views, str) else tuple(views)
    if not self.info.is_multilabel:
      raise DatasetError(
          f'views {",".join(views)} were asked of {self.info.data_dir}, a '
          'class dataset, whose records store no view: leave '
          '--views empty')
    return views

  def views(self, split):
    """{view: images} of a multi-label split, from one read of its records
    (`UNKNOWN_VIEW` for images the source gives none)."""
    stored, _ = self._view_table(split)
    names, counts = np.unique(stored, return_counts=True)
    return {str(name) or UNKNOWN_VIEW: int(count)
            for name, count in zip(names, counts)}

  def check_label_methods(self, label_methods):
    """label_methods as a tuple of str, or None (keep all), as
    `check_views`.

    Raises:
      DatasetError: label methods of a dataset whose records store none.
    """
    if label_methods is None or (not isinstance(label_methods, str) and
                                 not len(label_methods)):
      return None
    if isinstance(label_methods, str):
      label_methods = (label_methods,)
    label_methods = tuple(label_methods)
    if schema.LABEL_METHOD not in self.info.extra_features:
      raise DatasetError(
          f'label methods {",".join(label_methods)} were asked of '
          f'{self.info.data_dir}, whose records do not store how their '
          'labels were made (a PadChest conversion does): leave '
          '--label_methods empty')
    return label_methods

  def label_methods(self, split):
    """{label method: images} of a split whose records store one (PadChest's
    'Physician', 'RNN_model'), from the same read as `views`."""
    self._view_table(split)
    names, counts = np.unique(self._method_tables[split], return_counts=True)
    return {str(name) or UNKNOWN_VIEW: int(count)
            for name, count in zip(names, counts)}

  def num_examples(self, split, views=None, label_methods=None):
    """The split's images, of those `views` and `label_methods` keep (None:
    all, from xray_info.json without reading).

    Raises:
      DatasetError: an unknown split, views of a class dataset, label
        methods of a dataset that stores none, or a filter that keeps none
        of the split's images.
    """
    views = self.check_views(views)
    label_methods = self.check_label_methods(label_methods)
    if views is None and label_methods is None:
      return self.info.num_examples(split)
    kept = int(self._kept(split, views, label_methods).sum())
    if not kept:
      asked = []
      if views is not None:
        asked.append(('views', views, self.views(split), '--views=VIEW,VIEW'))
      if label_methods is not None:
        asked.append(('label methods', label_methods,
                      self.label_methods(split),
                      '--label_methods=METHOD,METHOD'))
      found = '; '.join(
          f'its {kind}: ' + ', '.join(f'{name} {n:,}'
                                      for name, n in _by_count(counts))
          for kind, _, counts, _ in asked)
      raise DatasetError(
          ' and '.join(f'{kind} {",".join(names)}'
                       for kind, names, _, _ in asked) +
          f' keep no image of split {split!r} of {self.info.data_dir} '
          f'({found}): pick from those with ' +
          ' and '.join(flag for *_, flag in asked))
    return kept

  def label_code_counts(self, split, views=None, label_methods=None):
    """{label: {code: n}} of the split's raw codes, every label of the
    dataset, of the images `views` and `label_methods` keep (None: all,
    from xray_info.json).

    Raises:
      DatasetError: as `num_examples`.
    """
    views = self.check_views(views)
    label_methods = self.check_label_methods(label_methods)
    if views is None and label_methods is None:
      return self.info.label_code_counts(split)
    self.num_examples(split, views, label_methods)  # none kept: one line
    _, codes = self._view_table(split)
    kept = codes[self._kept(split, views, label_methods)]
    return {name: {code: int((kept[:, index] == code).sum())
                   for code in schema.LABEL_CODES}
            for index, name in enumerate(self.info.label_names)}

  def view_filter_line(self, views, splits, label_methods=None):
    """One line saying what `views` (and `label_methods`) keep and drop of
    each split, e.g. 'views PA,AP: kept 812 of 1,000 train images (dropped
    188: LL 150, unknown 38); kept 90 of 100 val images (dropped 10: LL
    10)'; the label methods' line follows in the same form."""
    views = self.check_views(views)
    label_methods = self.check_label_methods(label_methods)
    lines = []
    for kind, names, count in (('views', views, self.views),
                               ('label methods', label_methods,
                                self.label_methods)):
      if names is None:
        continue
      parts = []
      for split in splits:
        found = count(split)
        total = sum(found.values())
        dropped = [(name, n) for name, n in _by_count(found)
                   if name not in names]
        lost = sum(n for _, n in dropped)
        detail = (': ' + ', '.join(f'{name} {n:,}' for name, n in dropped)
                  if dropped else '')
        parts.append(f'kept {total - lost:,} of {total:,} {split} images '
                     f'(dropped {lost:,}{detail})')
      lines.append(f'{kind} {",".join(names)}: ' + '; '.join(parts))
    return '; '.join(lines)

  def filter_records(self, records, split, views, label_methods=None):
    """The serialized records of `views` and `label_methods` (checked);
    all if both are None.

    Raises:
      DatasetError: as `num_examples`.
    """
    views = self.check_views(views)
    label_methods = self.check_label_methods(label_methods)
    if views is None and label_methods is None:
      return records
    # none kept: one line, not an empty run
    self.num_examples(split, views, label_methods)
    wanted = {}
    if views is not None:
      wanted[schema.VIEW] = tf.constant(stored_views(views))
    if label_methods is not None:
      wanted[schema.LABEL_METHOD] = tf.constant(stored_views(label_methods))
    spec = {key: tf.io.FixedLenFeature([], tf.string, default_value='')
            for key in wanted}

    def keep(record):
      # Parsing these strings alone copies no image bytes.
      stored = tf.io.parse_single_example(record, spec)
      return tf.reduce_all([tf.reduce_any(tf.equal(stored[key], values))
                            for key, values in wanted.items()])
    return records.filter(keep)

  def _kept(self, split, views, label_methods=None):
    """Booleans [N]: which of the split's records `views` and
    `label_methods` keep (None: any)."""
    stored, _ = self._view_table(split)
    kept = np.ones(len(stored), bool)
    if views is not None:
      kept &= np.isin(stored, np.array(stored_views(views), dtype=object))
    if label_methods is not None:
      kept &= np.isin(self._method_tables[split],
                      np.array(stored_views(label_methods), dtype=object))
    return kept

  def _view_table(self, split):
    """(views str [N], raw codes int64 [N, L]) of a multi-label split's
    records, read once: parsing the two features alone copies no image."""
    if split not in self._view_tables:
      if not self.info.is_multilabel:
        raise DatasetError(f'{self.info.data_dir} is a class dataset: '
                           'its records store no view')
      spec = {schema.VIEW: tf.io.FixedLenFeature([], tf.string,
                                                 default_value=''),
              schema.LABELS: tf.io.FixedLenFeature(
                  [len(self.info.label_names)], tf.int64)}
      readers = schema.NUM_READERS in self.info.extra_features
      if readers:  # in the same pass: the shards' order varies by read
        spec.update(schema.reader_spec(len(self.info.label_names)))
      methods = schema.LABEL_METHOD in self.info.extra_features
      if methods:
        spec[schema.LABEL_METHOD] = tf.io.FixedLenFeature([], tf.string,
                                                          default_value='')
      records = tf.data.TFRecordDataset(self._shard_paths(split),
                                        num_parallel_reads=tf.data.AUTOTUNE)
      views, codes, marks, label_methods = [], [], [], []
      # Counts only, so any order: shards read in parallel.
      for batch in records.batch(1024).map(
          lambda r: tf.io.parse_example(r, spec),
          num_parallel_calls=tf.data.AUTOTUNE).as_numpy_iterator():
        views.append(batch[schema.VIEW])
        codes.append(batch[schema.LABELS])
        if readers:
          marks.append((batch[schema.MARKED_BY], batch[schema.NUM_READERS]))
        if methods:
          label_methods.append(batch[schema.LABEL_METHOD])
      self._view_tables[split] = (
          _strings(views),
          np.concatenate(codes) if codes else np.zeros(
              (0, len(self.info.label_names)), np.int64))
      if readers:
        self._reader_tables[split] = (
            np.concatenate([m for m, _ in marks]) if marks else np.zeros(
                (0, len(self.info.label_names)), np.int64),
            np.concatenate([n for _, n in marks]) if marks else np.zeros(
                0, np.int64))
      if methods:
        self._method_tables[split] = _strings(label_methods)
    return self._view_tables[split]


def stored_views(views):
  """The stored spellings of views (records' schema.VIEW): `UNKNOWN_VIEW`
  is stored as ''."""
  return tuple(views) + (('',) if UNKNOWN_VIEW in views else ())


def _strings(batches):
  """Batches of utf-8 bytes as one str array (object)."""
  values = np.concatenate(batches) if batches else np.array([], object)
  return np.array([v.decode('utf-8', 'replace') for v in values], object)


def _by_count(counts):
  """{name: n} as (name, n) pairs, most first, then by name."""
  return sorted(counts.items(), key=lambda item: (-item[1], item[0]))
