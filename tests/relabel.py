"""One small labelled-CSV source converted by the real writer, as it is and
relabelled three ways that keep every shard name, byte size and count.

Issue 32's relabellings of the same images: blank codes turned into -1.0;
0 and 1 swapped between two images (of two patients); the labels of two
images of one patient swapped. Only the records' codes change. The rows
are chosen so that the patient-grouped re-split (which looks at the
positives) draws the same splits each time; `legacy_fingerprint` lets a
test check that the shard names, sizes and counts did not change.
"""

import csv
import dataclasses
import os
import zlib

import numpy as np
from PIL import Image

from xray_tfdata import dataset_info
from xray_tfdata import writer

LABEL_NAMES = ('Effusion', 'Nodule')
SALT = 'relabel-salt'  # a given salt: the same images give the same records
SIZE = 16
# (path, patient, Effusion, Nodule) as the CSV spells them; '' is blank.
ROWS = (
    ('img/a1.png', 'A', '1', ''), ('img/a2.png', 'A', '0', '1'),
    ('img/b1.png', 'B', '', '0'), ('img/b2.png', 'B', '1', '0'),
    ('img/c1.png', 'C', '0', '0'), ('img/c2.png', 'C', '', '-1'),
    ('img/d1.png', 'D', '0', '1'), ('img/d2.png', 'D', '0', ''),
    ('img/e1.png', 'E', '0', '0'), ('img/e2.png', 'E', '-1', '0'),
    ('img/f1.png', 'F', '1', '0'), ('img/f2.png', 'F', '0', '0'),
)


def _blank_to_uncertain(rows):
  return [(p, q, *(c or '-1.0' for c in codes)) for p, q, *codes in rows]


def _swap(rows, first, second, columns):
  """rows with the cells `columns` (indices into the label columns) of rows
  `first` and `second` exchanged."""
  rows = [list(r) for r in rows]
  for c in columns:
    rows[first][2 + c], rows[second][2 + c] = (rows[second][2 + c],
                                               rows[first][2 + c])
  return [tuple(r) for r in rows]


# Each: the rows, and what changed in words.
CASES = {
    'blank_to_uncertain': _blank_to_uncertain(ROWS),
    # Effusion of b2 (1) and e1 (0).
    'swap_0_1_between_patients': _swap(ROWS, 3, 8, [0]),
    # a1 (1, blank) and a2 (0, 1): one patient's two images.
    'swap_within_patient': _swap(ROWS, 0, 1, [0, 1]),
}


def _image(root, rel):
  """A small image whose content depends only on its path."""
  path = os.path.join(root, rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(zlib.crc32(rel.encode()))
  Image.fromarray(rng.integers(0, 256, (20, 18), np.uint8)).save(path)


def write_source(src, rows=ROWS):
  """The csv-layout source folder: the images and labels.csv of `rows`."""
  for path, *_ in rows:
    if not os.path.exists(os.path.join(src, path)):
      _image(src, path)
  with open(os.path.join(src, 'labels.csv'), 'w', newline='') as f:
    out = csv.writer(f, lineterminator='\n')
    out.writerow(('path', 'patient_id') + LABEL_NAMES)
    out.writerows(rows)
  return src


def convert(src, out, rows=ROWS):
  """Writes `rows` into src's labels.csv and converts src into out
  (replacing a dataset there). Returns xray_info.json's dict."""
  write_source(src, rows)
  return writer.convert(
      src, out, image_size=SIZE, num_shards=1, num_workers=1, progress=False,
      overwrite=True, resplit=True, val_fraction=0.2, test_fraction=0.2,
      labels_csv=os.path.join(src, 'labels.csv'),
      label_columns=','.join(LABEL_NAMES), patient_id_salt=SALT)


def legacy_fingerprint(info):
  """The fingerprint `info` would have without content hashes (shard names,
  sizes and counts: a dataset converted before them)."""
  splits = {name: dict(entry, shards=[
      {k: v for k, v in shard.items() if k != dataset_info.CONTENT_KEY}
      for shard in entry['shards']]) for name, entry in info.splits.items()}
  return dataclasses.replace(info, splits=splits).fingerprint()
