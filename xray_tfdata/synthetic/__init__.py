"""Synthetic chest X-ray source trees in the real sets' file layouts.

The real sets cannot be downloaded here (data-use agreements, no network),
so each layout writes a small stand-in with the real file names, label-file
formats and quirks, for the demo, the tests and the benchmarks (and, for
the sources the library does not read yet, for their future readers). A
label shows in the pixels so that a model can learn it, and each writer
returns an independent recount of what it wrote. One module per layout,
two shared ones:

  draw      the drawing: a chest, its findings, the grain, a source's look.
  tree      the files: the folder's claim, the labelled trees' driver,
            CSV, gzip, PNG/JPEG and DICOM writers, the worker pool.
  kermany   Kermany's class folders: kaggle, mendeley, pool (and rsna).
  rsna      RSNA Pneumonia's DICOMs and label files (the rsna layout).
  nih       NIH ChestX-ray14 (and its BBox_List_2017.csv).
  chexpert  CheXpert-v1.0-small.
  mimic     MIMIC-CXR-JPG 2.0.0.
  padchest  PadChest (16-bit PNGs, the Labels list strings).
  vindr     VinDr-CXR (competition or PhysioNet files, three readers).
  siim      SIIM-ACR Pneumothorax (DICOMs, train-rle.csv, `encode_rle`).
  nih_google  NIH with Google's expert labels (YES/NO).
  nlm_tb    the NLM tuberculosis sets (Shenzhen, Montgomery).

  layouts   every layout by name: `layouts.make_synthetic(out_dir, layout,
            ...)` writes any of them (tools/make_synthetic calls it).

Each layout module's `make_synthetic_<layout>` takes the layout's own
options. Importing the package imports none of the modules. Everything is a
function of the seed: the same seed gives the same bytes. Only numpy, PIL
and (DICOM layouts) pydicom: no TensorFlow.
"""
