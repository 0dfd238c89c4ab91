"""The sources a dataset is converted from, one module per source.

  class_folders  kaggle, mendeley, pool: one folder of images per class
  rsna           the RSNA Pneumonia Detection Challenge's DICOMs and labels
  nih            NIH ChestX-ray14
  chexpert       CheXpert v1.0 and v1.0-small
  mimic          MIMIC-CXR-JPG
  nih_google     Google's expert labels for NIH (Majkowska et al. 2019)
  padchest       PadChest
  nlm_tb         the NLM tuberculosis sets (Shenzhen, Montgomery)
  vindr          VinDr-CXR (competition and PhysioNet layouts, every reader)
  labels_csv     a user's labelled folder (--labels_csv)

and what they share: `base` (the plan, the scanned file, the walk of a
tree), `tables` (the one CSV reader; the planning of the labelled sources),
`patients`, `duplicates` and `splits` (the one patient-grouped drawer).

The protocol: a source module has
  Options              a dataclass of its options (the tool's flags it
                       takes), with `check()` (raises `SourceError`, before
                       anything is scanned) and `arguments()` (what
                       xray_info.json records);
  detect(src_dir)      whether src_dir is unambiguously this source;
  scan(...)            its files and rows, every one accounted for
                       (written, skipped with the reason, duplicate,
                       unlabelled), with its official split where it
                       publishes one;
  plan(src_dir, options, seed, progress) -> `base.Plan`.
A new source is one such module and one line in `SOURCES`.

No TensorFlow here; this runs before the writer imports it.
"""

import dataclasses
import os

from xray_tfdata.sources import base
from xray_tfdata.sources import class_folders
from xray_tfdata.sources import chexpert
from xray_tfdata.sources import duplicates
from xray_tfdata.sources import labels_csv
from xray_tfdata.sources import mimic
from xray_tfdata.sources import nih
from xray_tfdata.sources import nih_google
from xray_tfdata.sources import nlm_tb
from xray_tfdata.sources import padchest
from xray_tfdata.sources import patients
from xray_tfdata.sources import rsna
from xray_tfdata.sources import splits
from xray_tfdata.sources import vindr

# --layout -> the module that reads it. Detection asks the modules in this
# order; a tree none of them recognises is read as class folders.
SOURCES = {
    'kaggle': class_folders,
    'mendeley': class_folders,
    'pool': class_folders,
    'rsna': rsna,
    'nih': nih,
    'chexpert': chexpert,
    'mimic': mimic,
    'nih_google': nih_google,
    'padchest': padchest,
    'nlm_tb': nlm_tb,
    'vindr': vindr,
    'csv': labels_csv,
}
LAYOUTS = ('auto',) + tuple(SOURCES)

# The names other modules use.
SourceError = base.SourceError
SourceFile = base.SourceFile
Plan = base.Plan
Progress = base.Progress
NO_PROGRESS = base.NO_PROGRESS
SPLIT_FOLDERS = base.SPLIT_FOLDERS
IMAGE_EXTENSIONS = base.IMAGE_EXTENSIONS
display_path = base.display_path
check_out_dir = base.check_out_dir
patient_id = patients.patient_id
find_duplicates = duplicates.find_duplicates
stable_order = splits.stable_order
parse_class_counts = splits.parse_class_counts
SPLIT_METHODS = splits.SPLIT_METHODS


def detect(src_dir):
  """The layout of src_dir its files name unambiguously ('rsna', 'nih',
  'chexpert', 'mimic', 'nih_google', 'padchest', 'nlm_tb', 'vindr'), else
  None (class folders, or --labels_csv).

  Raises:
    SourceError: src_dir holds the label files of two sources.
  """
  if not os.path.isdir(src_dir):
    return None
  found = []
  for layout, module in SOURCES.items():
    if module not in [SOURCES[f] for f in found] and module.detect(src_dir):
      found.append(layout)
  if 'nih_google' in found and 'nih' in found:
    found.remove('nih')  # Google's labels sit beside NIH's and name them
  labelled = [f for f in found if f != 'rsna']
  if len(labelled) > 1:
    raise SourceError(f'src_dir {src_dir} holds the label files of more than '
                      f'one multi-label set ({", ".join(labelled)}); pass '
                      '--layout=' + ' or '.join(labelled))
  # A labelled set's label files outrank an RSNA folder beside them.
  return (labelled or found or [None])[0]


def options(src_dir, layout='auto', **given):
  """The options of the source that reads src_dir, from the tool's flags.

  Args:
    src_dir: the source folder.
    layout: 'auto' (detected; `labels_csv` means 'csv') or a key of
      `SOURCES`.
    **given: the flags' values; None or False is not given. Each must be
      one of the source's `Options` fields.

  Returns:
    The source's `Options`, not yet checked.

  Raises:
    SourceError: an unknown layout, or a flag the source does not take.
  """
  if layout != 'auto' and layout not in SOURCES:
    raise SourceError(f'layout must be auto or one of {", ".join(SOURCES)}, '
                      f'got {layout!r}')
  resolved = layout
  if layout == 'auto':
    resolved = ('csv' if given.get('labels_csv') else
                detect(src_dir) or 'kaggle')
  source = SOURCES[resolved]
  fields = {f.name for f in dataclasses.fields(source.Options)}
  for flag, value in given.items():
    if value is not None and value is not False and flag not in fields:
      takers = [name for name, module in SOURCES.items()
                if flag in {f.name for f in dataclasses.fields(
                    module.Options)}]
      named = resolved if source is not class_folders else 'class folder'
      raise SourceError(
          f'--{flag} does not apply to the {named} layout (it is for '
          f'{", ".join(takers)}); drop it, or pass --layout')
  return source.Options(layout=layout, **{
      k: v for k, v in given.items() if k in fields})


def plan(src_dir, source_options, seed=0, progress=NO_PROGRESS):
  """The `base.Plan` of src_dir by the source whose options these are.

  Raises:
    SourceError: see the source's `plan`.
  """
  source = next(module for module in SOURCES.values()
                if type(source_options) is module.Options)
  return source.plan(src_dir, source_options, seed, progress)
