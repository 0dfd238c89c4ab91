"""Several converted datasets read as one, in the vocabulary's label space.

  mix = mixture.Mixture(['data/nih_224', 'data/chexpert_224',
                         'data/padchest_224'])
  mix.label_names()          # the union, in the vocabulary's order
  train = mix.as_dataset('train', 32, training=True, seed=0)
  val = mix.source_dataset(0, 'val', 32)   # one source, the union's columns

Each dataset keeps its own label names; `vocabulary` maps them. The
model's outputs are the union of the datasets' labels in the vocabulary
(or `labels`). A label a source does not report is unknown in its
examples (`labels.MASKED`): it takes no part in the loss, the metrics or
the label's pos_weight there. Where the vocabulary maps several of a
source's names to one label (PadChest's finer terms), the label is
positive where any of them is, negative where all are known negatives,
and masked otherwise.

The sources are mixed host side, after each one's own pipeline (its cache,
its shuffle, its label policy), so each reads as it would alone.
"""

import dataclasses
import hashlib
import json
import os

import numpy as np
import tensorflow as tf

from xray_tfdata import checks
from xray_tfdata import config
from xray_tfdata import labels as labels_lib
from xray_tfdata import pipeline
from xray_tfdata import vocabulary
from xray_tfdata.dataset_info import DatasetError

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class Source:
  """One dataset of a mixture.

  Attributes:
    builder: its pipeline.DatasetBuilder.
    name: a short name, unique in the mixture (its folder's name).
    own_names: the labels it is read with, in its own spelling.
    columns: per label of the mixture, the indices into own_names that map
      to it (() where the source does not report it).
    label_policy: its policy (multi-label sources), else None.
  """
  builder: pipeline.DatasetBuilder
  name: str
  own_names: tuple
  columns: tuple
  label_policy: object = None

  @property
  def layout(self):
    return self.builder.info.layout

  def record(self):
    """What config.json records of the source (`MixtureInfo.summary`)."""
    return {'name': self.name, 'data_dir': self.builder.data_dir,
            'layout': self.layout, 'label_policy': self.label_policy,
            'fingerprint': self.builder.info.fingerprint()}


@dataclasses.dataclass(frozen=True)
class MixtureInfo:
  """What training reads of a dataset's DatasetInfo, for a mixture: a
  multi-label dataset in the union's labels whose fingerprint is its
  sources' (a resume is refused when any of them was converted again)."""
  mixture: object

  is_multilabel = True
  layout = 'mixture'
  extra_features = ()

  @property
  def data_dir(self):
    return self.mixture.data_dir

  @property
  def label_names(self):
    return self.mixture.label_names()

  @property
  def class_names(self):
    return self.label_names

  @property
  def image_size(self):
    return self.mixture.image_size

  @property
  def image_height(self):
    return self.image_size[0]

  @property
  def image_width(self):
    return self.image_size[1]

  @property
  def splits(self):
    common = set.intersection(*(set(s.builder.info.splits)
                                for s in self.mixture.sources))
    return {split: {'num_examples': self.num_examples(split),
                    'shards': [shard for s in self.mixture.sources
                               for shard in s.builder.info.split(split).get(
                                   'shards', [])]}
            for split in sorted(common)}

  def split(self, split):
    for source in self.mixture.sources:
      source.builder.info.split(split)
    return self.splits[split]

  def num_examples(self, split):
    return self.mixture.num_examples(split)

  def check_has_examples(self, split):
    for source in self.mixture.sources:
      source.builder.info.check_has_examples(split)

  def summary(self):
    """{'class_names' (the union's labels), 'image_size', 'splits': {split:
    {'num_examples', 'num_bytes', 'class_counts', 'content_sha256' (of the
    sources' fingerprints)}}, 'sources': [`Source.record` + its
    'reader_policy' (VinDr's; None for the others)]}."""
    sources = [s.record() for s in self.mixture.sources]
    for source, record in zip(self.mixture.sources, sources):
      # VinDr's reader policy, where a source keeps every reader.
      record['reader_policy'] = (self.mixture.reader_policy
                                 if source.layout == 'vindr' else None)
    splits = {}
    for split in self.splits:
      parts = [s.builder.info.summary()['splits'][split]
               for s in self.mixture.sources]
      splits[split] = {
          'num_examples': sum(p['num_examples'] for p in parts),
          'num_bytes': sum(p['num_bytes'] for p in parts),
          'class_counts': {},
          # Of the sources' splits: their hashes, else their fingerprints.
          'content_sha256': hashlib.sha256(''.join(
              p.get('content_sha256') or s['fingerprint']
              for p, s in zip(parts, sources)).encode()).hexdigest()}
    return {'class_names': list(self.label_names),
            'image_size': list(self.image_size), 'splits': splits,
            'sources': sources}

  def fingerprint(self):
    """A digest of the sources' fingerprints, their policies and the
    union's labels: the key of a resume and of the caches of the union."""
    return hashlib.sha256(json.dumps(
        self.summary(), sort_keys=True).encode()).hexdigest()[:32]


def _source_names(data_dirs):
  """Unique short names: the folders' names, with their parent where two
  folders share a name."""
  names = [os.path.basename(os.path.normpath(d)) for d in data_dirs]
  if len(set(names)) < len(names):
    names = [os.path.join(*os.path.normpath(d).split(os.sep)[-2:])
             for d in data_dirs]
  if len(set(names)) < len(names):
    raise DatasetError(f'a dataset is named twice in {", ".join(data_dirs)}: '
                       'pass each data_dir once')
  return names


def is_mixture(data_dir):
  """Whether a --data_dir value names several datasets."""
  return len(config.split_data_dirs(data_dir)) > 1


class Mixture:
  """Several datasets, one label space, one tf.data pipeline."""

  def __init__(self, data_dirs, labels=None, label_policy=None, weights=None,
               image_size=None, reader_policy=None):
    """Reads the datasets' metadata and maps their labels.

    Args:
      data_dirs: two or more converted datasets.
      labels: the vocabulary's names to read, in this order; None: the
        union of the datasets' labels, in the vocabulary's order.
      label_policy: one policy for every multi-label source, or a list of
        one per dataset (None entries: the default policy); None: the
        default for all.
      weights: each dataset's share of the training examples, one per
        dataset (positive; normalized); None: in proportion to size.
      image_size: an int or (height, width) every source is read at
        (resized where stored otherwise); None: as stored, which must then
        be one size.
      reader_policy: for a source that keeps every reader (VinDr-CXR),
        `DatasetBuilder`'s; None: its default.

    Raises:
      DatasetError: fewer than two datasets, one named twice, no label
        shared by two datasets, an unknown name in `labels`, a label no
        dataset reports, weights that do not match the datasets, stored
        sizes that differ without image_size.
    """
    if isinstance(data_dirs, str):
      data_dirs = config.split_data_dirs(data_dirs)
    data_dirs = list(data_dirs)
    if len(data_dirs) < 2:
      raise DatasetError(
          f'a mixture reads two or more datasets, got {len(data_dirs)}: pass '
          '--data_dir=DIR1,DIR2')
    names = _source_names(data_dirs)
    policies = (list(label_policy) if isinstance(label_policy, (list, tuple))
                else [label_policy] * len(data_dirs))
    if len(policies) != len(data_dirs):
      raise DatasetError(f'{len(policies)} label policies for '
                         f'{len(data_dirs)} datasets: pass one per dataset')
    builders = [pipeline.DatasetBuilder(d, reader_policy=reader_policy)
                for d in data_dirs]
    self.reader_policy = reader_policy
    mapped = []
    self.unmapped = {}  # source name -> its names outside the vocabulary
    for name, builder in zip(names, builders):
      own = tuple(builder.label_names())
      to_vocabulary, unmapped = vocabulary.map_names(builder.info.layout, own)
      if unmapped:
        self.unmapped[name] = unmapped
      mapped.append((own, to_vocabulary))
    self._label_names = self._union(labels, data_dirs, mapped)
    self.sources = tuple(
        Source(builder=b, name=n, own_names=own,
               columns=tuple(tuple(i for i, o in enumerate(own)
                                   if to_vocab.get(o) == label)
                             for label in self._label_names),
               label_policy=(p or checks.DEFAULT_LABEL_POLICY)
               if b.info.is_multilabel else None)
        for n, b, p, (own, to_vocab) in zip(names, builders, policies,
                                            mapped))
    self.weights, self._weighted = self._weights(weights)
    self.data_dir = ','.join(data_dirs)
    self.info = MixtureInfo(self)
    self.image_size = self._size(image_size)

  def label_names(self, labels=None):
    """The mixture's labels (the model's outputs), as
    `DatasetBuilder.label_names`.

    Raises:
      DatasetError: `labels` other than the mixture's own.
    """
    if labels and tuple(labels) != self._label_names:
      raise DatasetError(
          f'the mixture reads {", ".join(self._label_names)}, asked for '
          f'{", ".join(labels)}: pass the labels when making the Mixture')
    return self._label_names

  @staticmethod
  def _union(labels, data_dirs, mapped):
    """The mixture's labels: `labels`, or the union in vocabulary order."""
    reported = [set(to_vocab.values()) for _, to_vocab in mapped]
    union = set().union(*reported)
    shared = {label for label in union
              if sum(label in r for r in reported) >= 2}
    if not shared:
      raise DatasetError(
          f'the datasets {", ".join(data_dirs)} share no label of the '
          'vocabulary (xray_tfdata.vocabulary): train on datasets that '
          'report a finding in common')
    if labels is None:
      return tuple(n for n in vocabulary.NAMES if n in union)
    labels = (labels,) if isinstance(labels, str) else tuple(labels)
    unknown = [n for n in labels if n not in vocabulary.NAMES]
    if unknown:
      raise DatasetError(
          f'{", ".join(map(repr, unknown))} not in the label vocabulary: '
          f'pass --labels from {", ".join(vocabulary.NAMES)}')
    unreported = [n for n in labels if n not in union]
    if unreported:
      raise DatasetError(
          f'no dataset reports {", ".join(map(repr, unreported))}: pass '
          f'--labels from {", ".join(n for n in vocabulary.NAMES if n in union)}')
    if len(set(labels)) < len(labels):
      raise DatasetError(f'--labels names a label twice: {", ".join(labels)}')
    return labels

  def _weights(self, weights):
    """The sources' sampling weights, normalized, and whether they differ
    from the shares of the sources' train sizes (then training draws by
    weight, with replacement; otherwise each example once per pass).

    Raises:
      DatasetError: not one positive weight per source.
    """
    sizes = np.array([s.builder.num_examples('train') for s in self.sources],
                     np.float64)
    shares = sizes / sizes.sum()
    if weights is None:
      return tuple(shares), False
    weights = np.asarray(weights, np.float64)
    if weights.shape != sizes.shape or not (weights > 0).all():
      raise DatasetError(
          f'--dataset_weights has {weights.size} value(s) for '
          f'{len(self.sources)} datasets ({", ".join(s.name for s in self.sources)}): '
          'pass one positive weight per dataset, in --data_dir order')
    weights = weights / weights.sum()
    return tuple(weights), not np.allclose(weights, shares)

  def unmapped_lines(self):
    """One line per source with labels outside the vocabulary."""
    return [vocabulary.unmapped_line(s.layout, self.unmapped[s.name])
            for s in self.sources if s.name in self.unmapped]

  # Reading.

  def _read_options(self, source, read_options):
    """A source's as_dataset arguments: its own labels and policy; the
    union's (labels, label_policy), set when the mixture was made, and
    views, which a mixture does not filter by, are dropped."""
    self.label_names(read_options.pop('labels', None))
    read_options.pop('label_policy', None)
    if read_options.pop('views', None):
      raise DatasetError('--views is for one dataset: a mixture reads every '
                         'view of its sources')
    if source.builder.info.is_multilabel:
      read_options.update(label_policy=source.label_policy,
                          labels=source.own_names)
    return read_options

  def _to_union(self, source):
    """The map of one source's targets [L_own] (or a class dataset's label)
    to the mixture's [L]."""
    table = []
    for columns in source.columns:
      table.append(list(columns))

    def combine(targets):
      own = tf.reshape(tf.cast(targets, tf.float32), [-1])
      out = []
      for columns in table:
        if not columns:
          out.append(tf.constant(labels_lib.MASKED, tf.float32))
          continue
        picked = tf.gather(own, columns)
        positive = tf.reduce_any(tf.equal(picked, 1.0))
        negative = tf.reduce_all(tf.equal(picked, 0.0))
        out.append(tf.where(positive, 1.0,
                            tf.where(negative, 0.0, labels_lib.MASKED)))
      return tf.stack(out)

    return combine

  def source_dataset(self, index, split, batch_size=None, training=False, *,
                     seed=None, repeat=False, with_metadata=False,
                     image_size=None, **read_options):
    """One source's split with the mixture's targets [B, L].

    Args:
      index: the source's index in `sources`.
      split, batch_size, training, seed, repeat, with_metadata: as
        `DatasetBuilder.as_dataset`; the metadata's patient_id is prefixed
        with the source's name, so two sources' patients never meet.
      image_size: an int or (height, width) every source is resized to;
        None: as stored (every source must then store one size).
      **read_options: `ReadConfig` fields (cache_dir, channels, ...).

    Raises:
      DatasetError: as `as_dataset`; stored sizes differ without
        image_size.
    """
    source = self.sources[index]
    size = self.image_size if image_size is None else self._size(image_size)
    stored = source.builder.info.image_size
    ds = source.builder.as_dataset(
        split, None, training, image_size=size, resize=tuple(stored) != size,
        seed=seed, with_metadata=with_metadata,
        **self._read_options(source, dict(read_options)))
    combine = self._to_union(source)
    prefix = source.name + '/'

    def to_union(image, targets, *metadata):
      if not metadata:
        return image, combine(targets)
      (meta,) = metadata
      return image, combine(targets), {
          'patient_id': tf.strings.join([prefix, meta['patient_id']]),
          'filename': meta['filename'],
          'source': tf.constant(index, tf.int32)}

    ds = ds.map(to_union, num_parallel_calls=AUTOTUNE)
    if repeat:
      ds = ds.repeat()
    if batch_size is not None:
      ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(AUTOTUNE)

  def _size(self, image_size):
    if image_size is None:
      sizes = {tuple(s.builder.info.image_size) for s in self.sources}
      if len(sizes) > 1:
        raise DatasetError(
            'the datasets are stored at different sizes ('
            + ', '.join(f'{s.name} {s.builder.info.image_size[0]}x'
                        f'{s.builder.info.image_size[1]}'
                        for s in self.sources)
            + '): pass --image_size to resize them all to one')
      return sizes.pop()
    if isinstance(image_size, int):
      return (image_size, image_size)
    return tuple(image_size)

  def as_dataset(self, split, batch_size, training=False, *, seed=None,
                 repeat=False, with_metadata=False, image_size=None,
                 **read_options):
    """The sources' split, mixed, with targets [B, L].

    Without weights each example is drawn once per pass (sampling without
    replacement), the sources interleaved in proportion to their sizes.
    With weights each source repeats, and batches draw from the sources
    by weight (with replacement): a pass has no end, so pass repeat=True
    and count an epoch in steps (`steps_per_epoch`).

    Args and raises: as `source_dataset`.
    """
    drawn = self.weights if training else None
    by_weight = training and self._weighted
    members = [self.source_dataset(
        i, split, None, training, seed=seed, repeat=by_weight,
        with_metadata=with_metadata, image_size=image_size, **read_options)
               for i in range(len(self.sources))]
    if training:
      ds = tf.data.Dataset.sample_from_datasets(
          members, weights=list(drawn), seed=seed,
          stop_on_empty_dataset=False)
    else:
      # Evaluation: every source's examples in order, one after another.
      ds = members[0]
      for member in members[1:]:
        ds = ds.concatenate(member)
    if repeat and not by_weight:
      ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(AUTOTUNE)

  def num_examples(self, split, views=None):
    """The split's examples over all sources (views: None only)."""
    del views  # as DatasetBuilder's; `_read_options` refuses any
    return sum(s.builder.num_examples(split) for s in self.sources)

  def steps_per_epoch(self, split, batch_size, training=True, views=None):
    n = self.num_examples(split, views)
    return n // batch_size if training else -(-n // batch_size)

  def verify(self, splits=None):
    """Every source's records' CRCs (`DatasetBuilder.verify`)."""
    for source in self.sources:
      source.builder.verify(splits)

  def shard_paths(self, split):
    return [p for s in self.sources for p in s.builder.shard_paths(split)]

  def target_counts(self, split, label_policy=None, labels=None,
                    views=None):
    """{label: {'positive': n, 'negative': n}} over the sources' known
    targets of the split: a source that does not report a label adds
    nothing to it (what pos_weight counts).

    label_policy, labels and views are DatasetBuilder.target_counts'; the
    sources' policies were set when the mixture was made.

    Raises:
      DatasetError: as `DatasetBuilder.target_counts`.
    """
    del label_policy, views
    out = {label: {'positive': 0, 'negative': 0}
           for label in self.label_names(labels)}
    for index, source in enumerate(self.sources):
      if all(len(c) <= 1 for c in source.columns):
        counts = self._column_counts(source, split)
        for label, columns in zip(self._label_names, source.columns):
          for column in columns:
            for kind in ('positive', 'negative'):
              out[label][kind] += counts[source.own_names[column]][kind]
        continue
      # A label from several of the source's names: count the combined
      # targets, read once.
      targets = np.concatenate([t for _, t in self.source_dataset(
          index, split, 1024).as_numpy_iterator()]) if self.num_examples(
              split) else np.zeros((0, len(self._label_names)))
      for label_index, label in enumerate(self._label_names):
        if source.columns[label_index]:
          column = targets[:, label_index]
          out[label]['positive'] += int((column == 1).sum())
          out[label]['negative'] += int((column == 0).sum())
    return out

  def _column_counts(self, source, split):
    """{own name: {'positive', 'negative'}} of one source's split."""
    return source.builder.target_counts(split, source.label_policy,
                                        source.own_names)
