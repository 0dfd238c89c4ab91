"""The README's examples work as written.

Fast checks: every `tools/NAME --flag` (and `xray-NAME --flag`) in the
README's shell examples and code spans names a tool, and each flag is one
the tool really defines (read from the tool itself, so whatever the README
says is checked), with a value it accepts where the flag is an enum; every
flagfile named exists and holds only that tool's flags; every
`module.name` the README writes is defined in that module; every Python
example parses.

Slow: the Python examples (```python blocks) run, in order, in fresh
processes against a tiny converted dataset built where they look for it
(`data/kermany_224` in a temporary folder), with the few substitutions of
SUBSTITUTIONS (no network for ImageNet weights, tiny images, one epoch) and
the names and files the README leaves to the reader (PRELUDE). A block that
sets KERAS_BACKEND starts a new process, as it must come before Keras is
imported; the others share one, as a reader's session would.
"""

import ast
import concurrent.futures
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from xray_tfdata import runtime

README = os.path.join(REPO_ROOT, 'README.md')
PACKAGE = os.path.join(REPO_ROOT, 'xray_tfdata')
CLI = os.path.join(PACKAGE, 'cli')

# The README's examples use what a reader has (ImageNet weights, the real
# 224-px dataset, time for 30 epochs); the test has none of it. Each entry:
# (pattern, replacement, why), applied with re.sub to every Python example;
# each pattern must still match somewhere, so the list cannot go stale.
SUBSTITUTIONS = (
    (r"weights='imagenet'", 'weights=None', 'no network here'),
    (r'(?<![\w.])224(?![\w.])', '32', 'the test dataset is stored at 32 px'),
    (r'epochs=30', 'epochs=1', 'one epoch shows that it trains'),
    (r"TrainConfig\(data_dir='data/kermany_224'\)",
     "TrainConfig(data_dir='data/kermany_224', **TINY_RUN)",
     'the trainer with the small settings of PRELUDE'),
    (r"patient_ids=\{'val': \.\.\., 'test': \.\.\.\}", 'patient_ids=patient_ids',
     "the README's `...` are the reader's"),
)

# Run first in every process: what the examples take as given.
PRELUDE = '''
import os
import numpy as np
from PIL import Image

_rng = np.random.default_rng(0)
# Image files to read and score (16-bit PNGs: the README's loader takes them).
for _path in ('scan.png', 'scans/a.png', 'scans/b.png', 'more/c.png'):
  os.makedirs(os.path.dirname(_path) or '.', exist_ok=True)
  Image.fromarray(_rng.integers(0, 65535, (40, 48)).astype(np.uint16)).save(
      _path)
paths = ['scan.png', 'scans/a.png']
# {split: (labels, probs)} of some model, and each example's patient.
predictions = {}
for _split in ('val', 'test'):
  _labels = np.tile([0, 1], 30)
  predictions[_split] = (
      _labels, np.clip(0.3 * _labels + 0.7 * _rng.random(60), 0.01, 0.99))
patient_ids = {split: np.array([f'p{i // 2}' for i in range(60)])
               for split in predictions}
val_labels, val_probs = predictions['val']
images = _rng.integers(0, 256, (2, 32, 32, 1), dtype=np.uint8)
# tools/train's settings, shrunk: a small backbone, 32 px, one epoch.
TINY_RUN = dict(image_size=32, backbone='mini_vgg', weights='none',
                frozen_blocks=0, epochs=1, bootstrap_resamples=100, verbose=0)
'''

# Flags absl handles itself, for every tool.
_ABSL_FLAGS = {'flagfile'}
_FILE_EXTENSIONS = {'json', 'md', 'keras', 'py', 'txt', 'flags', 'png', 'csv',
                    'h5', 'lock', 'sh', 'pb', 'jpeg', 'jpg', 'dcm', 'whl'}


def _readme():
  with open(README, encoding='utf-8') as f:
    return f.read()


def _fenced_blocks(text):
  """[(language, first line number of the code, code)] of ``` blocks."""
  blocks = []
  for match in re.finditer(r'^```(\w*)\n(.*?)^```', text, re.M | re.S):
    line = text.count('\n', 0, match.start(2)) + 1
    blocks.append((match.group(1), line, match.group(2)))
  return blocks


def python_examples(text):
  return [(line, code) for lang, line, code in _fenced_blocks(text)
          if lang == 'python']


def _without_python_blocks(text):
  return re.sub(r'^```python\n.*?^```', '', text, flags=re.M | re.S)


def _shell_texts(text):
  """The places shell commands stand in: fenced non-Python blocks,
  indented blocks, and code spans; continuation lines joined."""
  text = _without_python_blocks(text)
  texts = [code for lang, _, code in _fenced_blocks(text)]
  outside = re.sub(r'^```\w*\n.*?^```', '', text, flags=re.M | re.S)
  indented = re.findall(r'(?:^(?: {4}|\t).*\n?)+', outside, re.M)
  texts += indented
  texts += re.findall(r'`([^`\n]+(?:\n[^`\n]+)?)`', outside)
  return [re.sub(r'\\\n\s*', ' ', t) for t in texts]


def _tool_names():
  return sorted(name[:-3] for name in os.listdir(CLI)
                if name.endswith('.py') and not name.startswith('_'))


def tool_commands(text):
  """[(tool, [arguments])] of every tools/NAME or xray-NAME command."""
  commands = []
  pattern = re.compile(r'(?:(?<![\w/.-])tools/|(?<![\w/.-])xray-)'
                       r'([a-z][a-z_-]*)(?![\w.-])')
  for chunk in _shell_texts(text):
    for line in chunk.splitlines():
      for match in pattern.finditer(line):
        # The command ends at a comment, &&, ||, a pipe, ; or a redirection
        # (a | inside a word is a value: --layout=kaggle|pool).
        rest = re.split(r'\s#|\s&&|\s\|\|?\s|;|\s\d?>', line[match.end():])[0]
        try:
          words = shlex.split(rest)
        except ValueError:  # a quote opened on another line
          words = rest.split()
        commands.append((match.group(1).replace('-', '_'),
                         [w.strip('[]') for w in words]))
  return commands


_DUMP_FLAGS = '''
import importlib, json, sys
from absl import flags
importlib.import_module('xray_tfdata.cli.' + sys.argv[1])
found = {}
for name in list(flags.FLAGS):
  flag = flags.FLAGS[name]
  found[name] = {'boolean': bool(flag.boolean),
                 'enum': list(getattr(flag.parser, 'enum_values', None) or [])}
print(json.dumps(found))
'''


def _flags_of(tool):
  """{flag: {'boolean', 'enum'}} of the tool, from its own definitions
  (each tool defines its absl flags at import: a process each)."""
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  result = subprocess.run([sys.executable, '-c', _DUMP_FLAGS, tool],
                          capture_output=True, text=True, env=env,
                          timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout)


@pytest.fixture(scope='module')
def tool_flags():
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    return dict(zip(_tool_names(), pool.map(_flags_of, _tool_names())))


def flag_problems(commands, tool_flags):
  """Lines naming each unknown tool, unknown flag or refused enum value."""
  problems = []
  for tool, words in commands:
    if tool not in tool_flags:
      problems.append(f'tools/{tool}: no such tool')
      continue
    defined = tool_flags[tool]
    for word in words:
      if not word.startswith('--'):
        continue
      name, has_value, value = word[2:].partition('=')
      if name in _ABSL_FLAGS:
        if name == 'flagfile':
          problems += _flagfile_problems(tool, value, defined)
        continue
      if name not in defined and not (
          name.startswith('no') and defined.get(name[2:], {}).get('boolean')):
        problems.append(f'tools/{tool}: no flag --{name}')
        continue
      enum = defined.get(name, {}).get('enum')
      placeholder = not value or re.search(r'[$<{]|^[A-Z_]+$|\.\.\.', value)
      if enum and has_value and not placeholder:
        problems += [f'tools/{tool} --{name}: {v!r} is not one of {enum}'
                     for v in value.split('|') if v not in enum]
  return problems


def _flagfile_problems(tool, value, defined):
  """A flagfile the README names must exist and hold the tool's flags."""
  cwd = os.getcwd()
  try:
    os.chdir(REPO_ROOT)
    expanded = runtime.expand_flagfiles([f'--flagfile={value}'])
  finally:
    os.chdir(cwd)
  missing = [w for w in expanded if w.startswith('--flagfile=')]
  if missing:
    return [f'tools/{tool}: flagfile {value} not found']
  return [f'tools/{tool} --flagfile={value}: no flag {w.partition("=")[0]}'
          for w in expanded
          if w.startswith('--') and w[2:].partition('=')[0] not in defined and
          not (w[2:].startswith('no') and
               defined.get(w[2:].partition('=')[0][2:], {}).get('boolean'))]


def test_every_tool_flag_in_the_readme_exists(tool_flags):
  commands = tool_commands(_readme())
  # The README shows every tool, with flags.
  assert {tool for tool, words in commands if words} >= set(_tool_names())
  assert flag_problems(commands, tool_flags) == []


def test_the_flag_check_finds_what_is_wrong(tool_flags):
  text = ('```sh\ntools/train --data_dir=x --no_such_flag=1 --nooverwrite\n'
          'tools/make_synthetic --layout=kaggle|floppy # --comment_flag\n'
          'tools/nonexistent --x\n```\nand `xray-predict --output=xml f`\n'
          '    tools/train --flagfile=configs/none.flags \\\n'
          '      --policy=float16\n')
  assert flag_problems(tool_commands(text), tool_flags) == [
      'tools/train: no flag --no_such_flag',
      "tools/make_synthetic --layout: 'floppy' is not one of "
      f"{tool_flags['make_synthetic']['layout']['enum']}",
      'tools/nonexistent: no such tool',
      'tools/train: flagfile configs/none.flags not found',
      "tools/train --policy: 'float16' is not one of "
      "['auto', 'float32', 'mixed_float16', 'mixed_bfloat16']",
      "tools/predict --output: 'xml' is not one of ['tsv', 'csv']",
  ]


def _module_names():
  """{short name: file} of the package's top-level modules and packages."""
  found = {}
  for name in os.listdir(PACKAGE):
    path = os.path.join(PACKAGE, name)
    if name.endswith('.py') and name != '__init__.py':
      found[name[:-3]] = path
    elif os.path.isfile(os.path.join(path, '__init__.py')):
      found[name] = os.path.join(path, '__init__.py')
  return found


def _defined_names(path):
  """The names a module defines at its top level (def, class, assignment,
  import), under if/try included."""
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read())
  names, stack = set(), list(tree.body)
  while stack:
    node = stack.pop()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      for target in targets:
        names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names.update((a.asname or a.name).partition('.')[0] for a in node.names)
    elif isinstance(node, (ast.If, ast.Try, ast.With)):
      for field in ('body', 'orelse', 'finalbody', 'handlers'):
        stack.extend(getattr(node, field, None) or [])
    elif isinstance(node, ast.ExceptHandler):
      stack.extend(node.body)
  return names


def attribute_problems(text):
  """`module.name` references (code spans and Python examples) to a name
  the package's module does not define."""
  modules = _module_names()
  spans = re.findall(r'`([^`]+)`', _without_python_blocks(text))
  spans += [code for _, code in python_examples(text)]
  problems = set()
  for span in spans:
    for module, name in re.findall(
        r'(?<![\w.])(?:xray_tfdata\.)?([a-z_]\w*)\.([A-Za-z_]\w*)', span):
      if module not in modules or name in _FILE_EXTENSIONS:
        continue
      package = os.path.dirname(modules[module])
      submodule = modules[module].endswith('__init__.py') and (
          os.path.exists(os.path.join(package, name + '.py')) or
          os.path.isdir(os.path.join(package, name)))
      if not submodule and name not in _defined_names(modules[module]):
        problems.add(f'{module}.{name}')
  return sorted(problems)


def test_every_module_name_in_the_readme_is_defined():
  assert attribute_problems(_readme()) == []


def test_the_name_check_finds_a_missing_name():
  text = ('Call `training.TrainConfig(...)`, `augment.NoSuchLayer` and '
          '`xray_tfdata.writer.convert(src, out)`; read `config.json`.\n'
          '```python\nfrom xray_tfdata import model\n'
          'model.build_model(32)\nmodel.no_such_function()\n```\n')
  assert attribute_problems(text) == ['augment.NoSuchLayer',
                                      'model.no_such_function']


def _substituted(code):
  for pattern, replacement, _ in SUBSTITUTIONS:
    code = re.sub(pattern, replacement, code)
  return code


def test_python_examples_parse_and_every_substitution_applies():
  examples = python_examples(_readme())
  assert examples
  for line, code in examples:
    ast.parse(code, f'README.md, the example at line {line}')
    ast.parse(_substituted(code), f'README.md, the example at line {line}')
  for pattern, _, why in SUBSTITUTIONS:
    assert any(re.search(pattern, code) for _, code in examples), (
        f'SUBSTITUTIONS: {pattern!r} ({why}) matches no example any more')


_RUN_EXAMPLES = '''
import json, sys
namespace = {'__name__': '__main__'}
exec(compile(sys.argv[2], 'PRELUDE (tests/test_readme.py)', 'exec'), namespace)
for line, code in json.load(open(sys.argv[1])):
  print(f'README example at line {line}', flush=True)
  exec(compile(code, f'README.md, the example at line {line}', 'exec'),
       namespace)
'''


def _sessions(examples):
  """The examples in processes of their own: a new one at each block that
  sets KERAS_BACKEND."""
  sessions = []
  for line, code in examples:
    if not sessions or 'KERAS_BACKEND' in code:
      sessions.append([])
    sessions[-1].append((line, _substituted(code)))
  return sessions


def _make_workspace(root):
  """data/kermany_224 (stored at 32 px; 75 training images or more, for a
  full batch of 62) and data/other_224 (another dataset, for external
  validation) under root."""
  from xray_tfdata.synthetic import kermany as synthetic  # pylint: disable=g-import-not-at-top
  from xray_tfdata import writer  # pylint: disable=g-import-not-at-top
  for name, seed in (('kermany_224', 0), ('other_224', 1)):
    src = os.path.join(root, 'src', name)
    synthetic.make_synthetic_kermany(src, num_images=120, seed=seed,
                                     layout='pool', size_scale=0.03,
                                     num_workers=1)
    counts = {'NORMAL': 6, 'PNEUMONIA': 8}
    writer.convert(src, os.path.join(root, 'data', name), image_size=32,
                   resplit=True, val_counts=counts, test_counts=counts,
                   seed=seed, num_workers=1, progress=False)


@pytest.mark.slow  # trains twice, exports, evaluates: a few minutes
def test_python_examples_run(tmp_path):
  examples = python_examples(_readme())
  _make_workspace(str(tmp_path))
  env = {k: v for k, v in os.environ.items() if k != 'KERAS_BACKEND'}
  env['PYTHONPATH'] = REPO_ROOT
  for i, session in enumerate(_sessions(examples)):
    blocks = tmp_path / f'session{i}.json'
    blocks.write_text(json.dumps(session))
    result = subprocess.run(
        [sys.executable, '-c', _RUN_EXAMPLES, str(blocks), PRELUDE],
        cwd=str(tmp_path), env=env, capture_output=True, text=True,
        timeout=1200, check=False)
    assert result.returncode == 0, (
        f'{result.stdout[-1500:]}\n{result.stderr[-4000:]}')
    ran = re.findall(r'^README example at line (\d+)$', result.stdout, re.M)
    assert ran == [str(line) for line, _ in session]
  # What the examples say they write.
  for path in ('vgg16.keras', 'runs/vgg16/results.json',
               'runs/vgg16/serving/saved_model.pb',
               'runs/vgg16/evaluation/other_224-test/results.json'):
    assert (tmp_path / path).exists(), path


def _module_table():
  """The README module table's module paths, in order."""
  text = _readme()
  start = text.index('| stage | module | tool |')
  table = text[start:text.index('\n\n', start)]
  return re.findall(r'`(xray_tfdata/[^`]+)`', table)


def test_module_table_lists_every_module_once():
  # A folder's row (`xray_tfdata/cli/`) stands for its modules that have no
  # row of their own.
  modules = sorted(
      os.path.relpath(os.path.join(folder, name), REPO_ROOT)
      for folder, _, files in os.walk(PACKAGE) for name in files
      if name.endswith('.py'))
  paths = _module_table()
  assert [p for p in paths if paths.count(p) > 1] == []
  assert [p for p in paths if not os.path.exists(
      os.path.join(REPO_ROOT, p))] == []
  files = [p for p in paths if not p.endswith('/')]
  folders = [p for p in paths if p.endswith('/')]
  unlisted = [m for m in modules
              if m not in files and not any(m.startswith(f) for f in folders)]
  assert unlisted == [], 'modules missing from the README module table'
