"""xray_tfdata: high-throughput tf.data training for chest X-ray classifiers.

Modules, one per stage:
  synthetic     synthetic stand-ins of each source, one module per layout
                (demo and test data).
  sources       the sources, one module each (class folders, RSNA, NIH,
                CheXpert, MIMIC, a labels CSV) on one protocol, and what
                they share: tables, patient ids, duplicates, split drawing.
  imaging       decoding one source file into the stored form; load_image
                (no TensorFlow).
  dicom         DICOM to display intensities: modality LUT, VOI, MONOCHROME1.
  writer        converting images into TFRecord shards, TFDS' metadata and
                xray_info.json.
  schema        the TFRecord feature schema and shard naming (shared).
  dataset_info  xray_info.json: its layout, load_info, the typed DatasetInfo.
  pipeline      DatasetBuilder: reading shards into tf.data pipelines.
  cache         the decoded split's cache: memory, local disk (--cache_dir).
  verify        integrity checks of the shards (CRC, PNG header, counts).
  augment_base  the base every augmentation layer builds on (Keras ops).
  augment       device-side augmentation (fused RandomAffine) and the one
                factory, make_augmentation; Keras ops only: any backend, no
                TensorFlow.
  augment_keras_cv  the keras-cv augmentation chain (TensorFlow only).
  augment_keras_core  the Keras 3 core layers chain (any backend).
  model         the mixed-precision transfer-learning model: VGG16,
                DenseNet-121, ResNet-50, EfficientNetV2-S (Keras ops).
  losses        the multi-label loss and metric: masked per-label binary
                cross-entropy with pos_weight, masked macro AUC (Keras ops).
  config        TrainConfig, the settings of a run, each declared once with
                its flag (imports no TensorFlow).
  checks        every setting's checks, shared by config, augment and model
                (no TensorFlow, no Keras).
  reference     the reference experiment's numbers (no TensorFlow, no
                Keras).
  errors        XrayError, the base of every user-facing error.
  runtime       TensorFlow process settings the tools apply, the tools'
                error ending, the import hooks (no TensorFlow).
  training      train_and_evaluate(): the reference experiment end to end.
  callbacks     the Keras callbacks of a run (epoch line, data-service watch).
  resume        model_dir, config.json and the resume state of a run.
  serving       the exported model and predict on image files.
  demo          the synthetic demo dataset, drawn and converted once.
  evaluation    the one evaluation (a package): the curve primitive,
                operating points, calibration, patient-level bootstrap,
                per label and subgroup; the run evaluator (tools/train's
                end, tools/evaluate: results.json), results.md, the PNGs.
  report        the augmentation preview (matplotlib, Agg).
  gradcam       Grad-CAM heatmaps at the last spatial feature map of any
                backbone, Keras ops (TensorFlow or JAX); annotated overlays.
  benchmarks    side-by-side benchmarks against ImageDataGenerator and the
                Keras user's pipeline (device_epoch: any Keras backend).
  atomic        atomic state files and disk-full errors (no TensorFlow).
  cli           the tools' entry points (tools/*, the xray-* commands).
  distribute    tf.distribute strategies, chief and worker roles.
  data_service  tf.data service dispatcher and workers.

Attributes are imported lazily so that `import xray_tfdata` does not import
TensorFlow (the conversion worker processes rely on this).

`import xray_tfdata` registers the custom Keras layers (RandomAffine,
NoAugmentation, KerasCoreAugmentation, VGG16Preprocess, BackbonePreprocess,
KerasCVAugmentation) and the multi-label loss and metric
(MaskedBinaryCrossentropy, MaskedAUC) with Keras, so that a plain
`keras.models.load_model('model.keras')` works whatever the order of
`import xray_tfdata` (or any submodule), `import tensorflow` and `import
keras`: at once if Keras is already imported, otherwise right after Keras is
(an import hook that leaves once Keras is loaded), so that processes that
never use Keras (the converter's workers) never pay for importing it.
"""

import contextlib
import importlib
import sys
import warnings

from xray_tfdata import runtime

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


# The modules whose import registers layers. All import Keras alone (no
# TensorFlow: they run on every backend); augment registers a stand-in for
# the TensorFlow-only KerasCVAugmentation that imports it when a model
# holding one is loaded.
_LAYER_MODULES = ('xray_tfdata.augment', 'xray_tfdata.augment_keras_core',
                  'xray_tfdata.losses', 'xray_tfdata.model')


def _register_layers():
  for module in _LAYER_MODULES:
    # A module still being imported (it is what imported Keras) registers
    # its layers itself when it finishes.
    if module not in sys.modules:
      try:
        importlib.import_module(module)
      except Exception as e:  # pylint: disable=broad-except
        # Never break the user's `import keras`; loading a model that holds
        # our layers then fails, naming them, and this says why.
        warnings.warn(f'xray_tfdata could not register its Keras layers '
                      f'({module}: {e}); import {module} before loading a '
                      'model that uses them')


class _RegisterAfterKeras(runtime.FirstImportHook):
  """Runs _register_layers() right after `keras` is first imported.

  It stays in sys.meta_path until Keras is really imported: a bare
  `importlib.util.find_spec('keras')`, which `import tensorflow` runs to
  locate tf.keras, must not use it up.
  """

  name = 'keras'

  @contextlib.contextmanager
  def around(self, module):
    del module
    yield
    _register_layers()


if 'keras' in sys.modules:
  _register_layers()
else:
  _RegisterAfterKeras.install()
