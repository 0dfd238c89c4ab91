"""The reference experiment's numbers, in one place (no TensorFlow, no Keras).

The reference is the published notebook this project reproduces: Kermany's
5,856 chest X-rays pooled and re-split, a VGG16 with ImageNet weights and
blocks 1-4 frozen, ImageDataGenerator augmentation, Adam and early stopping.
TrainConfig's defaults, the demo's split and the benchmarks' epoch sizes come
from here; "seed" elsewhere in the package means a random seed only.
"""

# The re-split: images per class of each split.
SPLITS = {
    'train': {'NORMAL': 1283, 'PNEUMONIA': 3473},
    'val': {'NORMAL': 150, 'PNEUMONIA': 400},
    'test': {'NORMAL': 150, 'PNEUMONIA': 400},
}
# Every image of the dataset is in one of the splits.
TOTAL_IMAGES = sum(sum(counts.values()) for counts in SPLITS.values())
TRAIN_IMAGES = sum(SPLITS['train'].values())  # 4,756
VAL_IMAGES = sum(SPLITS['val'].values())  # 550

# The model and its training.
BACKBONE = 'vgg16'
IMAGE_SIZE = 224
BATCH_SIZE = 62
FROZEN_BLOCKS = 4
DENSE_UNITS = (512, 64)
DROPOUT = 0.4
LEARNING_RATE = 1e-4
EARLY_STOPPING_PATIENCE = 10
THRESHOLD = 0.5  # of its metrics table

# The notebook's ImageDataGenerator call, as written.
GENERATOR_KWARGS = dict(
    rotation_range=40,
    width_shift_range=0.3,
    height_shift_range=0.4,
    shear_range=0.2,
    zoom_range=0.4,
    horizontal_flip=True,
)

# The same augmentation in this package's meaning of the arguments
# (`augment.RandomAffine`: width_shift_range moves images sideways).
# ImageDataGenerator draws its horizontal shift from height_shift_range and
# its vertical one from width_shift_range (keras #17398, tf-keras #310), so
# the notebook's images moved up to 40% sideways and 30% vertically: that
# geometry is the reference, hence 0.4 and 0.3 here.
# `augment.image_data_generator_kwargs` turns it back into GENERATOR_KWARGS.
AUGMENTATION = dict(
    GENERATOR_KWARGS,
    width_shift_range=GENERATOR_KWARGS['height_shift_range'],
    height_shift_range=GENERATOR_KWARGS['width_shift_range'],
)

# What the notebook reports on its test split (at THRESHOLD).
TEST_METRICS = {'auc': 0.9895, 'precision': 0.9891, 'recall': 0.905}


def scaled_split_counts(num_images):
  """The reference's val and test counts per class, scaled to a pool.

  Args:
    num_images: images in the whole pool.

  Returns:
    (val_counts, test_counts), dicts class name -> count, each at least 2.
  """
  scale = num_images / TOTAL_IMAGES
  val = {name: max(2, round(count * scale))
         for name, count in SPLITS['val'].items()}
  test = {name: max(2, round(count * scale))
          for name, count in SPLITS['test'].items()}
  return val, test
