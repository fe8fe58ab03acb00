#!/usr/bin/env bash
# The whole D2UE pipeline on the built-in synthetic data (generated under ./data on first use), on CPU or GPU.
# Arguments are config overrides, e.g. Solver.num_epoch=10 for a quicker look.
set -euo pipefail
source "$(dirname "$0")/_env.sh"
start=$SECONDS
run_config cfgs/Demo_AE.yaml "$@"
out=$("$PY" -c 'import sys; from utils import config; print(config.load(sys.argv[1], sys.argv[2:]).run_dir)' \
    cfgs/Demo_AE.yaml "$@")
echo "demo finished in $((SECONDS - start)) s; outputs in $out (tensorboard --logdir $(dirname "$out"))"
