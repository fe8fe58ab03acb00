#!/usr/bin/env bash
# The whole D2UE pipeline on the built-in synthetic data, on CPU or GPU: makes the data under ./data/demo when it is
# missing (python -m datasets.prepare.demo), then trains and evaluates cfgs/Demo_AE.yaml.
# Arguments are config overrides, e.g. Solver.num_epoch=5 for a quicker look.
set -euo pipefail
source "$(dirname "$0")/_env.sh"
start=$SECONDS
setup_python requirements.txt
root=./data  # the config's Data.root, unless an override moves it
for setting in "$@"; do
    case "$setting" in Data.root=*) root="${setting#Data.root=}" ;; esac
done
[ -f "$root/demo/data.json" ] || "$PY" -m datasets.prepare.demo "$root/demo"
run_config cfgs/Demo_AE.yaml "$@"
echo "demo finished in $((SECONDS - start)) s (eval.py's last line above names the run folder and its TensorBoard logs)"
