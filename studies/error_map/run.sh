#!/usr/bin/env bash
# The error-map study (README.md beside this file): study.md from records/ alone. Its runs are the latent-size
# study's (../latent_size/run.sh trains them and archives their records here too); with runs/latent_size present,
# the runs records/ lacks are scored first.
set -euo pipefail
source "$(dirname "$0")/../../scripts/_env.sh"
setup_python requirements.txt
runs=()
[ -d runs/latent_size ] && runs=(--runs runs/latent_size)
"$PY" -m studies.error_map.analysis "${runs[@]}" --study studies/error_map
