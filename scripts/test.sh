#!/usr/bin/env bash
# Run the test suite (CPU). Arguments go to pytest, e.g. ./scripts/test.sh -k cka
set -euo pipefail
source "$(dirname "$0")/_env.sh"
setup_python requirements-test.txt
"$PY" -m pytest -q "$@" tests
