#!/usr/bin/env bash
# Run one of this project's Python scripts on a fresh GPU image that has python3 and PyTorch but none
# of the project's other dependencies and no network:
#
#   python bench/wheelhouse.py wheels --only diffusers importlib-metadata lazy-importer webdataset \
#       braceexpand segmentation-models-pytorch         # once, where pip reaches an index
#   bash bench/gpu_run.sh bench/bench_sampler_gpu.py --out OUT/sampler_gpu.json    # on the GPU machine
#
# What is missing is installed offline from the wheels folder (DAKTER_WHEELS, default ./wheels) with
# `pip install --no-index --find-links`; where pip cannot install into the image's environment (a
# read-only one, or a dependency it cannot resolve offline), the wheels go, unresolved, to a private
# folder on PYTHONPATH instead, and the import check below says whether that was enough. Ray is not
# carried (its wheel is ~70 MB). bench/gpu_evidence.sh is this with bench/gpu_evidence.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${DAKTER_WHEELS:-wheels}
[ $# -ge 1 ] || { echo "usage: bash bench/gpu_run.sh SCRIPT.py [ARGS ...]" >&2; exit 2; }

t0=$(date +%s)
probe='import accelerate, diffusers, webdataset, segmentation_models_pytorch, pyarrow, fsspec, safetensors, matplotlib, yaml, tqdm'
if ! "$PYTHON" -c "$probe" 2>/dev/null; then
  if [ ! -d "$WHEELS" ]; then
    echo "error: dependencies missing and no wheels folder $WHEELS (make one with bench/wheelhouse.py where pip reaches an index)" >&2
    exit 2
  fi
  echo "installing dakter-scale offline from $WHEELS"
  if ! "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" dakter-scale; then
    site=${TMPDIR:-/tmp}/dakter-site
    echo "pip could not install into this environment (above): installing the wheels without resolving dependencies into $site"
    "$PYTHON" -m pip install -q --no-index --no-deps --upgrade --target "$site" "$WHEELS"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  "$PYTHON" -c "$probe"
fi
echo "set-up: $(( $(date +%s) - t0 )) s"
exec "$PYTHON" "$@"
