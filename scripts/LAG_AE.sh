#!/usr/bin/env bash
# Train, then evaluate, D2UE with cfgs/LAG_AE.yaml. Arguments are config overrides, e.g. Data.root=/data/Med-AD Exp.device=cuda:1
set -euo pipefail
source "$(dirname "$0")/_env.sh"
run_config cfgs/LAG_AE.yaml "$@"
