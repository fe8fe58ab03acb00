#!/usr/bin/env bash
# The backbones study (README.md beside this file): AE-U and MemAE under the scoring study's design. Its grid
# (backbones.yaml) was run and scored, and is rerun, at commit 81a2410, the last with the scoring it needs:
#     git checkout 81a2410 && GRIDS=backbones ./scripts/score_study.sh
# Here this script writes study.md from records/ alone, by the scoring study's analysis with the form the AE study
# chose (studies/scores/analysis.py).
set -euo pipefail
source "$(dirname "$0")/../../scripts/_env.sh"
setup_python requirements.txt
"$PY" -m studies.scores.analysis --study studies/backbones --form "linear q0.5"
