#!/usr/bin/env bash
# The ensemble-size study (README.md beside this file), at this commit: prepares the six Fashion-MNIST dev sets under
# ./data (needs Debian's dataset-fashion-mnist), runs ensemble_size.yaml (seed 1 of every set first, then seeds 2 and
# 3) and ensemble_size_published.yaml with WORKERS torchrun workers (default 2; one thread each), then archives every
# evaluated run into records/ and writes study.md from the records (analysis.py). Rerunning skips finished runs.
set -euo pipefail
source "$(dirname "$0")/../../scripts/_env.sh"
setup_python requirements.txt
for class in 4 6 9; do
    [ -f "data/FMNIST_c$class/data.json" ] || "$PY" -m datasets.prepare fmnist --class "$class" --out ./data
    [ -f "data/FMNIST_local_c$class/data.json" ] ||
        "$PY" -m datasets.prepare fmnist --class "$class" --anomalies local --out ./data
done
grid() {  # $1: grid file of this folder; $2: the order of its cells
    "$PY" -m torch.distributed.run --standalone --nproc_per_node="${WORKERS:-2}" sweep.py \
        --grid "studies/ensemble_size/$1" --cells "$2"
}
grid ensemble_size.yaml 0,3,6,9,12,15,1,4,7,10,13,16,2,5,8,11,14,17
grid ensemble_size_published.yaml 0-5
"$PY" -m studies.ensemble_size.analysis --runs runs/ensemble_size runs/ensemble_size_published \
    --study studies/ensemble_size
