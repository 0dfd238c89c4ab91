"""The base class of the package's user-facing errors.

Every error a user can cause (a bad flag, a missing dataset, an unusable
model_dir, a full disk aside) derives from `XrayError`, so that a tool ends
with one line for all of them (`runtime.tool_errors`) and a Python caller
can catch them with one `except`. Bugs stay other exceptions and keep their
traceback.

Imports nothing: every module, TensorFlow-free ones included, can use it.
"""


class XrayError(ValueError):
  """Every user-facing error of the package.

  A ValueError, so that callers' `except ValueError` catches it too.
  """
