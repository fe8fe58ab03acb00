#!/usr/bin/env bash
# Train and evaluate one config for seeds 1..N, then summarise every run beside them (mean ± std over seeds).
#   ./scripts/seeds.sh CONFIG N [Section.key=value ...]
#   e.g. ./scripts/seeds.sh cfgs/RSNA_AE.yaml 5 Data.root=/data/Med-AD
# Exp.out_dir must contain {seed} (the shipped configs' default, ./runs/{dataset}_{network}_s{seed}, does).
# The summary covers the folder holding the run folders (./runs by default); SUMMARY_ROOT=DIR picks another.
# Rerunning resumes: finished learners are skipped.
# Not a sweep.py grid, which would move the runs into a grid folder and summarise only its own cells.
set -euo pipefail
source "$(dirname "$0")/_env.sh"
if [ $# -lt 2 ] || ! [[ "$2" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 CONFIG N [Section.key=value ...]   (runs seeds 1..N)" >&2
    exit 2
fi
cfg="$1"
seeds="$2"
shift 2
setup_python requirements.txt

# The parent of the run folders; refuse an out_dir without {seed}, where every seed would share one folder.
parent=$("$PY" - "$cfg" "$@" <<'PYTHON'
import sys
from utils.run import config
from utils.errors import UserError
try:
    first, second = (config.load(sys.argv[1], [*sys.argv[2:], f"Solver.seed={seed}"]).run_dir for seed in (1, 2))
except UserError as err:
    sys.exit(f"error: {err}")
if first == second:
    sys.exit(f"error: Exp.out_dir ({first}) has no {{seed}}, so every seed would share one run folder; "
             f"add e.g. Exp.out_dir={first}_s{{seed}}")
print(first.parent)
PYTHON
)

for seed in $(seq 1 "$seeds"); do
    echo "=== seed $seed of $seeds ===" >&2
    run_config "$cfg" "$@" "Solver.seed=$seed"
done
"$PY" eval.py --summary "${SUMMARY_ROOT:-$parent}"
