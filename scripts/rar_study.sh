#!/usr/bin/env bash
# The RAR study of the README ("What RAR does, and the options"). Prepares the six dev sets, one-class Fashion-MNIST
# classes 4, 6 and 9 with semantic anomalies (FMNIST_c<C>) and with local defects (FMNIST_local_c<C>, with masks)
# (needs Debian's dataset-fashion-mnist: apt-get install dataset-fashion-mnist); restores the archived runs
# (studies/rar) into runs/rar_screen and runs/rar_confirm, so that their cells count as done; runs the grids
# cfgs/grids/rar_screen.yaml and rar_confirm.yaml (GRIDS="..." picks others; a grid file not there yet is skipped)
# with WORKERS torchrun workers (default 2); then archives every evaluated run and writes the tables
# (studies/rar/study.md) and images/rar_rank.png from the archive (scripts/rar_study.py).
# Rerunning skips finished runs. Extra arguments go to every run, e.g. Exp.device=cpu.
set -euo pipefail
source "$(dirname "$0")/_env.sh"
setup_python requirements.txt
prepare_dev_sets
"$PY" scripts/rar_study.py --restore runs/rar_screen runs/rar_confirm
for grid in ${GRIDS:-rar_screen rar_confirm}; do
    if [ ! -f "cfgs/grids/$grid.yaml" ]; then
        echo "skipping grid $grid: cfgs/grids/$grid.yaml does not exist yet" >&2
        continue
    fi
    run_grid "$grid" "$@"
done
"$PY" scripts/rar_study.py --runs runs/rar_screen runs/rar_confirm --archive studies/rar \
    --figure images/rar_rank.png
