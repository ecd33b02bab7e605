#!/usr/bin/env bash
# The GPU proof in one call, from the repository root of a machine with an NVIDIA GPU:
#   bash bench/gpu_check.sh            # report in $OUT (else bench/out): gpu_check.json, gpu_check.md, gpu_check.log
#   bash bench/gpu_check.sh --dry-run  # CPU, tiny sizes
#   bash bench/gpu_check.sh --parts tests,capture --budget 480   # issue 23, first call
#   bash bench/gpu_check.sh --parts gc,batch --budget 240        # issue 23, second call (time permitting)
# Uses $PYTHON, else the python3 on PATH (the one that has a CUDA torch). Missing packages are installed by the
# script into a private folder, from .whl/ (or $TIWIZ_WHEELS) first, then from the package index.
cd "$(dirname "$0")/.." || exit 2
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"
