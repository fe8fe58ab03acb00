# Sourced by every script: moves to the repository root and picks the Python interpreter.
# PYTHON=/path/to/python uses that interpreter as it is; otherwise ./.venv is created from requirements on first use.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

setup_python() {  # $1: requirements file to install into .venv when missing or changed
    if [ -n "${PYTHON:-}" ]; then
        PY="$PYTHON"
        return
    fi
    local requirements="$1"
    local stamp=".venv/.installed-$(basename "$requirements" .txt)"
    if venv_stale "$stamp" "$requirements"; then
        mkdir -p .venv
        (  # one process installs; others (a Slurm array's tasks on a fresh checkout) wait, then find it done
            if command -v flock >/dev/null; then flock 9 || exit 1; fi  # util-linux; macOS has none
            if venv_stale "$stamp" "$requirements"; then
                echo "setting up .venv from $requirements (once)" >&2
                { [ -x .venv/bin/python ] || python3 -m venv .venv; } &&
                    .venv/bin/python -m pip install --disable-pip-version-check -q -r "$requirements" &&
                    touch "$stamp"
            fi
        ) 9>.venv/.setup.lock || return 1
    fi
    PY="$ROOT/.venv/bin/python"
}

venv_stale() {  # $1: stamp, $2: requirements file; true when .venv lacks them or they changed since
    [ ! -f "$1" ] || [ "$2" -nt "$1" ] || [ requirements.txt -nt "$1" ]
}

run_config() {  # $1: config file; the rest: Section.key=value overrides for both steps
    local cfg="$1"
    shift
    setup_python requirements.txt
    "$PY" train.py --config "$cfg" "$@"
    "$PY" eval.py --config "$cfg" "$@"
}
