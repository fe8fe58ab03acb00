#!/usr/bin/env bash
# The length study (README.md beside this file). Its grid (length.yaml) was run, and is rerun, at commit 81a2410:
#     git checkout 81a2410 && GRIDS=length ./scripts/score_study.sh
# Here this script archives any evaluated run under runs/length into records/, then writes study.md from the records
# alone, beside the RAR study's 30-epoch records (analysis.py).
set -euo pipefail
source "$(dirname "$0")/../../scripts/_env.sh"
setup_python requirements.txt
"$PY" -m studies.length.analysis --runs runs/length --study studies/length
