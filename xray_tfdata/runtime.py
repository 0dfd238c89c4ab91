"""Process-wide TensorFlow settings that the tools apply before TF starts.

Imports no TensorFlow: these are environment variables that TensorFlow reads
once, when it starts, so they must be set before `import tensorflow`. The
tools call `configure_tensorflow_env()` first thing; scripts of your own that
import the library can call it too, or export the variables.

Measured and left at TensorFlow's default: TF_ENABLE_ONEDNN_OPTS (off on
an AVX2 CPU). Turning it on made VGG16 training faster but batch-1
inference slower (figures and commands: BUILD_NOTES.md, "CPU runtime
settings"): export TF_ENABLE_ONEDNN_OPTS=1 when training on such a CPU.

Only defaults are set: a value already in the environment wins.

TensorFlow also writes about seven lines while it loads (an absl preamble,
CUDA probes, on a machine without a GPU an `E0000 ... cuInit` error) before
it reads TF_CPP_MIN_LOG_LEVEL; `quiet_tensorflow_startup` filters them out
of file descriptor 2 during the import.

`tool_errors` is the tools' shared ending for errors a user can act on: one
line on stderr and a non-zero exit instead of a traceback. `cpu_count` is
the CPUs the process may use (the converter's and the drawing's default
number of workers); `FirstImportHook` runs code about the first import of a
module (the quiet TensorFlow import here, the layer registration after
Keras in the package's `__init__`).
"""

import contextlib
import glob
import importlib.abc
import os
import re
import signal
import sys
import tempfile

from xray_tfdata import atomic
from xray_tfdata import errors

INTERRUPTED_EXIT_CODE = 130  # the shell's code for a Ctrl-C (128 + SIGINT)

# Each entry: variable -> (value, why).
TF_ENV_DEFAULTS = {
    'TF_CPP_MIN_LOG_LEVEL': (
        '2', 'keeps the C++ INFO and WARNING lines (CUDA probing, oneDNN '
        'notices) out of the tools\' output'),
    'TF_CPU_ALLOCATOR_USE_BFC': (
        'true', 'TensorFlow\'s default CPU allocator hands every large buffer '
        'back to the OS, so the next batch page-faults its 37 MB of float '
        'RGB pixels in again; the BFC pool keeps them, which made the '
        'gray->BGR preprocessing and the fused augmentation path faster '
        '(figures and commands: BUILD_NOTES.md, "CPU runtime settings")'),
}


def cpu_count():
  """The CPUs this process may run on (its affinity mask, where the OS has
  one: a container or `taskset` may allow fewer than the machine has)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def configure_tensorflow_env(environ=None):
  """Sets TF_ENV_DEFAULTS in the environment where not already set.

  Call it before importing TensorFlow. For the process's own environment it
  also keeps TensorFlow's start-up lines out of stderr
  (`quiet_tensorflow_startup`).

  Args:
    environ: the mapping to update; os.environ by default.

  Returns:
    dict of the variables of TF_ENV_DEFAULTS and the values now in force.
  """
  own = environ is None
  environ = os.environ if own else environ
  for name, (value, _) in TF_ENV_DEFAULTS.items():
    environ.setdefault(name, value)
  if own:
    quiet_tensorflow_startup()
  return {name: environ[name] for name in TF_ENV_DEFAULTS}


# TensorFlow's C++ code logs these while it loads, before its logging has
# read TF_CPP_MIN_LOG_LEVEL, so that variable cannot hold them back: the
# absl preamble, the CUDA and cuDNN probes of a build with GPU support, and
# the CPU feature and oneDNN notices. Keyed by the source file of the glog
# line ('I0000 00:00:1796296382.379260   17461 cudart_stub.cc:31] ...').
_ABSL_PREAMBLE = ('WARNING: All log messages before absl::InitializeLog() is '
                  'called are written to STDERR')
# The second line of cpu_feature_guard.cc's notice has no glog prefix.
_CPU_FEATURES_SECOND_LINE = 'To enable the following instructions: '
_STARTUP_SOURCES = ('cudart_stub.cc', 'cuda_fft.cc', 'cuda_dnn.cc',
                    'cuda_blas.cc', 'cpu_feature_guard.cc', 'port.cc')
# 'failed call to cuInit' is noise only where there is no GPU to find.
_NO_GPU_SOURCES = ('cuda_platform.cc', 'cuda_executor.cc', 'cuda_diagnostics.cc')
_GLOG_LINE = re.compile(r'^[IWE]\d{4} [\d:.]+\s+\d+ ([\w.]+):\d+\] ')


def _has_gpu_device_files():
  return bool(glob.glob('/dev/nvidia[0-9]*') or glob.glob('/dev/dxg') or
              os.path.exists('/dev/kfd'))


def is_startup_noise(line, gpu_device_files):
  """Whether a stderr line is one of TensorFlow's start-up lines.

  Args:
    line: one line, without its newline.
    gpu_device_files: whether the machine has GPU device files (then CUDA's
      errors are real and kept).
  """
  if line == _ABSL_PREAMBLE or line.startswith(_CPU_FEATURES_SECOND_LINE):
    return True
  match = _GLOG_LINE.match(line)
  if not match:
    return False
  source = match.group(1)
  return source in _STARTUP_SOURCES or (
      source in _NO_GPU_SOURCES and not gpu_device_files)


def quiet_tensorflow_startup():
  """Keeps TensorFlow's start-up lines out of stderr, from here on.

  When TensorFlow is first imported, file descriptor 2 is sent to a
  temporary file while it loads and probes its devices
  (`tf.config.list_physical_devices`, which leaves the runtime
  unconfigured), then restored; every line it caught is written to stderr
  again except those `is_startup_noise` names. Does nothing when
  TF_CPP_MIN_LOG_LEVEL is 0 (the user asked for every line) or TensorFlow
  is already imported. What it cannot hold back: lines TensorFlow writes
  later (say, CUDA errors when a GPU is first used), and, should the
  import crash the interpreter (a fatal signal), what it wrote to stderr.
  """
  if 'tensorflow' in sys.modules or os.environ.get(
      'TF_CPP_MIN_LOG_LEVEL', '0') in ('', '0'):
    return
  _QuietTensorflowImport.install()


class FirstImportHook(importlib.abc.MetaPathFinder):
  """Wraps the first real import of the module `name` in `around(module)`,
  then leaves sys.meta_path.

  A bare find_spec (`importlib.util.find_spec`, which `import tensorflow`
  runs to locate Keras without importing it) leaves it in place: only the
  import itself takes it out. A subclass sets `name` and defines `around`, a
  context manager entered before the module's code runs and left after.
  """

  name = None

  def around(self, module):
    raise NotImplementedError

  @classmethod
  def install(cls):
    """Puts the hook first in sys.meta_path, unless it is there already."""
    if not any(isinstance(f, cls) for f in sys.meta_path):
      sys.meta_path.insert(0, cls())

  @classmethod
  def remove(cls):
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, cls)]

  def find_spec(self, name, path=None, target=None):
    if name != self.name:
      return None
    # The module's own spec, from the finders other than the hooks (asking
    # importlib would ask this finder again).
    for finder in sys.meta_path:
      find = getattr(finder, 'find_spec', None)
      if isinstance(finder, FirstImportHook) or find is None:
        continue
      spec = find(name, path, target)
      if spec is not None:
        break
    else:
      return None
    if spec.loader is not None:
      spec.loader = _HookedLoader(spec.loader, self)
    return spec


class _HookedLoader(importlib.abc.Loader):
  """The module's own loader, run inside its hook's `around`."""

  def __init__(self, loader, hook):
    self._loader = loader
    self._hook = hook

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    type(self._hook).remove()  # its own submodules are found the plain way
    with self._hook.around(module):
      self._loader.exec_module(module)
      module.__loader__ = self._loader  # importlib.resources etc. see its own

  def __getattr__(self, name):
    return getattr(self._loader, name)


class _QuietTensorflowImport(FirstImportHook):
  """The first import of `tensorflow`, with fd 2 filtered (see
  quiet_tensorflow_startup)."""

  name = 'tensorflow'

  @contextlib.contextmanager
  def around(self, module):
    with _filtered_stderr():
      yield
      module.config.list_physical_devices()  # CUDA's probe lines, now


@contextlib.contextmanager
def _filtered_stderr():
  """Sends fd 2 to a temporary file, then writes back what is not noise."""
  gpu_device_files = _has_gpu_device_files()
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as caught:
    os.dup2(caught.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      caught.seek(0)
      lines = caught.read().decode('utf-8', 'replace').splitlines(True)
      kept = ''.join(l for l in lines if not is_startup_noise(
          l.rstrip('\r\n'), gpu_device_files))
      if kept:
        sys.stderr.write(kept)
        sys.stderr.flush()


@contextlib.contextmanager
def tool_errors(*user_errors):
  """Ends a tool with one line for the errors a user can act on.

  Every user-facing error of the package is an `errors.XrayError`, so one
  `with runtime.tool_errors():` serves every tool. Inside it, SIGTERM is
  handled as Ctrl-C, so that both run the cleanup a KeyboardInterrupt runs.
  Bugs (any other exception) keep their traceback.

  Args:
    *user_errors: further exception classes, outside the package, that
      describe a user's mistake; XrayError needs no mention.

  Raises:
    SystemExit: code 1 with `error: <message>` for a user error or a full
      disk (naming the path and "no space left"); code 130 with
      "interrupted; rerun the same command to resume" for Ctrl-C or SIGTERM.
  """
  previous = None
  try:
    previous = signal.signal(signal.SIGTERM, _interrupt)
  except ValueError:
    pass  # not the main thread: leave signals alone
  try:
    yield
  except KeyboardInterrupt:
    print('interrupted; rerun the same command to resume', file=sys.stderr,
          flush=True)
    raise SystemExit(INTERRUPTED_EXIT_CODE) from None
  # NoSpaceError is an OSError (its errno is ENOSPC), so it cannot also be an
  # XrayError, a ValueError: the two built-in bases have conflicting layouts.
  except (errors.XrayError, atomic.NoSpaceError) + user_errors as e:
    raise SystemExit(f'error: {e}') from None
  except Exception as e:  # pylint: disable=broad-except
    if not atomic.no_space(e):
      raise
    path = getattr(e, 'filename', None) or 'the output'
    raise SystemExit(f'error: {atomic.NoSpaceError(path)}') from None
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt


# The flagfiles shipped with the package (configs/ in the repository is a
# link to this folder).
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           'configs')


def _resolve_flagfile(path, base):
  """Where `--flagfile=path`, named in a file in folder `base` (None: on the
  command line, the current folder), is: relative to base; failing that, a
  'configs/...' path is looked up among the shipped flagfiles."""
  path = os.path.expanduser(path)
  if os.path.isabs(path):
    return path
  found = os.path.join(base, path) if base else path
  if not os.path.exists(found):
    parts = path.replace(os.sep, '/').split('/')
    shipped = os.path.join(CONFIGS_DIR, *parts[1:]) if (
        parts[0] == 'configs' and len(parts) > 1) else None
    if shipped and os.path.exists(shipped):
      return shipped
  return found


def expand_flagfiles(argv, base=None, _seen=()):
  """Replaces each `--flagfile=F` in argv by the flags F holds, in place
  (so later flags still win), recursively.

  absl resolves a nested `--flagfile` against the current folder; here it
  resolves against the folder of the file that names it, so a flagfile works
  from any folder. `configs/NAME.flags` also finds the flagfiles shipped with
  the package. A file that does not exist is left for absl to report.

  Args:
    argv: command-line arguments (without the program name).
    base: the folder relative paths start from; None for the current one.
  Returns:
    The arguments with every readable flagfile expanded.
  """
  out = []
  for arg in argv:
    name, sep, value = arg.partition('=')
    if not sep or name not in ('--flagfile', '-flagfile'):
      out.append(arg)
      continue
    path = _resolve_flagfile(value, base)
    real = os.path.realpath(path)
    if not os.path.isfile(path) or real in _seen:
      out.append(f'--flagfile={path}')  # absl names the problem
      continue
    with open(path, encoding='utf-8') as f:
      # absl's flagfile syntax: one flag a line; '#' and '//' comments.
      lines = [line.strip() for line in f]
    flags_in_file = [line for line in lines
                     if line and not line.startswith(('#', '//'))]
    out.extend(expand_flagfiles(flags_in_file, os.path.dirname(path),
                                _seen + (real,)))
  return out


def run_tool(main, module_name, required=(), flag_groups=()):
  """Runs a tool's absl `main`: its flagfiles expanded, its flags shown by
  `--help` whichever script started it (tools/NAME or the installed
  xray-NAME).

  Args:
    main: the tool's main(argv).
    module_name: the module defining the tool's flags (its __name__).
    required: flags that must be given.
    flag_groups: for a tool whose flags are defined with
      `module_name=GROUP` (config.define_flags), the groups in the order
      `--help` lists them.
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top

  module = sys.modules[module_name]
  main_module = sys.modules['__main__']
  usage = getattr(main_module, '__doc__', None) or module.__doc__
  if flag_groups:
    # absl's --help lists the main module's key flags under one heading;
    # its usage text, which comes first, lists them here by group instead.
    listing = '\n'.join(flags.FLAGS.module_help(group)
                        for group in flag_groups)
    # absl formats the usage text with %: the help's own % signs are kept.
    usage += '\nflags:' + listing.replace('%', '%%') + '\n'
  main_module.__doc__ = usage  # absl's usage text
  # absl's --help lists the main module's flags; these are the tool's.
  for flag in flags.FLAGS.get_key_flags_for_module(module_name):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  if required:
    flags.mark_flags_as_required(list(required))
  app.run(main, argv=sys.argv[:1] + expand_flagfiles(sys.argv[1:]))
