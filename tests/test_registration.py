"""Saved models load with a plain keras.models.load_model after
`import xray_tfdata` (or a submodule), whatever the order of that, `import
tensorflow` and `import keras`, each order in a fresh process."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from xray_tfdata import augment
from xray_tfdata import model as model_lib

from conftest import REPO_ROOT

# Every custom layer the library saves into a model.
LAYERS = ('KerasCVAugmentation', 'RandomAffine', 'NoAugmentation',
          'VGG16Preprocess')

# Each script imports in the order given, then checks what was imported
# (the converter's workers must not pay for Keras) and loads the model with
# nothing but Keras.
LOAD = '''
import sys
{imports}
import keras
import numpy as np
net = keras.models.load_model(sys.argv[1])
print(' '.join(type(l).__name__ for l in net.layers[1:5]))
np.testing.assert_allclose(net.predict(np.load(sys.argv[2]), verbose=0),
                           np.load(sys.argv[3]), atol=1e-6)
'''

OURS, TF, KERAS = 'import xray_tfdata', 'import tensorflow', 'import keras'
# After `import xray_tfdata` alone, neither TensorFlow nor Keras is imported
# (the converter's workers rely on it).
NOTHING_HEAVY = ("assert 'keras' not in sys.modules, 'imported Keras'\n"
                 "assert 'tensorflow' not in sys.modules, 'imported TF'")


def _script(*statements):
  """LOAD with the statements in order; the checks of NOTHING_HEAVY after
  ours when it comes first."""
  lines = list(statements)
  if lines[0] == OURS:
    lines.insert(1, NOTHING_HEAVY)
  return LOAD.format(imports='\n'.join(lines))


def _tiny_model():
  inputs = keras.Input((8, 8, 1), dtype='uint8')
  x = augment.make_augmentation('keras_cv', rotation_range=10)(inputs)
  x = augment.make_augmentation('fused', rotation_range=10)(x)
  x = augment.make_augmentation('none')(x)
  x = model_lib.VGG16Preprocess()(x)
  x = keras.layers.Flatten()(x)
  return keras.Model(inputs, keras.layers.Dense(1)(x))


@pytest.mark.slow
def test_load_model_after_import_xray_tfdata_in_every_import_order(tmp_path):
  path, images, expected = (str(tmp_path / n) for n in
                            ('model.keras', 'images.npy', 'expected.npy'))
  net = _tiny_model()
  net.save(path)
  batch = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), np.uint8)
  np.save(images, batch)
  np.save(expected, net.predict(batch, verbose=0))
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  # The paths of the registration hook: Keras imported after us with
  # TensorFlow's lookup of it in between (the bug of BUILD_NOTES'
  # "Registration in any import order"), after us without one, after us
  # with TensorFlow before us, and Keras before us (registered at once).
  # The other two of the six orders take these paths too; each process
  # costs a TensorFlow import (about 8 s on 2 cores).
  orders = {' / '.join(order): _script(*order)
            for order in ((OURS, TF, KERAS), (OURS, KERAS, TF),
                          (TF, OURS, KERAS), (KERAS, TF, OURS))}
  # A submodule that imports TensorFlow, which looks Keras up (find_spec)
  # without importing it.
  orders['pipeline / keras'] = _script('from xray_tfdata import pipeline',
                                       KERAS)
  runs = {name: subprocess.Popen(
      [sys.executable, '-c', script, path, images, expected], env=env,
      cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for name, script in orders.items()}
  for name, run in runs.items():
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, (name, err[-2000:])
    assert out.split() == list(LAYERS), (name, out)
