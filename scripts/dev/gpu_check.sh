#!/usr/bin/env bash
# The checks and timings of the CUDA path, for a lent GPU, in stages that each fit one 10-minute device call:
#
#   PYTHON=python3 ./scripts/dev/gpu_check.sh tests bench e2e grid      (results under $OUT, default runs/gpu_check/out)
#
#   tests  the whole suite, the CUDA tests included                                  -> tests.txt
#   bench  scripts/dev/bench.py --device cuda --epochs 250, and a profiled junior     -> bench.json, profile.txt
#   e2e    synthetic RSNA-sized data on disk (3851 train, 1000 + 1000 test, 512 x 512 PNGs, made once), then
#          train.py + eval.py of cfgs/RSNA_AE.yaml on it, timed end to end, with Exp.cuda_graph=true and =false  -> e2e.txt
#   grid   8 RSNA_AE cells (seeds 1-8, 25 epochs) on that data, run by 1, 2, 4 and 8 torchrun workers sharing
#          the one GPU: seconds and cells per minute                                  -> grid.txt
#
# Each stage also appends its lines to $OUT/gpu_check.md. Data and run folders go to $WORK (default
# runs/gpu_check), outside $OUT. Smaller settings for a quick run anywhere (the CPU test uses them): DEVICE (cuda),
# N_TRAIN (3851), N_TEST (2000) (bench and e2e), SIZE (512), EPOCHS (250), GRID_CELLS (8), GRID_EPOCHS (25), GRID_WORKERS ("1 2 4 8").
set -euo pipefail
source "$(dirname "$0")/../_env.sh"
setup_python requirements-test.txt
OUT="${OUT:-runs/gpu_check/out}"
WORK="${WORK:-runs/gpu_check}"
DEVICE="${DEVICE:-cuda}"
N_TRAIN="${N_TRAIN:-3851}" N_TEST="${N_TEST:-2000}" SIZE="${SIZE:-512}" EPOCHS="${EPOCHS:-250}"
GRID_CELLS="${GRID_CELLS:-8}" GRID_EPOCHS="${GRID_EPOCHS:-25}" GRID_WORKERS="${GRID_WORKERS:-1 2 4 8}"
DATA="$WORK/data" DATASET=rsna_synthetic
[ $# -gt 0 ] || set -- tests bench e2e grid
for stage in "$@"; do
    case "$stage" in tests | bench | e2e | grid) ;; *) echo "error: unknown stage '$stage'; stages: tests bench e2e grid" >&2; exit 2 ;; esac
done
mkdir -p "$OUT" "$WORK"

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
seconds_since() { local ms=$(( $(now_ms) - $1 )); printf '%d.%03d' $(( ms / 1000 )) $(( ms % 1000 )); }
note() { echo "$*" | tee -a "$OUT/gpu_check.md"; }

make_data() {
    [ -f "$DATA/$DATASET/data.json" ] && return
    local began
    began=$(now_ms)
    "$PY" -m datasets.prepare.demo "$DATA/$DATASET" --n-train "$N_TRAIN" --n-test "$N_TEST" --size "$SIZE" \
        --workers "$(nproc)" >/dev/null
    note "data: $N_TRAIN train, $N_TEST test, ${SIZE}x$SIZE PNGs written in $(seconds_since "$began") s ($DATA/$DATASET)"
}

aucs() {  # image AUC of each score in a results.json
    "$PY" -c 'import json, sys; r = json.load(open(sys.argv[1]))
print(", ".join(s + " AUC " + format(r[s]["auc"], ".4f") for s in ("rec", "unc", "dsu")))' "$1"
}

# DEVICE resolved as train.py, eval.py and bench.py resolve it: a bad value stops here, in one line.
resolved=$("$PY" -c 'import sys; from utils.errors import cli; from utils.run.runtime import pick_device
cli(lambda: print(pick_device(sys.argv[1])))()' "$DEVICE") || exit $?
note "# gpu_check $(date -u +%FT%TZ): $("$PY" -c 'import torch; print(f"torch {torch.__version__}, " + (torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"))'), $(nproc) cores, DEVICE=$DEVICE -> $resolved"
for stage in "$@"; do
    case "$stage" in
    tests)
        began=$(now_ms)
        set +e
        PYTHON="$PY" scripts/test.sh -rs >"$OUT/tests.txt" 2>&1  # the README's test command, skip reasons listed
        status=$?
        set -e
        note "tests: exit $status in $(seconds_since "$began") s: $(tail -n 1 "$OUT/tests.txt")"
        ;;
    bench)
        "$PY" scripts/dev/bench.py --device "$DEVICE" --epochs "$EPOCHS" --n-train "$N_TRAIN" --n-test "$N_TEST" \
            --profile "$OUT/profile.txt" | tee "$OUT/bench.txt"
        tail -n 1 "$OUT/bench.txt" >"$OUT/bench.json"
        note "bench: $(cat "$OUT/bench.json")"
        ;;
    e2e)
        make_data
        settings_run="true false"
        if [ "$resolved" = cpu ]; then  # Exp.cuda_graph=true trains eagerly on the CPU: the same run twice
            settings_run="false"
            note "e2e Exp.cuda_graph=true: not run, the captured step is CUDA's alone (on the CPU it is the eager run below)"
        fi
        for fast in $settings_run; do
            run="$WORK/e2e_fast_$fast"
            rm -rf "$run"
            settings=(Data.root="$DATA" Data.dataset="$DATASET" Exp.out_dir="$run" Exp.device="$DEVICE"
                      Exp.cuda_graph="$fast" Solver.num_epoch="$EPOCHS")
            began=$(now_ms)
            "$PY" train.py --config cfgs/RSNA_AE.yaml "${settings[@]}" >/dev/null
            "$PY" eval.py --config cfgs/RSNA_AE.yaml "${settings[@]}" >/dev/null
            took=$(seconds_since "$began")
            cp "$run/train.log" "$OUT/e2e_fast_${fast}_train.log"
            cp "$run/results.json" "$OUT/e2e_fast_${fast}_results.json"
            note "e2e Exp.cuda_graph=$fast: train.py + eval.py of cfgs/RSNA_AE.yaml ($EPOCHS epochs) in $took s, start-up and loading included; $(aucs "$run/results.json")" | tee -a "$OUT/e2e.txt"
        done
        ;;
    grid)
        make_data
        for workers in $GRID_WORKERS; do
            name="grid_w$workers"
            rm -rf "${WORK:?}/$name"
            cat >"$WORK/$name.yaml" <<EOF
name: $name
out_dir: $WORK
configs: [cfgs/RSNA_AE.yaml]
seeds: [$(seq -s ', ' 1 "$GRID_CELLS")]
overrides: {Data.root: $DATA, Data.dataset: $DATASET, Solver.num_epoch: $GRID_EPOCHS}
EOF
            began=$(now_ms)
            "$PY" -m torch.distributed.run --standalone --nproc_per_node="$workers" sweep.py \
                --grid "$WORK/$name.yaml" >"$OUT/$name.log" 2>&1
            took=$(seconds_since "$began")
            note "grid: $GRID_CELLS RSNA_AE cells x $GRID_EPOCHS epochs, $workers worker(s): $took s, $("$PY" -c "print(f'{$GRID_CELLS * 60 / $took:.2f}')") cells per minute" | tee -a "$OUT/grid.txt"
        done
        ;;
    esac
done
