"""The command-line tools, one module each (absl flags and main).

Installed as xray-make-tfrecords, xray-train, xray-predict, xray-benchmark,
xray-make-synthetic and xray-data-service; tools/NAME runs the same code from
a checkout. Importing a module defines its flags: import one per process.
"""
