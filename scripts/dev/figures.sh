#!/usr/bin/env bash
# The README figures (images/overview.png, rar_tsne.png, maps.png) from a trained run, by default the demo's.
# Usage: ./scripts/dev/figures.sh [RUN_DIR]     (make runs/demo_AE first with ./scripts/demo.sh)
set -euo pipefail
source "$(dirname "$0")/../_env.sh"
setup_python requirements.txt
"$PY" scripts/dev/readme_figures.py --run "${1:-runs/demo_AE}" --out images
