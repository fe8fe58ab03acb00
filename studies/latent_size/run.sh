#!/usr/bin/env bash
# The latent-size study (README.md beside this file), at this commit: prepares the six Fashion-MNIST dev sets under
# ./data (needs Debian's dataset-fashion-mnist), runs latent_size.yaml with WORKERS torchrun workers (default 2; one
# thread each; seed 1 of every set first, then seeds 2 and 3), then archives every evaluated run into records/ and
# writes study.md (analysis.py), and scores the same runs with every error map (../error_map). Rerunning skips
# finished runs. The ls 16 cells take their learners from the ensemble-size study's runs when they are there.
set -euo pipefail
source "$(dirname "$0")/../../scripts/_env.sh"
setup_python requirements.txt
for class in 4 6 9; do
    [ -f "data/FMNIST_c$class/data.json" ] || "$PY" -m datasets.prepare fmnist --class "$class" --out ./data
    [ -f "data/FMNIST_local_c$class/data.json" ] ||
        "$PY" -m datasets.prepare fmnist --class "$class" --anomalies local --out ./data
done
seed1=0,3,6,18,21,24,36,39,42,54,57,60,9,12,15,27,30,33,45,48,51,63,66,69
"$PY" -m torch.distributed.run --standalone --nproc_per_node="${WORKERS:-2}" sweep.py \
    --grid studies/latent_size/latent_size.yaml --cells "$seed1"
"$PY" -m torch.distributed.run --standalone --nproc_per_node="${WORKERS:-2}" sweep.py \
    --grid studies/latent_size/latent_size.yaml
"$PY" -m studies.latent_size.analysis --runs runs/latent_size --study studies/latent_size
"$PY" -m studies.error_map.analysis --runs runs/latent_size --study studies/error_map
