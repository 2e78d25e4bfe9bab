#!/usr/bin/env bash
# The GPU evidence run, from a fresh image that has python3 and PyTorch but none of this project's
# other dependencies and no network:
#
#   python bench/wheelhouse.py wheels --only diffusers importlib-metadata lazy-importer webdataset \
#       braceexpand segmentation-models-pytorch         # once, where pip reaches an index
#   bash bench/gpu_evidence.sh OUT                       # on the GPU machine, from the repo root
#   bash bench/gpu_evidence.sh OUT --tiny                # the same run in minutes on a CPU
#
# The offline set-up is bench/gpu_run.sh's (wheels from DAKTER_WHEELS, default ./wheels). Ray is not
# carried (its wheel is ~70 MB): synthesis then runs in-process and says so. Arguments after OUT go to
# bench/gpu_evidence.py.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: bash bench/gpu_evidence.sh OUT [--tiny] [key=value ...]" >&2; exit 2; }
exec bash "$(dirname "$0")/gpu_run.sh" bench/gpu_evidence.py "$@"
