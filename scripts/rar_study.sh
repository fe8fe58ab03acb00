#!/usr/bin/env bash
# The RAR study of the README ("What RAR does, and the options"): prepares the one-class Fashion-MNIST dev sets
# (needs Debian's dataset-fashion-mnist: apt-get install dataset-fashion-mnist), runs the study's grids
# cfgs/grids/rar_study.yaml and rar_seed2.yaml with WORKERS torchrun workers (default 2; GRIDS="rar_screen rar_study
# rar_seed2" adds the screen of every option), then writes runs/rar_study/study.md and images/rar_rank.png from
# every run in that folder.
# Rerunning skips finished runs. Extra arguments go to every run, e.g. Exp.device=cpu.
set -euo pipefail
source "$(dirname "$0")/_env.sh"
setup_python requirements.txt
for class in 4 6 9; do
    [ -f "data/FMNIST_c$class/data.json" ] || "$PY" -m datasets.prepare fmnist --class "$class" --out ./data
done
for grid in ${GRIDS:-rar_study rar_seed2}; do
    "$PY" -m torch.distributed.run --standalone --nproc_per_node="${WORKERS:-2}" sweep.py \
        --grid "cfgs/grids/$grid.yaml" "$@"
done
"$PY" scripts/rar_study.py --runs runs/rar_study --figure images/rar_rank.png
