#!/usr/bin/env bash
# The reference's epoch against the library's on a GPU host with JAX but no
# TensorFlow or Keras (the lent H100/H200): installs the wheels it lacks,
# checks the device side against ImageDataGenerator on the GPU, makes the
# synthetic Kermany-sized JPEGs, and runs tools/benchmark --mode=device_epoch
# at the reference's split sizes: its VGG16 against ours, then each backbone
# of $BACKBONES (default densenet121) at each size of $SIZES (default 224
# 512) against its Keras core augmentation peer, with achieved TFLOP/s and
# the share of the GPU's dense peak. One command, sized to finish in about
# 8 minutes; BACKBONES= skips the backbone runs.
#
#   ../shared/tools/device-wheels.sh .whl     # here, once: keras, namex, optree
#   tools/gpu_benchmark.sh OUT_DIR [tools/benchmark flags...]
#
# OUT_DIR receives benchmark_device_epoch.json, benchmark_<backbone>_<size>.json,
# parity.log and gpu.txt.
# Environment: PYTHON (default python3), WHEELS (default .whl), WORK_DIR
# (default /tmp/xray_bench: the JPEGs, kept out of OUT_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: tools/gpu_benchmark.sh OUT_DIR [tools/benchmark flags...]}
shift
python=${PYTHON:-python3}
wheels=${WHEELS:-.whl}
work_dir=${WORK_DIR:-/tmp/xray_bench}
mkdir -p "$out" "$work_dir"
start=$SECONDS
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1

if ! "$python" -c 'import keras' 2>/dev/null; then
  ls "$wheels"/*.whl >/dev/null || { echo "error: no wheels in $wheels; run ../shared/tools/device-wheels.sh $wheels here first" >&2; exit 1; }
  "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$wheels"/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
  "$python" -c 'import jax, keras; print("jax", jax.__version__, jax.devices(), "keras", keras.__version__)'
} | tee "$out/gpu.txt"

# The ImageDataGenerator parity tests on this device (TensorFlow blocked, as
# it is absent here anyway): the GPU's float32 resampling must match too.
timeout 120 "$python" tests/no_tensorflow.py -q -p no:cacheprovider \
  -k 'not model_trains' tests/test_backend_parity.py 2>&1 | tail -25 \
  | tee "$out/parity.log" || true
echo "parity done at $((SECONDS - start)) s"

"$python" tools/benchmark --mode=device_epoch --work_dir="$work_dir" \
  --num_images=5306 --output="$out/benchmark_device_epoch.json" "$@" 2>&1 \
  | grep --line-buffered -v -E '^(WARNING|[IW][0-9]{4} )' | tee "$out/benchmark.log"
echo "vgg16 done at $((SECONDS - start)) s"

for backbone in ${BACKBONES-densenet121}; do
  for size in ${SIZES:-224 512}; do
    "$python" tools/benchmark --mode=device_epoch --work_dir="$work_dir" \
      --num_images=5306 --backbone="$backbone" --image_size="$size" \
      --variants=library,keras_core,floor \
      --output="$out/benchmark_${backbone}_${size}.json" "$@" 2>&1 \
      | grep --line-buffered -v -E '^(WARNING|[IW][0-9]{4} )' \
      | tee "$out/benchmark_${backbone}_${size}.log"
    echo "$backbone $size px done at $((SECONDS - start)) s"
  done
done
echo "all done at $((SECONDS - start)) s"
