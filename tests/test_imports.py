"""Which modules may import TensorFlow, Keras or neither at import time, and
no import cycle between the package's modules.

The sides of the seam (STYLE.md): the host side (sources, imaging, writer's
workers) runs without TensorFlow or Keras; the device side (augmentation,
model) runs on any Keras backend, without TensorFlow. The table below is the
contract; a module that starts importing more, or less, fails here, so the
change is made on purpose.
"""

import ast
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

PACKAGE = os.path.join(REPO_ROOT, 'xray_tfdata')

# What each module imports at import time, itself or through the package's
# other modules: 'neither', 'keras' (Keras on any backend, never TensorFlow
# itself) or 'tensorflow'.
IMPORTS = {
    'xray_tfdata': 'neither',
    'xray_tfdata.atomic': 'neither',
    'xray_tfdata.augment': 'keras',
    'xray_tfdata.augment_base': 'keras',
    'xray_tfdata.augment_keras_core': 'keras',
    'xray_tfdata.augment_keras_cv': 'tensorflow',
    'xray_tfdata.benchmarks': 'neither',
    'xray_tfdata.benchmarks.common': 'keras',
    'xray_tfdata.benchmarks.device_epoch': 'keras',
    'xray_tfdata.benchmarks.epoch': 'tensorflow',
    'xray_tfdata.benchmarks.evaluation_scale': 'neither',
    'xray_tfdata.benchmarks.input': 'tensorflow',
    'xray_tfdata.benchmarks.library': 'tensorflow',
    'xray_tfdata.benchmarks.ops': 'tensorflow',
    'xray_tfdata.benchmarks.peers': 'tensorflow',
    'xray_tfdata.benchmarks.reader_scale': 'tensorflow',
    'xray_tfdata.benchmarks.baseline': 'keras',
    'xray_tfdata.cache': 'tensorflow',
    'xray_tfdata.callbacks': 'keras',
    'xray_tfdata.checks': 'neither',
    'xray_tfdata.cli': 'neither',
    'xray_tfdata.cli.benchmark': 'neither',
    'xray_tfdata.cli.data_service': 'neither',
    'xray_tfdata.cli.evaluate': 'neither',
    'xray_tfdata.cli.make_synthetic': 'neither',
    'xray_tfdata.cli.make_tfrecords': 'neither',
    'xray_tfdata.cli.predict': 'neither',
    'xray_tfdata.cli.train': 'neither',
    'xray_tfdata.config': 'neither',
    'xray_tfdata.data_service': 'tensorflow',
    'xray_tfdata.dataset_info': 'neither',
    'xray_tfdata.demo': 'neither',
    'xray_tfdata.dicom': 'neither',
    'xray_tfdata.distribute': 'tensorflow',
    'xray_tfdata.errors': 'neither',
    'xray_tfdata.evaluation': 'neither',
    'xray_tfdata.evaluation.bootstrap': 'neither',
    'xray_tfdata.evaluation.calibration': 'neither',
    'xray_tfdata.evaluation.curves': 'neither',
    'xray_tfdata.evaluation.localization': 'neither',
    'xray_tfdata.evaluation.markdown': 'neither',
    'xray_tfdata.evaluation.matching': 'neither',
    'xray_tfdata.evaluation.per_label': 'neither',
    'xray_tfdata.evaluation.plots': 'neither',
    'xray_tfdata.evaluation.run': 'neither',
    'xray_tfdata.gradcam': 'keras',
    'xray_tfdata.imaging': 'neither',
    'xray_tfdata.labels': 'neither',
    'xray_tfdata.losses': 'keras',
    'xray_tfdata.mixture': 'tensorflow',
    'xray_tfdata.model': 'keras',
    'xray_tfdata.pipeline': 'tensorflow',
    'xray_tfdata.reference': 'neither',
    'xray_tfdata.report': 'neither',
    'xray_tfdata.resume': 'keras',
    'xray_tfdata.run_dir': 'neither',
    'xray_tfdata.runtime': 'neither',
    'xray_tfdata.schema': 'neither',
    'xray_tfdata.selection': 'tensorflow',
    'xray_tfdata.serving': 'tensorflow',
    'xray_tfdata.sources': 'neither',
    'xray_tfdata.sources.base': 'neither',
    'xray_tfdata.sources.chexpert': 'neither',
    'xray_tfdata.sources.class_folders': 'neither',
    'xray_tfdata.sources.duplicates': 'neither',
    'xray_tfdata.sources.labels_csv': 'neither',
    'xray_tfdata.sources.mimic': 'neither',
    'xray_tfdata.sources.nih': 'neither',
    'xray_tfdata.sources.nih_google': 'neither',
    'xray_tfdata.sources.nlm_tb': 'neither',
    'xray_tfdata.sources.padchest': 'neither',
    'xray_tfdata.sources.patients': 'neither',
    'xray_tfdata.sources.rsna': 'neither',
    'xray_tfdata.sources.splits': 'neither',
    'xray_tfdata.sources.tables': 'neither',
    'xray_tfdata.sources.vindr': 'neither',
    'xray_tfdata.synthetic': 'neither',
    'xray_tfdata.synthetic.chexpert': 'neither',
    'xray_tfdata.synthetic.draw': 'neither',
    'xray_tfdata.synthetic.kermany': 'neither',
    'xray_tfdata.synthetic.layouts': 'neither',
    'xray_tfdata.synthetic.mimic': 'neither',
    'xray_tfdata.synthetic.nih': 'neither',
    'xray_tfdata.synthetic.nih_google': 'neither',
    'xray_tfdata.synthetic.nlm_tb': 'neither',
    'xray_tfdata.synthetic.padchest': 'neither',
    'xray_tfdata.synthetic.rsna': 'neither',
    'xray_tfdata.synthetic.siim': 'neither',
    'xray_tfdata.synthetic.tree': 'neither',
    'xray_tfdata.synthetic.vindr': 'neither',
    'xray_tfdata.training': 'tensorflow',
    'xray_tfdata.transfer': 'neither',
    'xray_tfdata.trunk_cache': 'tensorflow',
    'xray_tfdata.verify': 'tensorflow',
    'xray_tfdata.vocabulary': 'neither',
    'xray_tfdata.writer': 'neither',
}

# Third-party packages that are TensorFlow (or need it) and Keras.
_TENSORFLOW = {'tensorflow', 'keras_cv', 'tensorflow_datasets', 'tf_keras'}
_KERAS = {'keras'}


def _modules():
  """{module name: file} for every module of the package."""
  found = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        module = os.path.relpath(path[:-3], REPO_ROOT).replace(os.sep, '.')
        found[module.removesuffix('.__init__')] = path
  return found


def _import_statements(path, import_time_only):
  """Absolute module names imported by a file: at import time (module level,
  including under if/try/with), or anywhere (functions included, and
  importlib.import_module('xray_tfdata.x') spelled as a string)."""
  with open(path, encoding='utf-8') as f:
    source = f.read()
  tree = ast.parse(source)
  if import_time_only:
    nodes, stack = [], list(tree.body)
    while stack:
      node = stack.pop()
      nodes.append(node)
      if isinstance(node, (ast.If, ast.Try, ast.With, ast.ExceptHandler)):
        for field in ('body', 'orelse', 'finalbody', 'handlers'):
          stack.extend(getattr(node, field, None) or [])
  else:
    nodes = list(ast.walk(tree))
  names = set()
  for node in nodes:
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names.add(node.module)
      # `from xray_tfdata import model` imports the module xray_tfdata.model.
      names.update(f'{node.module}.{alias.name}' for alias in node.names)
  if not import_time_only:
    names.update(re.findall(r"""['"](xray_tfdata(?:\.\w+)+)['"]""", source))
  return names


def _graph(import_time_only):
  modules = _modules()
  graph, external = {}, {}
  for module, path in modules.items():
    names = _import_statements(path, import_time_only)
    # A module's own packages (xray_tfdata, xray_tfdata.sources for
    # xray_tfdata.sources.nih) are loaded before it whatever it imports:
    # `from xray_tfdata.sources import base` is an edge to base only.
    graph[module] = {n for n in names
                     if n in modules and n != module and
                     not module.startswith(n + '.')}
    external[module] = {n.partition('.')[0] for n in names
                        if not n.startswith('xray_tfdata')}
  return graph, external


def _reach(graph, module):
  seen, stack = set(), [module]
  while stack:
    for nxt in graph[stack.pop()]:
      if nxt not in seen:
        seen.add(nxt)
        stack.append(nxt)
  return seen


def _kind(external):
  if external & _TENSORFLOW:
    return 'tensorflow'
  return 'keras' if external & _KERAS else 'neither'


def test_every_module_is_in_the_table():
  assert set(_modules()) == set(IMPORTS)


def test_modules_import_what_the_table_says():
  graph, external = _graph(import_time_only=True)
  found = {}
  for module in graph:
    imported = set(external[module])
    for other in _reach(graph, module):
      imported |= external[other]
    found[module] = _kind(imported)
  assert found == IMPORTS


def _cycles(graph):
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for nxt in sorted(graph[node]):
      if nxt not in index:
        visit(nxt)
        low[node] = min(low[node], low[nxt])
      elif nxt in on_stack:
        low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
      component = set()
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.add(member)
        if member == node:
          break
      if len(component) > 1:
        cycles.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return cycles


def test_cycle_finder_finds_a_cycle():
  assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [
      ['a', 'b', 'c']]


@pytest.mark.parametrize('import_time_only', [True, False],
                         ids=['at_import', 'anywhere'])
def test_no_import_cycle(import_time_only):
  graph, _ = _graph(import_time_only)
  assert _cycles(graph) == []


_CHECK = '''
import sys
sys.path.insert(0, {tests!r})
if {block}:
  import no_tensorflow
  no_tensorflow.block_tensorflow()
import importlib
for module in sys.argv[1:]:
  importlib.import_module(module)
heavy = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)
print(' '.join(heavy) or 'neither')
'''


def _heavy_imports(modules, block_tensorflow):
  """'tensorflow'/'keras' found in sys.modules after importing modules in a
  fresh process (JAX backend; TensorFlow unimportable if block_tensorflow)."""
  env = dict(os.environ, PYTHONPATH=REPO_ROOT, KERAS_BACKEND='jax')
  result = subprocess.run(
      [sys.executable, '-c',
       _CHECK.format(tests=os.path.join(REPO_ROOT, 'tests'),
                     block=block_tensorflow), *modules],
      capture_output=True, text=True, env=env, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout.split()


def test_neither_modules_import_neither_in_a_fresh_process():
  """The table, checked by importing for real. Each tool defines its absl
  flags at import, so each cli module gets a process of its own."""
  modules = sorted(m for m, k in IMPORTS.items() if k == 'neither')
  tools = [m for m in modules if m.startswith('xray_tfdata.cli.')]
  groups = [[m for m in modules if m not in tools]] + [[m] for m in tools]
  for group in groups:
    assert _heavy_imports(group, block_tensorflow=False) == ['neither'], group


@pytest.mark.slow  # imports JAX and Keras
def test_keras_modules_import_without_tensorflow_in_a_fresh_process():
  pytest.importorskip('jax')
  modules = sorted(m for m, k in IMPORTS.items() if k == 'keras')
  assert _heavy_imports(modules, block_tensorflow=True) == ['keras']
