#!/usr/bin/env bash
# The whole D2UE pipeline on the built-in synthetic data (generated under ./data on first use), on CPU or GPU.
# Arguments are config overrides, e.g. Solver.num_epoch=10 for a quicker look.
set -euo pipefail
source "$(dirname "$0")/_env.sh"
start=$SECONDS
run_config cfgs/Demo_AE.yaml "$@"
echo "demo finished in $((SECONDS - start)) s (eval.py's last line above names the run folder and its TensorBoard logs)"
