"""Several commands run at once, each in a fresh process of its own.

A test process that only imports TensorFlow and then refuses its input, or
loads a model, spends most of its time importing on one core; a 2-core host
runs two such processes in about the time of one. Each command still gets
its own interpreter, environment and output.
"""

import subprocess
import tempfile
import time


def run_at_once(commands, timeout=600):
  """Starts every command, then waits for all of them.

  Output goes to temporary files, not pipes: a process writing more than a
  pipe holds would wait for a reader busy with another process.

  Args:
    commands: {key: (argv, popen_kwargs)}; popen_kwargs as for
      `subprocess.Popen` (env, cwd), without stdout or stderr.
    timeout: seconds for all of them together; the processes still running
      then are killed and `subprocess.TimeoutExpired` is raised.

  Returns:
    {key: subprocess.CompletedProcess} with text stdout and stderr.
  """
  deadline = time.monotonic() + timeout
  started = {}
  try:
    for key, (argv, kwargs) in commands.items():
      out = tempfile.TemporaryFile('w+')  # pylint: disable=consider-using-with
      err = tempfile.TemporaryFile('w+')  # pylint: disable=consider-using-with
      started[key] = (subprocess.Popen(  # pylint: disable=consider-using-with
          argv, stdout=out, stderr=err, text=True, **kwargs), out, err)
    results = {}
    for key, (process, out, err) in started.items():
      process.wait(timeout=max(0, deadline - time.monotonic()))
      out.seek(0)
      err.seek(0)
      results[key] = subprocess.CompletedProcess(
          process.args, process.returncode, out.read(), err.read())
    return results
  finally:
    for process, out, err in started.values():
      if process.poll() is None:
        process.kill()
        process.wait()
      out.close()
      err.close()
