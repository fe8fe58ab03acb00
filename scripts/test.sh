#!/usr/bin/env bash
# Run the test suite (CPU): tests/ and the studies' own tests. Arguments go to pytest, e.g. ./scripts/test.sh -k cka
# Tests run in parallel, one worker per core, when pytest-xdist is installed (it is in .venv).
set -euo pipefail
source "$(dirname "$0")/_env.sh"
setup_python requirements-test.txt
parallel=()
if "$PY" -c "import xdist" 2>/dev/null; then
    parallel=(-n "${TEST_WORKERS:-auto}" --dist loadgroup)  # tests marked xdist_group share a worker (and a fixture)
    # one thread per process: the workers fill the cores, and the commands the tests start would oversubscribe them
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
fi
"$PY" -m pytest -q "${parallel[@]}" "$@" tests studies
