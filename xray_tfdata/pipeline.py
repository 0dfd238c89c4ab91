"""DatasetBuilder: reads the TFRecord shards into tf.data pipelines.

The training pipeline follows the tf.data performance guide: shuffled shard
list, parallel interleave, parallel parse+decode, cache of the decoded
images, shuffle (anew every pass), batch, prefetch; one pass unless asked
to repeat, as `tfds` datasets are. It does no augmentation and no
float conversion: batches leave the host as uint8 grayscale, twelve times
fewer bytes than float32 RGB, and the augmentation runs on the device inside
the model (see `xray_tfdata.augment`).

`as_dataset` reads as a list of stages, after TF Model Garden's
`InputReader.read`: the shard files, the records, the view filter, the
decode, the optional tf.data service, then cache, shuffle, repeat, batch and
options. Its less common knobs live in a `ReadConfig`, as in
`tfds.ReadConfig`.

Every dataset is read as float32 targets [B, L] with label names
(`DatasetBuilder.label_names`). A class dataset (class folders, RSNA) is
L = 1, its one label named by its positive class (PNEUMONIA): the target is
1 for that class. A multi-label dataset (xray_info.json lists
'label_names') stores raw codes per label; the reader turns them into
targets under a label policy (`xray_tfdata.labels`: 1, 0, or
`labels.MASKED`), selects label names, and keeps only the views asked for,
counting what it drops (the selection and the counts:
`xray_tfdata.selection`).
"""

import dataclasses
import functools
import numbers
from typing import Any, Optional, Union

import tensorflow as tf

from xray_tfdata import cache as cache_lib
from xray_tfdata import checks
from xray_tfdata import data_service as data_service_lib
from xray_tfdata import labels as labels_lib
from xray_tfdata import schema
from xray_tfdata import selection as selection_lib
from xray_tfdata import verify as verify_lib
# The dataset's contract and the verifier's error, under the names that
# DatasetBuilder's users catch and build.
from xray_tfdata.dataset_info import DatasetError, DatasetInfo, load_info  # pylint: disable=unused-import
from xray_tfdata.verify import DamagedShardError, find_damaged_shard  # pylint: disable=unused-import

AUTOTUNE = tf.data.AUTOTUNE

# Cache decoded images in memory when the split is at most this large (a
# larger one goes to ReadConfig.cache_dir; see xray_tfdata.cache).
DEFAULT_CACHE_LIMIT_BYTES = cache_lib.DEFAULT_CACHE_LIMIT_BYTES

# Without the cache the shuffle buffer is the only copy of the decoded images
# in memory, so a whole-split buffer would hold the split anyway: exactly what
# cache=False is asked for to avoid. 256 MiB is about 5,300 images at
# 224x224x1, more than the whole Kermany training split (which 'auto' caches
# anyway), and still over 1,000 at 512x512; the shard-order shuffle and the
# interleave of up to 16 shards mix beyond the buffer.
UNCACHED_SHUFFLE_BUFFER_BYTES = 256 * 1024**2

# Shards read at once while training.
_MAX_INTERLEAVE = 16
# How a view filter names images whose view the source leaves out (declared
# in xray_tfdata.selection).
UNKNOWN_VIEW = selection_lib.UNKNOWN_VIEW

@dataclasses.dataclass(frozen=True)
class ReadConfig:
  """The less common knobs of `DatasetBuilder.as_dataset`.

  Like `tfds.ReadConfig`: the common arguments stay in the call, these travel
  together. Each field can also be passed to `as_dataset` as a keyword of
  the same name (the keywords it had before `ReadConfig`), which then
  overrides the field.

  Attributes:
    cache: True (in memory), False, or 'auto': in memory when the decoded
      split is at most cache_limit_bytes, else on disk in cache_dir if given,
      and never when a tf.data service reads it (see xray_tfdata.cache).
    cache_dir: local folder for the decoded split when it does not fit in
      memory, reused by later runs of the same dataset, split and size;
      None: such a split is decoded again every epoch.
    cache_limit_bytes: the memory budget for 'auto'; None:
      DEFAULT_CACHE_LIMIT_BYTES.
    shuffle_buffer: examples in the shuffle buffer (training); None: the
      whole split when cached, else at most UNCACHED_SHUFFLE_BUFFER_BYTES of
      decoded images.
    channels: 1 (what the VGG16 builder takes) or 3 (the grey channel
      repeated, as other `keras.applications` models take); None: as stored,
      which is 1 for every dataset tools/make_tfrecords writes.
    input_context: a `tf.distribute.InputContext`, to shard by file across
      input pipelines (`distribute_datasets_from_function`).
    data_service: address of a tf.data service dispatcher ('host:port'):
      read and decode on its workers, each example once per epoch (see
      `xray_tfdata.data_service`); the order is then never deterministic,
      and 'auto' does not cache.
    data_service_job: a job name the trainers of one multi-worker run share,
      so that together they read each example once per epoch.
    auto_shard_policy: a `tf.data.experimental.AutoShardPolicy` for when
      tf.distribute distributes the dataset; None: by file when training on
      several shards, by data when evaluating (see `_auto_shard_policy`), off
      with the service.
  """
  cache: Union[bool, str] = 'auto'
  cache_dir: Optional[str] = None
  cache_limit_bytes: Optional[int] = None
  shuffle_buffer: Optional[int] = None
  channels: Optional[int] = None
  input_context: Any = None
  data_service: Optional[str] = None
  data_service_job: Optional[str] = None
  auto_shard_policy: Any = None


def _selection_method(name):
  """DatasetBuilder's method `name`: Selection's, with its signature and
  docstring."""
  @functools.wraps(getattr(selection_lib.Selection, name))
  def method(self, *args, **kwargs):
    return getattr(self._selection, name)(*args, **kwargs)
  return method


class DatasetBuilder:
  """Reads a dataset converted by `tools/make_tfrecords`.

  Usage:
    builder = DatasetBuilder('/data/kermany_224')
    builder.info.class_weights()            # {0: 1.85, 1: 0.68}
    builder.label_names()                   # ('PNEUMONIA',)
    ds = builder.as_dataset('train', batch_size=62, training=True)
    ds = builder.as_dataset('val', 62, read_config=ReadConfig(channels=3))

  `data_dir` may be any `tf.io.gfile` path (local, gs://, ...).
  """

  def __init__(self, data_dir, positive_class=None, reader_policy=None):
    """Reads the dataset's metadata.

    Args:
      data_dir: the converted dataset.
      positive_class: for a class dataset of two classes, the class labelled
        1 and the name of its one label (the model's P(positive)); None
        keeps the stored ids, where the second class in sorted order
        (PNEUMONIA) is 1. The other class is then 0, and `info.class_names`
        lists the two in that order.
      reader_policy: for a dataset that keeps every reader (VinDr-CXR), how
        the readers' marks make a label's code (`checks.READER_POLICIES`;
        None: `checks.DEFAULT_READER_POLICY`); other datasets ignore it.

    Raises:
      DatasetError: see `load_info`; positive_class is not one of two
        classes of the dataset; an unknown reader policy.
    """
    self.data_dir = data_dir
    self.info = load_info(data_dir)
    # The stored class names and ids, whatever positive_class reorders.
    self.stored_class_names = self.info.class_names
    self._positive_id = None  # the stored id read as label 1, None: as stored
    if positive_class is not None:
      names = self.info.class_names
      if self.info.is_multilabel:
        raise DatasetError(
            f'positive_class {positive_class!r} applies to class '
            f'datasets; {data_dir} is multi-label ({", ".join(names)}): '
            'pick labels with --labels=NAME,NAME instead')
      if len(names) != 2 or positive_class not in names:
        raise DatasetError(
            f'positive_class {positive_class!r} is not one of the two classes '
            f'of {data_dir} (it has {", ".join(names)}): pass '
            f'--positive_class={names[-1]}, for example')
      positive = names.index(positive_class)
      if positive != 1:
        self._positive_id = positive
        self.info = dataclasses.replace(
            self.info, class_names=(names[1 - positive], positive_class))
    # The labels and views of multi-label reads, each split's views
    # counted once.
    self._selection = selection_lib.Selection(self.info, self.shard_paths,
                                              reader_policy)

  def shard_paths(self, split):
    """The split's shard paths in index order, checked on disk; see
    `xray_tfdata.verify.checked_shard_paths` (raises)."""
    return verify_lib.checked_shard_paths(self.info, split)

  def verify(self, splits=None):
    """Reads every record and checks it against its CRCs and the metadata;
    see `xray_tfdata.verify.verify` (args, returns, raises)."""
    return verify_lib.verify(self, splits)

  def as_dataset(self, split, batch_size=None, training=False, *,
                 image_size=None, resize=False, seed=None, repeat=False,
                 with_metadata=False, read_config=None,
                 label_policy=checks.DEFAULT_LABEL_POLICY, labels=None,
                 views=None, label_methods=None, with_mask=False,
                 **read_options):
    """Builds the tf.data pipeline for one split.

    Args:
      split: 'train', 'val' or 'test' (whatever the dataset has).
      batch_size: per-replica batch size, or None for single examples.
      training: shuffle (a new order every pass) and drop the last partial
        batch (training order is non-deterministic for speed); otherwise one
        exact, deterministic pass in shard order.
      image_size: (height, width) or an int the model expects; None means
        the stored size. Another size than stored raises, unless `resize`.
      resize: resize on purpose (anti-aliased bilinear) to `image_size`.
      seed: seed for the file and example shuffles.
      repeat: repeat forever. Default False: one pass, as `tfds` gives, so
        `Model.fit(ds, epochs=N)` needs no `steps_per_epoch` (each epoch is a
        new iteration, hence a new shuffle). With repeat, pass
        `steps_per_epoch` to `Model.fit` (see `steps_per_epoch()`).
      with_metadata: yield a third element, a dict with the file name and
        patient id (evaluation and error analysis); for a multi-label
        dataset also 'view', 'sex', 'age_years' and 'study_id' (what its
        records store); 'detailed_class' (RSNA) and 'label_method'
        (PadChest) where stored.
      with_mask: with with_metadata, also 'mask', the record's stored mask
        (a dataset with masks, SIIM: `schema.MASK`), uint8 [H, W], a
        pixel's share in the regions times 255 (inside at
        `schema.MASK_INSIDE`), resized as the image is.
      read_config: a `ReadConfig` with the less common knobs (cache, shuffle
        buffer, channels, input context, tf.data service, sharding).
      label_policy: a multi-label dataset's policy (`checks.LABEL_POLICIES`)
        from raw codes to targets; a class dataset stores no codes, so none
        applies to it.
      labels: the label names to read, in this order (`label_names()`
        lists them; a class dataset has one, its positive class); None: all.
      views: a multi-label dataset's views to keep ('PA', 'AP', ... as the
        source spells them; `UNKNOWN_VIEW` for images without one); None
        keeps every image. `num_examples` and
        `view_filter_line` count what they keep.
      label_methods: of a dataset that stores how each image's labels were
        made (PadChest: 'Physician', 'RNN_model'), the methods to keep, as
        views; None keeps every image.
      **read_options: any `ReadConfig` field by name (`cache=False`,
        `data_service=...`); overrides the same field of `read_config`.

    Returns:
      A `tf.data.Dataset` of (uint8 images [B, H, W, C], float32 targets
      [B, L]), C = `read_config.channels` (default: as stored, 1), L =
      `len(label_names(labels))`, without the batch dimension when
      batch_size is None. A target is 1, 0, or `labels.MASKED` where a
      multi-label dataset's policy masks the code; a class dataset's is 1
      for its positive class.

    Raises:
      DatasetError: unknown or empty split, batch_size not an integer of
        at least 1, channels other than 1 or 3, a size mismatch, metadata
        (sizes, class names) that disagrees with the shards, a missing
        or truncated shard; an unknown label policy or label name, views
        asked of a class dataset (its records store none), or views that
        keep no image of the split; label methods of a dataset that stores
        none, or that keep no image; with_mask without with_metadata, or of
        a dataset without masks.
      TypeError: a keyword that is not a `ReadConfig` field.
    """
    config = _resolve_read_config(read_config, read_options)
    _check_with_mask(self, with_metadata, with_mask)
    if batch_size is not None:
      batch_size = _check_batch_size(batch_size)
    if config.channels not in (None, 1, 3):
      raise DatasetError(f'channels must be 1 or 3, got {config.channels}')
    targets = self._selection.targets(label_policy, labels)
    views = self._selection.check_views(views)
    label_methods = self._selection.check_label_methods(label_methods)
    paths = self.shard_paths(split)
    verify_lib.check_first_record(self.info, split, paths,
                                  self.stored_class_names)
    size = _output_size(self.info, image_size, resize)
    # A grey dataset is decoded to one channel and widened to three at the
    # end (see below); anything else is decoded to what is asked for.
    to_rgb = config.channels == 3 and self.info.channels == 1
    channels = 1 if to_rgb else config.channels or self.info.channels

    files = self._read_files(split, paths, training, seed, config)
    ds = self._read_records(files, len(paths), training)
    # Before the decode: a dropped image is never decoded.
    ds = self._selection.filter_records(ds, split, views, label_methods)
    # Always with the metadata, dropped after the cache when not asked for:
    # training and the evaluation (which asks for it) then share one cache
    # of each split instead of decoding and writing it twice. The mask
    # changes the element spec, hence the cache key below.
    ds = self._decode(ds, size, channels, resize, True, training, targets,
                      with_mask)
    ds = self._maybe_apply_data_service(ds, config)
    ds = self._maybe_assert_cardinality(ds, split, config, views,
                                        label_methods)

    num_examples = self.info.num_examples(split)
    example_bytes = size[0] * size[1] * channels
    key = _split_cache_key(self.info, self._positive_id, ds, split, size,
                           channels, resize, targets,
                           (views, label_methods), config)
    choice = _choose_cache(config, num_examples * example_bytes, key)
    cache_lib.say(choice, split, self.data_dir)
    # After decode: later epochs skip both file reads and PNG decoding.
    ds = cache_lib.apply(ds, choice, key)
    if not with_metadata:
      ds = ds.map(lambda image, target, metadata: (image, target),
                  num_parallel_calls=AUTOTUNE, deterministic=True)
    if training:
      # After the cache, so every epoch gets a fresh order; before repeat, so
      # one epoch is all seen before the next begins.
      buffer = config.shuffle_buffer or _default_shuffle_buffer(
          num_examples, example_bytes, choice.kind == cache_lib.MEMORY)
      ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
      ds = ds.repeat()
    if batch_size is not None:
      # Batches leave in order even when training: out-of-order batches would
      # let the next epoch's examples overtake this one's under repeat=True.
      ds = ds.batch(batch_size, drop_remainder=training,
                    num_parallel_calls=AUTOTUNE, deterministic=True)
    if to_rgb:
      # Last, on whole batches: the cache and the shuffle buffer keep one
      # channel, a third of the memory.
      ds = ds.map(_to_rgb)
    ds = ds.prefetch(AUTOTUNE)
    return ds.with_options(_options(training, len(paths), config))

  def steps_per_epoch(self, split, batch_size, training=True, views=None,
                      label_methods=None):
    """Batches in one pass over the split (the last partial batch is dropped
    when training), of the images `views` and `label_methods` keep (None:
    all).

    Raises:
      DatasetError: an unknown split, batch_size not an integer of at
        least 1, or views as `num_examples`.
    """
    batch_size = _check_batch_size(batch_size)
    n = self.num_examples(split, views, label_methods)
    return n // batch_size if training else -(-n // batch_size)

  # Label names of every dataset, views and label methods of multi-label
  # ones: `xray_tfdata.selection.Selection`'s methods (docs, arguments).
  (label_names, views, label_methods, num_examples, label_code_counts,
   target_counts, view_filter_line) = map(_selection_method, (
       'label_names', 'views', 'label_methods', 'num_examples',
       'label_code_counts', 'target_counts', 'view_filter_line'))

  # The stages of as_dataset, in pipeline order.

  def _read_files(self, split, paths, training, seed, config):
    """The dataset of shard paths this input pipeline reads."""
    files = tf.data.Dataset.from_tensor_slices(paths)
    context = config.input_context
    # With the service its dispatcher hands the files out instead.
    if (context is not None and context.num_input_pipelines > 1
        and not config.data_service):
      if len(paths) < context.num_input_pipelines:
        raise DatasetError(
            f'split {split!r} has {len(paths)} shards for '
            f'{context.num_input_pipelines} input pipelines; re-convert '
            'with more --num_shards')
      # Shard by file, before anything else, so workers read disjoint files.
      files = files.shard(context.num_input_pipelines,
                          context.input_pipeline_id)
    if training:
      files = files.shuffle(len(paths), seed=seed)
    return files

  def _read_records(self, files, num_shards, training):
    """The serialized records of the files."""
    if training:
      # Several shards read at once hide file latency (gs://) and mix classes.
      return files.interleave(tf.data.TFRecordDataset,
                              cycle_length=min(num_shards, _MAX_INTERLEAVE),
                              num_parallel_calls=AUTOTUNE,
                              deterministic=False)
    # One shard after another: evaluation order is the order on disk.
    return files.interleave(tf.data.TFRecordDataset, cycle_length=1)

  def _decode(self, records, size, channels, resize, with_metadata,
              training, targets=None, with_mask=False):
    """(image, targets [L][, metadata]) examples of the records."""
    decode = _make_decoder(self.info.format_version, channels, size,
                           resize and size != self.info.image_size,
                           with_metadata, self._positive_id,
                           len(self.info.label_names), targets,
                           mask=with_mask, texts=tuple(
                               key for key in _TEXT_EXTRAS
                               if key in self.info.extra_features))
    return records.map(decode, num_parallel_calls=AUTOTUNE,
                       deterministic=not training)

  def _maybe_apply_data_service(self, ds, config):
    """Moves the stages so far onto the tf.data service, if asked."""
    if not config.data_service:
      return ds
    # Everything above runs on the service's workers, everything below here.
    # Per example, not per batch: a batch then mixes the workers' files, and
    # no worker drops a last partial batch of its own.
    return data_service_lib.distribute(ds, config.data_service,
                                       config.data_service_job)

  def _maybe_assert_cardinality(self, ds, split, config, views=None,
                                label_methods=None):
    """Tells tf.data (and Keras) the split's size, where this pipeline reads
    all of it."""
    context = config.input_context
    # Not with the service: a shared job gives this trainer only a part, and
    # a service worker that fails loses the rest of its files.
    if ((context is not None and context.num_input_pipelines > 1)
        or config.data_service):
      return ds
    # The count is known from xray_info.json (with a view filter, from the
    # count of the views): Keras then knows the number of batches (no 'ran
    # out of data' warning after validation), and a shard that lost records
    # fails loudly instead of silently (see find_damaged_shard).
    return ds.apply(tf.data.experimental.assert_cardinality(
        self.num_examples(split, views, label_methods)))


def _resolve_read_config(read_config, read_options):
  """`read_config` with the keywords given to as_dataset applied."""
  fields = {f.name for f in dataclasses.fields(ReadConfig)}
  unknown = sorted(set(read_options) - fields)
  if unknown:
    raise TypeError(f'as_dataset() got unexpected keyword arguments {unknown}; '
                    f'it takes the ReadConfig fields {sorted(fields)}')
  return dataclasses.replace(read_config or ReadConfig(), **read_options)


def _choose_cache(config, decoded_bytes, key):
  """Where as_dataset caches the decoded split: a `cache.CacheChoice`.

  'auto' caches in memory what fits under config.cache_limit_bytes, on disk
  in config.cache_dir what does not, and nothing with the service: the
  service is for splits too large to cache, and a cache here would freeze a
  trainer's share of the first epoch of a shared job.
  """
  limit = (DEFAULT_CACHE_LIMIT_BYTES if config.cache_limit_bytes is None
           else config.cache_limit_bytes)
  return cache_lib.choose(config.cache, decoded_bytes, config.data_service,
                          config.cache_dir, limit, key)


def _targets_key(targets):
  """A multi-label read's (target rule, label indices) as JSON-ready
  lists; None for a class dataset's read (its one target is fixed by the
  positive class, which the cache key holds)."""
  if targets is None:
    return None
  rule, indices = targets
  return {**rule.key(), 'labels': [int(i) for i in indices]}


def _input_shard(config):
  """(input pipelines, this one's id) when this pipeline reads a part of
  the files, else None: a disk cache holds only that part."""
  context = config.input_context
  if context is None or context.num_input_pipelines <= 1:
    return None
  return (context.num_input_pipelines, context.input_pipeline_id)


def _default_shuffle_buffer(num_examples, example_bytes, cached):
  """Examples in the training shuffle buffer when none was asked for."""
  if cached:
    # The buffer holds references to the cached tensors: a whole-split
    # buffer costs little and gives a full shuffle.
    return num_examples
  return max(1, min(num_examples,
                    UNCACHED_SHUFFLE_BUFFER_BYTES // example_bytes))


def _auto_shard_policy(training, num_shards, data_service):
  """How tf.distribute shards the dataset across workers.

  Training shards by file (each worker reads its own shards) when there are
  several. Evaluation shards by data: every worker reads the whole split and
  each global batch is split between them, so the steps are the dataset's
  and the predictions keep the disk order (see distribute.shard_by_batch,
  which then finds DATA already set: changing FILE to DATA there made
  tf.data log "Changing the value of option auto_shard_policy" each time).
  """
  policy = tf.data.experimental.AutoShardPolicy
  if data_service:
    # Trainers share the service's job instead: sharding would drop data.
    return policy.OFF
  return policy.FILE if training and num_shards > 1 else policy.DATA


def _options(training, num_shards, config):
  """The dataset's options: determinism and how tf.distribute shards it."""
  options = tf.data.Options()
  options.deterministic = not training
  options.experimental_distribute.auto_shard_policy = (
      config.auto_shard_policy if config.auto_shard_policy is not None else
      _auto_shard_policy(training, num_shards, config.data_service))
  return options


def _output_size(info, image_size, resize):
  """(height, width) as_dataset yields: image_size, the stored size if
  None; DatasetError for another size than stored unless resize."""
  stored = info.image_size
  if image_size is None:
    return stored
  if isinstance(image_size, int):
    image_size = (image_size, image_size)
  image_size = tuple(int(s) for s in image_size)
  if image_size != stored and not resize:
    raise DatasetError(
        f'images in {info.data_dir} are stored at {stored[0]}x{stored[1]} '
        f'but {image_size[0]}x{image_size[1]} was asked for; re-convert with '
        f'tools/make_tfrecords --image_size={image_size[0]}, or resize on '
        'purpose (resize=True)')
  return image_size


def _to_rgb(images, *rest):
  """Repeats the grey channel three times (uint8 stays uint8)."""
  return (tf.image.grayscale_to_rgb(images),) + rest


def _split_cache_key(info, positive_id, ds, split, size, channels, resize,
                     targets, kept, config):
  """The cache key of one split's decoded elements (`cache.cache_key`)."""
  return cache_lib.cache_key(
      info.fingerprint(), split,
      dict(size=list(size), channels=channels, resize=bool(resize),
           with_metadata=True, positive_id=positive_id,
           # The targets are made in the decode and the view and label
           # method filters run before it: the cache holds all three.
           targets=_targets_key(targets),
           **_filter_key(*kept)),
      _input_shard(config), ds.element_spec)


def _filter_key(views, label_methods):
  """The cache key's part for the record filters; a key without label
  methods is that of before they existed, so older caches still match."""
  key = dict(views=list(views) if views else None)
  if label_methods:
    key['label_methods'] = list(label_methods)
  return key


def _check_with_mask(builder, with_metadata, with_mask):
  """Raises DatasetError for with_mask without with_metadata, or of a
  dataset that stores no masks."""
  if with_mask and not with_metadata:
    raise DatasetError('with_mask returns the mask in the metadata: pass '
                       'with_metadata=True too')
  if with_mask and schema.MASK not in builder.info.extra_features:
    raise DatasetError(f'with_mask: {builder.data_dir} stores no masks (only '
                       'a SIIM conversion does)')


def _check_batch_size(batch_size):
  """batch_size as an int; DatasetError unless it is an integer >= 1."""
  if (isinstance(batch_size, bool) or
      not isinstance(batch_size, numbers.Integral) or batch_size < 1):
    raise DatasetError(f'batch_size must be at least 1, a whole number of '
                       f'examples; got {batch_size!r}')
  return int(batch_size)


def _reader_codes(record, num_labels, reader_policy):
  """A record's codes made from its readers' marks (`labels.reader_codes`,
  the same rule in TensorFlow)."""
  readers = tf.io.parse_single_example(record, schema.reader_spec(num_labels))
  marked_by = readers[schema.MARKED_BY]
  num_readers = readers[schema.NUM_READERS]
  a, b, c = labels_lib.READER_RULES[reader_policy]
  chosen = tf.logical_and(marked_by >= 1,
                          a * marked_by > b * num_readers + c)
  return tf.cast(chosen, tf.int64)


# The text extra features the reader yields in the metadata where a
# dataset's records store them, by the metadata's name for them.
_TEXT_EXTRAS = {schema.DETAILED_CLASS: 'detailed_class',
                schema.LABEL_METHOD: 'label_method'}


def _make_decoder(format_version, channels, size, resize, with_metadata,
                  positive_id=None, num_labels=0, targets=None, mask=False,
                  texts=()):
  """The record -> (image, targets float32 [L][, metadata]) function.

  A multi-label dataset's (num_labels > 0) targets come from its raw codes
  and `targets` = (`labels.TargetRule`, indices of the labels read); a
  class dataset's one target is its class id (with positive_id: 1 for
  that stored class id and 0 for the other), as [1]. With mask (and
  with_metadata) the metadata also holds the stored mask, uint8 [H, W],
  resized as the image is; `texts`, keys of `_TEXT_EXTRAS` the records
  store (RSNA's detailed class, PadChest's label method), are added to the
  metadata under their names."""
  mask = mask and bool(with_metadata)  # parsed only where it is returned
  texts = tuple(texts) if with_metadata else ()

  def decode(record):
    features = schema.parse(record, format_version, num_labels, mask, texts)
    image = tf.io.decode_png(features[schema.ENCODED], channels=channels)
    if resize:
      image = tf.image.resize(image, size, antialias=True)
      image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    image = tf.ensure_shape(image, (size[0], size[1], channels))
    if num_labels:
      rule, indices = targets
      codes = features[schema.LABELS]
      if rule.reader_policy is not None:
        codes = _reader_codes(record, num_labels, rule.reader_policy)
      # The policy is a lookup: a table of the targets of codes -2..1.
      label = tf.gather(tf.constant(rule.table, tf.float32),
                        codes - labels_lib.OFFSET)
      if rule.no_finding is not None:
        # Before the selection: No Finding need not be a label read.
        healthy = tf.equal(codes[rule.no_finding], 1)
        label = tf.where(tf.logical_and(healthy, tf.constant(rule.cleared)),
                         tf.zeros_like(label), label)
      label = tf.gather(label, indices)
    else:
      label = features[schema.LABEL]
      if positive_id is not None:
        label = tf.cast(tf.equal(label, positive_id), tf.int64)
      # [1]: the one label of a class dataset, as every dataset's [L].
      label = tf.reshape(tf.cast(label, tf.float32), [1])
    if with_metadata:
      metadata = {
          'filename': features[schema.FILENAME],
          'patient_id': features[schema.PATIENT_ID],
      }
      if num_labels:  # what only multi-label records store
        metadata.update(view=features[schema.VIEW],
                        sex=features[schema.SEX],
                        age_years=features[schema.AGE_YEARS],
                        study_id=features[schema.STUDY_ID])
      metadata.update({_TEXT_EXTRAS[key]: features[key] for key in texts})
      if mask:
        region = tf.io.decode_png(features[schema.MASK], channels=1)
        if resize:
          region = tf.image.resize(region, size, antialias=True)
          region = tf.cast(tf.clip_by_value(tf.round(region), 0, 255),
                           tf.uint8)
        metadata['mask'] = tf.ensure_shape(region, (size[0], size[1], 1))[
            ..., 0]
      return image, label, metadata
    return image, label

  return decode
