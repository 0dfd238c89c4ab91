"""xray_tfdata: high-throughput tf.data training for chest X-ray classifiers.

Modules, one per stage:
  synthetic     Kermany-like synthetic image folders (demo and test data).
  sources       scanning image folders, patient ids, duplicates, re-splits.
  writer        converting images into TFRecord shards + dataset_info.json.
  schema        the TFRecord feature schema and shard naming (shared).
  pipeline      DatasetBuilder: reading shards into tf.data pipelines.
  augment       device-side augmentation layers (fused RandomAffine, keras-cv).
  model         the mixed-precision VGG16 transfer-learning model.
  config        TrainConfig, the settings of a run (imports no TensorFlow).
  runtime       TensorFlow process settings the tools apply (no TensorFlow).
  training      train_and_evaluate(): the seed's experiment end to end.
  evaluation    metrics tables, Youden threshold, bootstrap intervals.
  benchmark     side-by-side benchmarks against ImageDataGenerator.
  distribute    tf.distribute strategies, chief and worker roles.
  data_service  tf.data service dispatcher and workers.

Attributes are imported lazily so that `import xray_tfdata` does not import
TensorFlow (the conversion worker processes rely on this).
"""

import importlib

__version__ = '0.1.0'

_LAZY = {
    'DatasetBuilder': 'xray_tfdata.pipeline',
    'RandomAffine': 'xray_tfdata.augment',
    'make_augmentation': 'xray_tfdata.augment',
}


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
