#!/usr/bin/env bash
# Train, then evaluate, D2UE with cfgs/Vin_MemAE.yaml. Arguments are config overrides, e.g. Data.root=/data/Med-AD Exp.device=cuda:1
set -euo pipefail
source "$(dirname "$0")/_env.sh"
run_config cfgs/Vin_MemAE.yaml "$@"
