#!/usr/bin/env bash
# The figures the docs show (images/overview.png, images/predict_overlays.png) from a trained run with a held-out
# reference, by default the demo's. images/rar_rank.png is the RAR study's: ./studies/rar/run.sh makes it.
# Usage: ./scripts/dev/figures.sh [RUN_DIR]     (make runs/demo_AE first with ./scripts/demo.sh)
set -euo pipefail
source "$(dirname "$0")/../_env.sh"
setup_python requirements.txt
"$PY" scripts/dev/readme_figures.py --run "${1:-runs/demo_AE}" --out images
