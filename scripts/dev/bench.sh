#!/usr/bin/env bash
# Time the fast path (train.py, eval.py) against the published code's naive loop on synthetic RSNA-sized data.
# Arguments go to scripts/dev/bench.py, e.g. --device cuda --epochs 250; the last line printed is one JSON object.
set -euo pipefail
source "$(dirname "$0")/../_env.sh"
setup_python requirements.txt
"$PY" scripts/dev/bench.py "$@"
