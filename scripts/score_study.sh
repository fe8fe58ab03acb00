#!/usr/bin/env bash
# The scoring study of the README ("Scores referred to normal images"). Prepares the six dev sets (one-class
# Fashion-MNIST classes 4, 6 and 9, semantic and local; needs Debian's dataset-fashion-mnist), runs the grids
# GRIDS (default score_study; also backbones and length: cfgs/grids/<name>.yaml) with WORKERS torchrun workers
# (default 2), then scores every finished run of the scoring study with every score, form and reference
# (scripts/score_study.py) and writes its tables to studies/scores/ (the backbones grid's to studies/backbones/,
# the length grid's to studies/length/).
# Rerunning skips finished runs. Extra arguments go to every run, e.g. Exp.device=cpu.
set -euo pipefail
source "$(dirname "$0")/_env.sh"
setup_python requirements.txt
prepare_dev_sets
for grid in ${GRIDS:-score_study}; do
    run_grid "$grid" "$@"
done
"$PY" scripts/score_study.py --runs runs/score_study --archive studies/scores
if compgen -G "runs/backbones/*/results.json" >/dev/null; then  # the other backbones, with the AE study's form
    "$PY" scripts/score_study.py --runs runs/backbones --archive studies/backbones --form "linear q0.5"
fi
if compgen -G "runs/length/*/results.json" >/dev/null; then  # the benchmark's length against the RAR study's runs
    "$PY" scripts/score_study.py --length --runs runs/length --archive studies/length
fi
