"""The checks of every setting, in one place, without TensorFlow or Keras.

The same functions serve `config.TrainConfig.validate()` (so that
tools/train fails before it writes anything), the augmentation layers
(`augment`) and the model (`model`), so that a rule is written once. Each
check raises a `SettingError` of one line that names the setting (a flag of
tools/train, or the argument of the same name) and the fix.

Imports nothing heavy: tools import it before TensorFlow starts.
"""

import math
import os
import re

from xray_tfdata import errors

AUGMENTATIONS = ('fused', 'keras_cv', 'keras_core', 'none')
# The named stages of each backbone that --frozen_blocks=N counts, from the
# input up (model.STAGE_PATTERNS finds their layers): N freezes everything
# from the input to the end of stage N; the stem goes with stage 1, and the
# layers after the last stage (DenseNet's final batch norm, EfficientNetV2's
# top conv) with the last.
BACKBONE_STAGES = {
    'vgg16': ('block1', 'block2', 'block3', 'block4', 'block5'),
    # mini_vgg is four blocks deep (model._MINI_VGG_WIDTHS).
    'mini_vgg': ('block1', 'block2', 'block3', 'block4'),
    # Each dense block with the transition (poolK) after it.
    'densenet121': ('conv2', 'conv3', 'conv4', 'conv5'),
    'resnet50': ('conv2', 'conv3', 'conv4', 'conv5'),
    'efficientnetv2s': ('block1', 'block2', 'block3', 'block4', 'block5',
                        'block6'),
}
BACKBONE_BLOCKS = {name: len(stages)
                   for name, stages in BACKBONE_STAGES.items()}
BACKBONES = tuple(BACKBONE_STAGES)
# Smallest and largest input side of each backbone (None: no upper bound).
# The keras.applications models take 32 px or more (their own check); the
# new backbones are built and tested up to 512 px, the largest size chest
# X-ray work trains at. VGG16's and mini_vgg's smallest: each block ends in
# a 2x2 pooling, so 2**blocks pixels leave one.
BACKBONE_IMAGE_SIZES = {
    'vgg16': (32, None),
    'mini_vgg': (16, None),
    'densenet121': (32, 512),
    'resnet50': (32, 512),
    'efficientnetv2s': (32, 512),
}
# Backbones without published weights: trained from scratch.
SCRATCH_BACKBONES = ('mini_vgg',)
POLICIES = ('float32', 'mixed_float16', 'mixed_bfloat16')
# How uncertain and unmentioned labels become targets (labels._TARGETS).
LABEL_POLICIES = ('u_ones', 'u_zeros', 'u_ignore', 'txv')
# CheXpert's U-Ones: uncertain counts as positive.
DEFAULT_LABEL_POLICY = 'u_ones'
# How a dataset that keeps every reader (VinDr-CXR) makes a label's code
# from how many readers marked it (labels.reader_codes); 'any' is
# torchxrayvision's union, and the code the records store.
READER_POLICIES = ('any', 'majority', 'all')
DEFAULT_READER_POLICY = 'any'
# The classifier's head (model.resolve_head): 'auto' keeps the reference's
# dense head for single-label vgg16/mini_vgg, global pooling elsewhere.
HEADS = ('auto', 'dense', 'pooling')
# Multi-label weighting of each label's positive terms (losses.pos_weights):
# none (plain masked BCE, as torchxrayvision) or negatives / positives,
# capped.
LABEL_WEIGHTINGS = ('none', 'ratio')
# A DICOM VOI step; 'auto' tries the VOI LUT, then the window (voi_source).
VOI_POLICIES = ('auto', 'window', 'full')
STRATEGIES = ('auto', 'one_device', 'mirrored', 'multi_worker')
# Weights that name no file.
NAMED_WEIGHTS = ('imagenet', 'none', '')
# The seeds keras.utils.set_random_seed takes: it seeds NumPy's legacy
# generator, whose seeds are unsigned 32-bit integers.
MAX_SEED = 2**32 - 1

_SERVICE_ADDRESS = re.compile(
    r'^(?:grpc://)?([A-Za-z0-9_.\-]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$')


class SettingError(errors.XrayError):
  """A setting that cannot work, alone or with the others; the message
  names the flag and the fix."""


def check_choice(name, value, choices):
  """Raises SettingError unless value is one of choices."""
  if value not in choices:
    raise SettingError(f'{name} must be one of {", ".join(choices)}, got '
                       f'{value!r}: pass --{name}={choices[0]}, for example')


def check_bounds(name, value, lower=None, upper=None):
  """Raises SettingError unless lower <= value <= upper (None: unbounded)."""
  if lower is not None and upper is not None:
    if not lower <= value <= upper:
      raise SettingError(f'{name} must be in {lower}..{upper}, got {value}: '
                         f'pass --{name}=N with {lower} <= N <= {upper}')
  elif lower is not None and value < lower:
    raise SettingError(f'{name} must be at least {lower}, got {value}: '
                       f'pass --{name}={lower} or more')
  elif upper is not None and value > upper:
    raise SettingError(f'{name} must be at most {upper}, got {value}: '
                       f'pass --{name}={upper} or less')


def check_positive(name, value):
  """Raises SettingError unless value > 0."""
  if not value > 0:
    raise SettingError(f'{name} must be positive, got {value}: pass '
                       f'--{name}=N with N > 0')


def check_fraction(name, value):
  """Raises SettingError unless 0 <= value < 1 (a dropout rate)."""
  if not 0 <= value < 1:
    raise SettingError(f'{name} must be in [0, 1), got {value}: pass a rate '
                       f'such as --{name}=0.4')


def check_augmentation_range(name, value):
  """Raises SettingError unless value is a finite number >= 0.

  The rotation, shift and shear ranges of ImageDataGenerator's arguments; a
  list of allowed values, which ImageDataGenerator also takes, is refused.
  """
  if (isinstance(value, bool) or not isinstance(value, (int, float)) or
      not math.isfinite(value) or value < 0):
    raise SettingError(
        f'{name} must be a non-negative number, got {value!r}: pass '
        f'--{name}=0 to switch it off (lists of allowed values, which '
        'ImageDataGenerator also accepts, are not supported)')


def zoom_bounds(zoom_range):
  """Checks zoom_range and returns ImageDataGenerator's (lower, upper) zoom.

  Args:
    zoom_range: a float z, meaning [1 - z, 1 + z], or a pair (lower, upper).

  Returns:
    (lower, upper) as Python floats.

  Raises:
    SettingError: if the range is malformed or reaches zero or below (a
      float z of 1 or more).
  """
  if isinstance(zoom_range, (list, tuple)):
    if len(zoom_range) != 2:
      raise SettingError(f'zoom_range pair must have 2 values, got '
                         f'{zoom_range}: pass (lower, upper)')
    lower, upper = (float(v) for v in zoom_range)
  else:
    check_augmentation_range('zoom_range', zoom_range)
    lower, upper = 1.0 - zoom_range, 1.0 + zoom_range
  if not 0 < lower <= upper or not math.isfinite(upper):
    raise SettingError(
        f'zoom_range must give factors with 0 < lower <= upper, got '
        f'{zoom_range} -> ({lower}, {upper}): pass --zoom_range below 1 '
        '(it zooms by factors in [1 - z, 1 + z])')
  return lower, upper


def check_augmentation(rotation_range=0., width_shift_range=0.,
                       height_shift_range=0., shear_range=0., zoom_range=0.,
                       horizontal_flip=False):
  """Checks ImageDataGenerator's random-transform arguments.

  What `augment.RandomAffine` (and the keras-cv chain) accept.

  Raises:
    SettingError: a range is negative or not a number, or zoom reaches 0.
  """
  del horizontal_flip  # any truth value serves
  for name, value in (('rotation_range', rotation_range),
                      ('width_shift_range', width_shift_range),
                      ('height_shift_range', height_shift_range),
                      ('shear_range', shear_range)):
    check_augmentation_range(name, value)
  zoom_bounds(zoom_range)


def frozen_blocks_help():
  """What --frozen_blocks=N covers for each backbone, for --help."""
  return '; '.join(
      f'{name} {len(stages)} ({stages[0]}..{stages[-1]})'
      for name, stages in BACKBONE_STAGES.items())


def check_backbone(backbone, frozen_blocks=0, weights=None, image_size=None):
  """Checks a backbone with the blocks to freeze, the weights to load and
  the input size.

  Args:
    backbone: one of BACKBONES.
    frozen_blocks: leading stages not trained (BACKBONE_STAGES).
    weights: None, 'none', 'imagenet' or a path (mini_vgg has none).
    image_size: the input's smaller side, or None.

  Raises:
    SettingError: unknown backbone, more frozen blocks than it has, weights
      for mini_vgg, or an input outside BACKBONE_IMAGE_SIZES.
  """
  check_choice('backbone', backbone, BACKBONES)
  blocks = BACKBONE_BLOCKS[backbone]
  smallest, largest = BACKBONE_IMAGE_SIZES[backbone]
  if image_size is not None and image_size < smallest:
    raise SettingError(
        f'image_size {image_size} is below {smallest}, the smallest input '
        f'--backbone={backbone} takes: pass --image_size={smallest} or more')
  if image_size is not None and largest and image_size > largest:
    raise SettingError(
        f'image_size {image_size} is above {largest}, the largest input '
        f'--backbone={backbone} supports: convert the dataset at '
        f'--image_size={largest} or less')
  if not 0 <= frozen_blocks <= blocks:
    raise SettingError(
        f'frozen_blocks must be in 0..{blocks} for --backbone={backbone}, '
        f'got {frozen_blocks}: pass --frozen_blocks={min(blocks, 4)} or less')
  if backbone in SCRATCH_BACKBONES and weights not in (None, 'none', ''):
    raise SettingError(f'{backbone} has no pretrained weights: pass '
                       '--weights=none, or --backbone=vgg16')


def random_frozen_warning(backbone, frozen_blocks, weights):
  """A one-line warning when random weights would be frozen, or None.

  Frozen layers with random weights never learn: only the layers above
  them train on random features.
  """
  if frozen_blocks and weights in (None, 'none', ''):
    return (f'--weights=none with --frozen_blocks={frozen_blocks} freezes '
            f'{frozen_blocks} of the {BACKBONE_BLOCKS[backbone]} random '
            f'stages of {backbone}, which then never learn: pass '
            '--frozen_blocks=0 to train them, or pretrained --weights')
  return None


def check_weights(weights):
  """Raises SettingError unless weights is 'imagenet', 'none' or a file."""
  if weights not in NAMED_WEIGHTS and not os.path.exists(weights):
    raise SettingError(
        f'weights file {weights} does not exist: pass --weights=imagenet, '
        "--weights=none or the path of the backbone's notop .h5 weights")


def check_policy(policy):
  """Raises SettingError unless policy is 'auto' or one of POLICIES."""
  if policy != 'auto' and policy not in POLICIES:
    raise SettingError(
        f'unknown dtype policy {policy!r}: pass --policy=auto or one of '
        f'{", ".join(POLICIES)}')


def check_dense_units(dense_units):
  """Raises SettingError unless dense_units are positive integers."""
  if not all(isinstance(units, int) and not isinstance(units, bool) and
             units > 0 for units in dense_units):
    raise SettingError(
        f'dense_units must be positive integers, got {list(dense_units)}: '
        'pass widths such as --dense_units=512,64')


def check_names(name, values):
  """Raises SettingError unless values (label names, views) are non-empty
  strings, each given once."""
  if any(not isinstance(v, str) or not v.strip() for v in values):
    raise SettingError(f'{name} holds an empty name ({list(values)}): pass '
                       f'--{name}=NAME,NAME without empty entries')
  repeated = sorted({v for v in values if list(values).count(v) > 1})
  if repeated:
    raise SettingError(f'{name} names {", ".join(repeated)} more than once: '
                       f'name each once in --{name}')


def service_address(address, flag='data_service', error=SettingError):
  """Checks a tf.data service dispatcher address; returns 'grpc://H:P'.

  Args:
    address: 'host:port' or 'grpc://host:port'.
    flag: the flag that gave it, named in the error.
    error: the XrayError class to raise (data_service raises its own).

  Raises:
    error (SettingError): address is not HOST:PORT or grpc://HOST:PORT.
  """
  match = _SERVICE_ADDRESS.match(address or '')
  if not match or not 0 < int(match.group(2)) < 65536:
    raise error(
        f'tf.data service address {address!r} is not HOST:PORT (or '
        'grpc://HOST:PORT) of a dispatcher started by tools/data_service: '
        f'fix --{flag}')
  return f'grpc://{match.group(1)}:{int(match.group(2))}'


def check_against_dataset(config, num_examples_by_split):
  """Checks settings that depend on the dataset, before training starts.

  Args:
    config: a TrainConfig (or anything with batch_size and steps_per_epoch).
    num_examples_by_split: {'train': n, 'val': n, ...}, e.g. from the
      dataset's info.

  Raises:
    SettingError: the global batch is larger than the training split, so an
      epoch (which drops the last partial batch) would have no step.
  """
  train = num_examples_by_split.get('train')
  if train is not None and config.batch_size > train:
    raise SettingError(
        f'batch_size {config.batch_size} is larger than the training split '
        f'({train} images): pass --batch_size={max(train, 1)} or less')
