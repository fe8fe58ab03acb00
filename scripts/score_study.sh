#!/usr/bin/env bash
# The scoring study of the README ("Scores referred to normal images"). Prepares the six dev sets (one-class
# Fashion-MNIST classes 4, 6 and 9, semantic and local; needs Debian's dataset-fashion-mnist), runs the grid
# cfgs/grids/score_study.yaml with WORKERS torchrun workers (default 2), then scores every finished run with every
# score and form (scripts/score_study.py) and writes the tables to studies/scores/. Rerunning skips finished
# runs. Extra arguments go to every run, e.g. Exp.device=cpu.
set -euo pipefail
source "$(dirname "$0")/_env.sh"
setup_python requirements.txt
for class in 4 6 9; do
    [ -f "data/FMNIST_c$class/data.json" ] || "$PY" -m datasets.prepare fmnist --class "$class" --out ./data
    [ -f "data/FMNIST_local_c$class/data.json" ] ||
        "$PY" -m datasets.prepare fmnist --class "$class" --anomalies local --out ./data
done
"$PY" -m torch.distributed.run --standalone --nproc_per_node="${WORKERS:-2}" sweep.py \
    --grid cfgs/grids/score_study.yaml "$@"
if [ -f scripts/score_study.py ]; then
    "$PY" scripts/score_study.py --runs runs/score_study --archive studies/scores
fi
