"""TrainConfig: the settings of one training run, declared once, without TF.

Each setting is one `TrainConfig` field whose metadata holds its help text,
its group in `--help`, its bounds and its allowed values. From that one
declaration come the flags of tools/train (`define_flags`), the config read
back from them (`from_flags`), the flagfile lines that give a config
(`to_flags`) and the checks (`TrainConfig.validate`, with `checks`). The
defaults are the reference experiment's (`reference`).

Kept apart from `training` so that `tools/train` can define its flags (and
the converter's spawned workers, which re-import the tool, can start) without
importing TensorFlow.
"""

import dataclasses

from xray_tfdata import checks
from xray_tfdata import reference

# Settings a resumed run may change: how it is watched and where its data
# comes from, not what it trains.
RESUMABLE_CHANGES = ('verbose', 'data_service', 'data_service_timeout',
                     'cache_dir', 'cache_limit')

# The groups of tools/train's --help, in order.
GROUPS = ('data', 'model', 'augmentation', 'training', 'distribution',
          'output')


# One class: a setting that cannot work and a model_dir that cannot be used
# are both the user's to fix.
TrainingError = checks.SettingError


def _setting(default, help_text, group, choices=None, lower=None, upper=None,
             required=False):
  """A TrainConfig field with its flag's declaration in the metadata.

  Args:
    default: the value when the flag is not given.
    help_text: the flag's help.
    group: one of GROUPS.
    choices: allowed values (an enum flag), or None.
    lower, upper: inclusive bounds, or None.
    required: tools/train needs the flag (its default stays for Python
      callers).

  Returns:
    A dataclasses.field.
  """
  assert group in GROUPS, group
  return dataclasses.field(default=default, metadata=dict(
      help=help_text, group=group, choices=choices, lower=lower, upper=upper,
      required=required))


def _augmentation_setting(name, help_text, lower=0.):
  default = reference.AUGMENTATION[name]
  if not isinstance(default, bool):
    default = float(default)  # the flag's type, as config.json records it
  return _setting(default, help_text, 'augmentation', lower=lower)


@dataclasses.dataclass
class TrainConfig:
  """Settings of one training run; every field is a flag of tools/train."""
  data_dir: str = _setting(
      '', 'Dataset made by tools/make_tfrecords; several, comma-separated '
      '(DIR1,DIR2,...), train one model on their union of labels in '
      'xray_tfdata.vocabulary (a mixture: a label a dataset does not '
      'report is masked in its images), each resized to --image_size.',
      'data', required=True)
  image_size: int = _setting(
      reference.IMAGE_SIZE,
      'Model input size; must equal the stored size (vgg16: 32 or '
      'more; mini_vgg: 16 or more; densenet121, resnet50, efficientnetv2s: '
      '32 to 512).', 'data', lower=1)
  batch_size: int = _setting(
      reference.BATCH_SIZE,
      'Global batch size (split across replicas).', 'training', lower=1)
  epochs: int = _setting(
      100, 'Maximum epochs (early stopping may end sooner).', 'training',
      lower=1)
  learning_rate: float = _setting(reference.LEARNING_RATE,
                                  'Adam learning rate (> 0).', 'training')
  weights: str = _setting(
      'imagenet', "Backbone weights: 'imagenet' (Keras download/cache, "
      "~/.keras/models/), 'none', or a local notop .h5/.weights.h5 path.",
      'model')
  frozen_blocks: int = _setting(
      reference.FROZEN_BLOCKS,
      'Backbone stages frozen from the input up (the reference: 4), '
      'their batch norm kept in inference mode; stages per backbone: '
      + checks.frozen_blocks_help() + '. The stem goes with the first '
      'stage, layers after the last with the last.', 'model', lower=0,
      upper=max(checks.BACKBONE_BLOCKS.values()))
  backbone: str = _setting(
      reference.BACKBONE,
      'vgg16 (the reference); densenet121 (CheXNet\'s), resnet50, '
      'efficientnetv2s (keras.applications); or mini_vgg: a small '
      'VGG-style net with batch norm, trained from scratch (the demo and '
      'the synthetic recipes).',
      'model', choices=checks.BACKBONES)
  head: str = _setting(
      'auto', 'The head on the backbone: dense = Flatten -> --dense_units '
      'with --dropout -> Dense(L) (the reference notebook\'s); pooling = '
      'global average pooling -> Dense(L) (CheXNet, torchxrayvision); auto = '
      'dense for a single-label vgg16 or mini_vgg run, pooling for every '
      'multi-label run and the other backbones (the dense head collapses '
      'under the field\'s label frequencies, BUILD_NOTES.md).', 'model',
      choices=checks.HEADS)
  dense_units: tuple = _setting(
      reference.DENSE_UNITS,
      'Widths of the dense head layers (--head=dense).',
      'model')
  dropout: float = _setting(
      reference.DROPOUT,
      'Dropout after each dense head layer, in [0, 1) (--head=dense).',
      'model', lower=0)
  augmentation: str = _setting(
      'fused', 'fused RandomAffine (one resampling pass), the keras-cv chain '
      '(TensorFlow only), the Keras 3 core layers chain keras_core (five '
      'passes, any backend), or none.', 'augmentation',
      choices=checks.AUGMENTATIONS)
  rotation_range: float = _augmentation_setting(
      'rotation_range', 'Degrees, as ImageDataGenerator.')
  width_shift_range: float = _augmentation_setting(
      'width_shift_range', 'Fraction of width; moves images horizontally '
      '(ImageDataGenerator\'s height_shift_range does, keras #17398).')
  height_shift_range: float = _augmentation_setting(
      'height_shift_range', 'Fraction of height; moves images vertically.')
  shear_range: float = _augmentation_setting(
      'shear_range', 'Shear angle in degrees, as ImageDataGenerator.')
  zoom_range: float = _augmentation_setting(
      'zoom_range', 'Zoom factors uniform in [1-z, 1+z] per axis; below 1.')
  horizontal_flip: bool = _augmentation_setting(
      'horizontal_flip', 'Random horizontal flips.', lower=None)
  class_weights: bool = _setting(
      True, "Class datasets (one label): weight classes 'balanced', as the "
      'reference does, each training entry by its class (the training loss '
      'equals Keras\' BinaryCrossentropy with class_weight; val_loss stays '
      'unweighted); --noclass_weights: unweighted. Multi-label datasets '
      'weigh with --label_weights instead.', 'training')
  label_weights: str = _setting(
      'none', 'Multi-label datasets: none = plain binary cross-entropy over '
      'the known targets (torchxrayvision\'s; the default, chosen by '
      'measurement, BUILD_NOTES.md); ratio = each label\'s positive terms '
      'weighed by its negatives / positives among the known training '
      'targets, capped at --pos_weight_cap (uncapped, NIH\'s Hernia gets '
      'about 490 and the head collapses).', 'training',
      choices=checks.LABEL_WEIGHTINGS)
  pos_weight_cap: float = _setting(
      10.0, 'Largest pos_weight under --label_weights=ratio (>= 1).',
      'training', lower=1.0)
  lr_plateau_patience: int = _setting(
      0, 'Epochs without val_loss improvement before the learning rate is '
      'divided by 10 (CheXNet\'s schedule); 0: a constant learning rate. A '
      'resumed run keeps the learning rate it reached and counts the '
      'epochs anew.', 'training', lower=0)
  early_stopping_patience: int = _setting(
      reference.EARLY_STOPPING_PATIENCE,
      'Epochs without val_loss improvement before stopping.', 'training',
      lower=1)
  policy: str = _setting(
      'auto', 'Keras dtype policy; auto picks by hardware.', 'model',
      choices=('auto',) + checks.POLICIES)
  jit_compile: bool = _setting(False, 'Compile the train step with XLA.',
                               'model')
  strategy: str = _setting(
      'auto', 'tf.distribute strategy: auto = multi_worker when TF_CONFIG '
      'names several workers, else mirrored when there are several GPUs, '
      'else one_device.', 'distribution', choices=checks.STRATEGIES)
  data_service: str = _setting(
      '', 'HOST:PORT of a tf.data service dispatcher (tools/data_service) to '
      'read and decode the training split on; empty reads it here.',
      'distribution')
  data_service_timeout: int = _setting(
      600, 'Seconds without a training batch from --data_service before '
      'training stops with an error (a line every minute says it is '
      'waiting); a rerun resumes from the last finished epoch.',
      'distribution', lower=1)
  steps_per_epoch: int = _setting(
      0, 'Training steps per epoch; 0 = one pass over the training split.',
      'training', lower=0)
  bootstrap_resamples: int = _setting(
      2000, 'Resamples for the test AUC 95% interval.', 'training',
      lower=100)
  seed: int = _setting(
      0, f'Random seed, 0..{checks.MAX_SEED} (what Keras seeds NumPy with).',
      'training', lower=0, upper=checks.MAX_SEED)
  verbose: int = _setting(
      1, "Output while training: 0 silent, 1 Keras' progress bar, 2 one "
      'short line per epoch (time, images/s, loss and AUC).', 'training',
      lower=0, upper=2)
  positive_class: str = _setting(
      '', 'The class the model scores, P(positive_class), labelled 1; empty: '
      'the second of the two class names in sorted order (PNEUMONIA in '
      'Kermany), which also names the one label. Class datasets of other '
      'than two classes are refused; a multi-label dataset has no positive '
      'class (see --labels).', 'data')
  label_policy: str = _setting(
      checks.DEFAULT_LABEL_POLICY, 'Multi-label datasets: targets of the '
      'stored codes. u_ones: uncertain -> 1, not mentioned -> 0; u_zeros: '
      'both -> 0; u_ignore: uncertain masked (no loss, no metric), not '
      'mentioned -> 0; txv: torchxrayvision\'s targets (CheXpert, MIMIC: '
      'No Finding = 1 sets the other labels to 0, then both masked). '
      'Class '
      'datasets store no codes: ignored.', 'data',
      choices=checks.LABEL_POLICIES)
  labels: tuple = _setting(
      (), 'The labels to train on, in the model\'s output order, spelled '
      'as the dataset\'s label names (e.g. Effusion,Pleural_Thickening; a '
      'class dataset has one, its positive class, PNEUMONIA); of several '
      '--data_dir, spelled as xray_tfdata.vocabulary names them (Effusion, '
      'not Pleural Effusion); empty: all of them.', 'data')
  views: tuple = _setting(
      (), 'Multi-label datasets: the views to keep, as the source spells '
      'them (e.g. PA,AP; unknown: images without one); empty keeps every '
      'image. The run prints what it keeps and drops of each split.',
      'data')
  dataset_weights: tuple = _setting(
      (), 'Several --data_dir: each dataset\'s share of the training '
      'batches, one positive number per dataset in --data_dir order '
      '(normalized). Empty: in proportion to their sizes, each training '
      'image drawn once per pass (sampling without replacement); given: '
      'each dataset repeats and batches draw from them by weight (with '
      'replacement), an epoch being --steps_per_epoch batches (default: '
      'the union\'s training images / --batch_size).', 'data')
  reader_policy: str = _setting(
      checks.DEFAULT_READER_POLICY, 'Datasets that keep every reader '
      '(VinDr-CXR): a label is positive where any reader marked it (any, '
      'torchxrayvision\'s union), more than half of the image\'s readers '
      '(majority), or all of them (all); the test split\'s consensus (one '
      'reader) is read as it is. Other datasets: ignored.', 'data',
      choices=checks.READER_POLICIES)
  cache_dir: str = _setting(
      '', 'Local folder for the decoded splits when they do not fit the '
      'memory cache (--cache_limit), so that only the first epoch '
      'decodes; reused by later runs of the same dataset and size '
      '(xray_tfdata.cache). Empty: such a split is decoded every epoch.',
      'data')
  # The reader's own default, cache.DEFAULT_CACHE_LIMIT_BYTES (4 GiB; that
  # module imports TensorFlow), in MiB; tests/test_cache.py checks they agree.
  cache_limit: float = _setting(
      4096., 'Memory budget in MiB for a decoded split: one that fits is '
      'cached in memory, a larger one goes to --cache_dir (or is decoded '
      'every epoch without it). 0 sends every split to --cache_dir.',
      'data', lower=0.)
  demo_images: int = _setting(
      0, 'If > 0, create a synthetic dataset of this many images in data_dir '
      'first (the demo; xray_tfdata.demo), or reuse the one it made there; '
      'data_dir and <data_dir>-jpeg must be new, empty or the demo\'s own.',
      'data',
      lower=0)

  def validate(self):
    """Checks every setting, alone and together, before anything is written.

    Imports no TensorFlow. Settings that depend on the dataset are checked
    by `checks.check_against_dataset`.

    Raises:
      TrainingError: (checks.SettingError) the first setting that cannot
        work, in one line naming its flag and the fix.
    """
    if not self.data_dir:
      raise TrainingError('data_dir is not set: pass --data_dir=DIR of a '
                          'dataset made by tools/make_tfrecords')
    for name in ('batch_size', 'epochs', 'learning_rate', 'image_size'):
      checks.check_positive(name, getattr(self, name))
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if field.metadata['choices']:
        checks.check_choice(field.name, value, field.metadata['choices'])
      if field.type in (int, float):
        checks.check_bounds(field.name, value, field.metadata['lower'],
                            field.metadata['upper'])
    checks.check_fraction('dropout', self.dropout)
    checks.check_dense_units(self.dense_units)
    checks.check_names('labels', self.labels)
    checks.check_names('views', self.views)
    self._check_datasets()
    checks.check_augmentation(**self.augmentation_kwargs())
    checks.check_backbone(self.backbone, self.frozen_blocks, self.weights,
                          self.image_size)
    checks.check_weights(self.weights)
    checks.check_policy(self.policy)
    if self.data_service:
      checks.service_address(self.data_service)

  def _check_datasets(self):
    """Settings for one dataset given several, or weights that do not
    match the datasets."""
    dirs = split_data_dirs(self.data_dir)
    if self.dataset_weights:
      if len(dirs) < 2:
        raise TrainingError(
            '--dataset_weights is for several --data_dir (DIR1,DIR2,...): '
            'drop it or name the datasets')
      if len(self.dataset_weights) != len(dirs) or min(
          self.dataset_weights) <= 0:
        raise TrainingError(
            f'--dataset_weights has {len(self.dataset_weights)} value(s) '
            f'for {len(dirs)} datasets ({", ".join(dirs)}): pass one '
            'positive weight per --data_dir, in its order')
    if len(dirs) < 2:
      return
    for name, value in (('views', self.views),
                        ('data_service', self.data_service),
                        ('demo_images', self.demo_images),
                        ('positive_class', self.positive_class)):
      if value:
        raise TrainingError(
            f'--{name} is for one --data_dir, and {len(dirs)} are given: '
            f'drop --{name} or train on one dataset')

  def augmentation_kwargs(self):
    return dict(rotation_range=self.rotation_range,
                width_shift_range=self.width_shift_range,
                height_shift_range=self.height_shift_range,
                shear_range=self.shear_range, zoom_range=self.zoom_range,
                horizontal_flip=self.horizontal_flip)

  def to_json(self):
    d = dataclasses.asdict(self)
    # Lists, as JSON reads them back: a resumed run compares the two.
    for field in dataclasses.fields(self):
      if field.type is tuple:
        d[field.name] = list(getattr(self, field.name))
    return d


# tools/train's flags that are not settings of the run: where it goes.
# name -> (default, help, type).
OUTPUT_FLAGS = {
    'model_dir': (None, 'Output folder: checkpoints, logs, model, results.',
                  str),
    'overwrite': (False, 'Replace a finished run (or an unfinished one with '
                  'other settings) in model_dir.', bool),
}


def split_data_dirs(value):
  """--data_dir's datasets: 'DIR1,DIR2' -> ['DIR1', 'DIR2']."""
  return [d.strip() for d in str(value or '').split(',') if d.strip()]


def required_flags():
  """The flags tools/train cannot run without."""
  return ['model_dir'] + [field.name for field in dataclasses.fields(
      TrainConfig) if field.metadata['required']]


def define_flags(flag_values):
  """Defines one absl flag per TrainConfig field, and OUTPUT_FLAGS.

  Each flag is registered under its group's name (GROUPS) as its module, so
  that absl's help, and `runtime.run_tool`'s, list the flags by group.

  Args:
    flag_values: an absl `flags.FlagValues`, e.g. `flags.FLAGS`.

  Returns:
    {name: FlagHolder} of every flag defined.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top

  holders = {}
  for field in dataclasses.fields(TrainConfig):
    meta = field.metadata
    common = dict(flag_values=flag_values, module_name=meta['group'])
    # A required flag has no default: absl then insists on it.
    default = None if meta['required'] else field.default
    bounds = {key: meta[name] for key, name in (('lower_bound', 'lower'),
                                                 ('upper_bound', 'upper'))
              if meta[name] is not None}
    if meta['choices']:
      holder = flags.DEFINE_enum(field.name, default, list(meta['choices']),
                                 meta['help'], **common)
    elif field.type is bool:
      holder = flags.DEFINE_bool(field.name, default, meta['help'], **common)
    elif field.type is int:
      holder = flags.DEFINE_integer(field.name, default, meta['help'],
                                    **bounds, **common)
    elif field.type is float:
      holder = flags.DEFINE_float(field.name, default, meta['help'],
                                  **bounds, **common)
    elif field.type is tuple:
      holder = flags.DEFINE_list(field.name, [str(v) for v in default],
                                 meta['help'], **common)
    else:
      holder = flags.DEFINE_string(field.name, default, meta['help'],
                                   **common)
    holders[field.name] = holder
  for name, (default, help_text, kind) in OUTPUT_FLAGS.items():
    define = flags.DEFINE_bool if kind is bool else flags.DEFINE_string
    holders[name] = define(name, default, help_text, flag_values=flag_values,
                           module_name='output')
  return holders


def from_flags(flag_values):
  """The TrainConfig that parsed flags give (not yet validated).

  Args:
    flag_values: parsed absl `flags.FlagValues` with `define_flags`' flags.

  Returns:
    A TrainConfig.

  Raises:
    TrainingError: --dense_units holds something other than integers.
  """
  values = {field.name: flag_values[field.name].value
            for field in dataclasses.fields(TrainConfig)}
  try:
    values['dense_units'] = tuple(int(u) for u in values['dense_units'])
  except ValueError:
    raise TrainingError(
        f'dense_units must be integers, got {",".join(values["dense_units"])}'
        ': pass widths such as --dense_units=512,64') from None
  values['labels'] = tuple(values['labels'] or ())
  values['views'] = tuple(values['views'] or ())
  try:
    values['dataset_weights'] = tuple(
        float(w) for w in values['dataset_weights'] or ())
  except ValueError:
    raise TrainingError(
        'dataset_weights must be numbers, got '
        f'{",".join(values["dataset_weights"])}: pass one per --data_dir, '
        'such as --dataset_weights=1,1,2') from None
  values['data_dir'] = values['data_dir'] or ''
  return TrainConfig(**values)


def to_flags(config):
  """The command-line flags that give `config` (one per setting).

  Args:
    config: a TrainConfig.

  Returns:
    A list such as ['--data_dir=DIR', '--image_size=224', '--nojit_compile',
    ...], for a command line or a flagfile (one a line).
  """
  args = []
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if field.type is bool:
      args.append(f'--{"" if value else "no"}{field.name}')
    elif field.type is tuple:
      args.append(f'--{field.name}={",".join(str(v) for v in value)}')
    else:
      args.append(f'--{field.name}={value}')
  return args
