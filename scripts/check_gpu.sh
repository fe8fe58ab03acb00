#!/usr/bin/env bash
# Run once on a GPU: trains short demo runs eagerly and with the captured CUDA-graph step (Exp.cuda_graph) from the
# same seed, compares their losses and test scores against the GPU's own run-to-run noise, and prints a verdict
# (check_gpu.py). Arguments go to check_gpu.py: --out DIR (default a fresh temporary folder), --data ROOT, --tiny.
set -euo pipefail
source "$(dirname "$0")/_env.sh"
setup_python requirements.txt
"$PY" check_gpu.py "$@"
