#!/usr/bin/env bash
# The RAR study (README.md beside this file). Its grids, rar_screen.yaml and rar_confirm.yaml, name options that left
# the core after commit 81a2410 (the other similarities, Solver.spread, Model.repel_on); they were run, and are rerun,
# at that commit:
#     git checkout 81a2410 && ./scripts/rar_study.sh
# Here this script archives any evaluated run under runs/rar_screen and runs/rar_confirm into records/, then writes
# study.md and images/rar_rank.png from the records alone (analysis.py).
set -euo pipefail
source "$(dirname "$0")/../../scripts/_env.sh"
setup_python requirements.txt
"$PY" -m studies.rar.analysis --runs runs/rar_screen runs/rar_confirm --study studies/rar --figure images/rar_rank.png
