#!/usr/bin/env bash
# The scoring study (README.md beside this file). Its runs were scored under every form of the referred scores and
# with two references, by code that left the core after commit 81a2410; the grid (score_study.yaml) was run and
# scored, and is rerun, at that commit:
#     git checkout 81a2410 && ./scripts/score_study.sh
# Here this script writes study.md from records/ alone (analysis.py).
set -euo pipefail
source "$(dirname "$0")/../../scripts/_env.sh"
setup_python requirements.txt
"$PY" -m studies.scores.analysis --study studies/scores
