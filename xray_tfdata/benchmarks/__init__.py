"""Side-by-side benchmarks: `tools/benchmark --mode=...`.

Machines here are shared and noisy, so every variant of a mode runs in the
same process, interleaved round by round, and the reports give medians and
ratios rather than single timings.

  baseline      the reference notebook's ImageDataGenerator
                `flow_from_directory` and its VGG16, the synthetic JPEGs
                (any Keras backend).
  common        timing, medians, ratios, the machine record, the result JSON.
  peers         the pipeline a Keras user writes today:
                `image_dataset_from_directory` + Keras core augmentation.
  input         images/s delivered to the model (TensorFlow).
  epoch         seconds per epoch (TensorFlow).
  ops           images/s of the parts on tensors in memory (TensorFlow).
  reader_scale  the reader on a split larger than its memory budget: decode,
                disk cache, memory cache (TensorFlow).
  device_epoch  the reference's epoch against ours on any Keras backend, with a
                FLOP count (no TensorFlow).

Importing the package imports none of them (device_epoch must run where
TensorFlow is absent).
"""
