"""The run directory's contract: its file names and a typed reader of the
run's config.json and results.json.

  run = run_dir.read(model_dir)        # a finished tools/train run
  run.label_names                      # ('PNEUMONIA',) or NIH's 14
  run.thresholds('youden')             # {label: threshold chosen on val}
  run.temperatures()                   # {label: T fitted on val, or None}

Every module that reads or writes a run's files (training, resume, the
evaluation, serving, tools/predict, tools/evaluate) takes the names from
here, and every reader of results.json goes through `Run`, so the layout
(README, "results.json") is declared in one place.

results.json (RESULTS_FORMAT 2) holds, per label in the model's output
order, the operating points chosen on validation (`thresholds`), the
temperature fitted there (`calibration`) and each split's metrics with
their intervals (`splits`); a run written before format 2 kept the same
per-label entries under 'evaluation', and is read alike.

No TensorFlow, no Keras: a reader of results needs neither.
"""

import dataclasses
import json
import os

from xray_tfdata import dataset_info
from xray_tfdata import errors
from xray_tfdata import schema

CONFIG_JSON = 'config.json'  # the settings; present from the first epoch
RESULTS_JSON = 'results.json'  # written last: its presence marks the end
RESULTS_MD = 'results.md'
MODEL_FILE = 'model.keras'
SERVING_DIR = 'serving'
BACKUP_DIR = 'backup'  # the resume state of the last finished epoch
HISTORY_CSV = 'history.csv'
LOGS_DIR = 'logs'  # TensorBoard
EVALUATION_DIR = 'evaluation'  # tools/evaluate's reports on other data

# config.json's record of the dataset (`resume.dataset_record`); not a
# setting.
DATASET_KEY = 'dataset'
# config.json's record of the run's outputs, in order.
LABEL_NAMES_KEY = 'label_names'

# The layout of results.json, recorded in it; a results.json without it
# was written before the one layout (its labels under 'evaluation').
RESULTS_FORMAT = 2
RESULTS_FORMAT_KEY = 'format'


class RunDirError(errors.XrayError):
  """A model_dir that is not a (finished) tools/train run."""


def path(model_dir, name):
  """model_dir/name, for one of this module's file names."""
  return os.path.join(model_dir, name)


def _read_json(file_path):
  with open(file_path) as f:
    return json.load(f)


@dataclasses.dataclass(frozen=True)
class Run:
  """A tools/train run, as its config.json and results.json record it."""
  model_dir: str
  record: dict  # config.json: the settings, DATASET_KEY, LABEL_NAMES_KEY
  results: dict  # results.json; {} while the run is unfinished

  @property
  def finished(self):
    return bool(self.results)

  @property
  def settings(self):
    """The run's settings (config.json without its records)."""
    return {k: v for k, v in self.record.items()
            if k not in (DATASET_KEY, LABEL_NAMES_KEY)}

  @property
  def data_dir(self):
    return self.record.get('data_dir')

  @property
  def image_size(self):
    """The stored height and width the model takes, or None where
    config.json does not say."""
    try:
      return int(self.record['image_size'])
    except (KeyError, TypeError, ValueError):
      return None

  @property
  def label_policy(self):
    return self.record.get('label_policy')

  @property
  def dataset(self):
    """config.json's record of the training dataset, or None."""
    return self.record.get(DATASET_KEY)

  @property
  def label_names(self):
    """The model's outputs in order: config.json's record, else the
    results' label order; for a single-label run of a version before the
    one label path (no names recorded), its one output's name: the label
    its evaluation scored, else the positive class (--positive_class, else
    the dataset's second class name, else PNEUMONIA)."""
    names = (self.record.get(LABEL_NAMES_KEY) or
             self.results.get('label_names') or
             self.results.get('evaluation', {}).get('label_names'))
    if names:
      return tuple(names)
    scored = tuple(self.label_results())
    if len(scored) == 1:
      return scored
    return (self._positive_class(),)

  def _positive_class(self):
    """The class a single-label run of an older version scored."""
    if self.record.get('positive_class'):
      return str(self.record['positive_class'])
    try:
      names = dataset_info.load_info(self.data_dir or '').class_names
    except (OSError, ValueError):  # DatasetError: moved, deleted, elsewhere
      names = schema.DEFAULT_CLASS_NAMES
    return str(names[1])

  def label_results(self):
    """{label: its results entry ('thresholds', 'calibration', 'splits')},
    in either layout; {} without an evaluation."""
    if RESULTS_FORMAT_KEY in self.results:
      return dict(self.results.get('labels') or {})
    return dict(self.results.get('evaluation', {}).get('labels') or {})

  def thresholds(self, operating_point='youden', calibrated=False):
    """{label: threshold chosen on validation at `operating_point`, or
    None where the evaluation chose none}; with calibrated, the same
    decision on the temperature-scaled probability."""
    key = 'calibrated_threshold' if calibrated else 'threshold'
    out = {}
    for name, entry in self.label_results().items():
      point = (entry.get('thresholds') or {}).get(operating_point) or {}
      # Format 2 keeps every key, null where it does not apply.
      out[name] = float(point[key]) if point.get(key) is not None else None
    return out

  def temperatures(self):
    """{label: the temperature fitted on validation, or None}."""
    return {name: (float(entry['calibration']['temperature'])
                   if (entry.get('calibration') or {}).get('temperature')
                   is not None else None)
            for name, entry in self.label_results().items()}


def read(model_dir, finished=True):
  """Reads a run's config.json (and results.json).

  Args:
    model_dir: a tools/train run's folder.
    finished: require results.json (and the saved model).

  Returns:
    A Run.

  Raises:
    RunDirError: a file is missing or not JSON, naming it and the fix.
  """
  required = [CONFIG_JSON] + ([MODEL_FILE, RESULTS_JSON] if finished else [])
  for name in required:
    if not os.path.exists(path(model_dir, name)):
      raise RunDirError(
          f'{path(model_dir, name)} not found: --model_dir must be a '
          f'{"finished " if finished else ""}tools/train run')
  out = {}
  for name in (CONFIG_JSON, RESULTS_JSON):
    file_path = path(model_dir, name)
    if not os.path.exists(file_path):
      out[name] = {}
      continue
    try:
      out[name] = _read_json(file_path)
    except (OSError, ValueError) as e:
      raise RunDirError(f'{file_path} is not readable JSON ({e}): rerun '
                        'tools/train with --overwrite') from e
  return Run(model_dir=model_dir, record=out[CONFIG_JSON],
             results=out[RESULTS_JSON])
