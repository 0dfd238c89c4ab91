"""xray_tfdata.reference: the reference experiment's numbers, and the
settings that take them as their defaults."""

from xray_tfdata import config as config_lib
from xray_tfdata import reference


def test_the_split_holds_every_kermany_image():
  # Kermany et al.'s 5,856 JPEGs (Mendeley v3), all in the reference split.
  assert reference.TOTAL_IMAGES == 5856
  assert (reference.TRAIN_IMAGES, reference.VAL_IMAGES) == (1283 + 3473,
                                                            150 + 400)


def test_scaled_split_counts_scale_150_and_400_of_5856():
  assert reference.scaled_split_counts(5856) == (
      {'NORMAL': 150, 'PNEUMONIA': 400}, {'NORMAL': 150, 'PNEUMONIA': 400})
  assert reference.scaled_split_counts(60)[0] == {'NORMAL': 2, 'PNEUMONIA': 4}
  # Never below 2 per class, however small the pool.
  assert reference.scaled_split_counts(12)[1] == {'NORMAL': 2, 'PNEUMONIA': 2}


def test_augmentation_swaps_the_generators_shift_ranges():
  # ImageDataGenerator(width_shift_range=0.3, height_shift_range=0.4) moves
  # images 40% sideways (keras #17398): in the layers' meaning, 0.4 and 0.3.
  augmentation, generator = reference.AUGMENTATION, reference.GENERATOR_KWARGS
  assert (generator['width_shift_range'],
          generator['height_shift_range']) == (0.3, 0.4)
  assert (augmentation['width_shift_range'],
          augmentation['height_shift_range']) == (0.4, 0.3)
  others = set(generator) - {'width_shift_range', 'height_shift_range'}
  assert {k: augmentation[k] for k in others} == {
      k: generator[k] for k in others}


def test_train_config_defaults_are_the_reference():
  # The model's and the training's: tests/test_config.py.
  defaults = config_lib.TrainConfig()
  assert (defaults.image_size, defaults.batch_size) == (224, 62)
  assert defaults.augmentation_kwargs() == reference.AUGMENTATION
