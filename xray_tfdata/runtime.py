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

`tool_errors` is the tools' shared ending for errors a user can act on: one
line on stderr and a non-zero exit instead of a traceback.
"""

import contextlib
import os
import signal
import sys

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


def configure_tensorflow_env(environ=None):
  """Sets TF_ENV_DEFAULTS in the environment where not already set.

  Call it before importing TensorFlow.

  Args:
    environ: the mapping to update; os.environ by default.

  Returns:
    dict of the variables of TF_ENV_DEFAULTS and the values now in force.
  """
  environ = os.environ if environ is None else environ
  for name, (value, _) in TF_ENV_DEFAULTS.items():
    environ.setdefault(name, value)
  return {name: environ[name] for name in TF_ENV_DEFAULTS}


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
