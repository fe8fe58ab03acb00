"""scripts/_env.sh: concurrent setups of .venv (a Slurm array's tasks on a fresh checkout) install it once."""
import os
import shutil
import subprocess

from tests.conftest import REPO

# python3 -m venv DIR makes a fake venv whose python records each call (pip install) and takes a second over it.
STUB_PYTHON3 = """#!/usr/bin/env bash
echo venv >>"$LOG"
mkdir -p "$3/bin"
printf '#!/usr/bin/env bash\\necho "python $*" >>"$LOG"\\nsleep 1\\n' >"$3/bin/python"
chmod +x "$3/bin/python"
"""


def test_concurrent_setups_install_the_venv_once(tmp_path):
    checkout, stubs, log = tmp_path / "checkout", tmp_path / "bin", tmp_path / "calls.log"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "_env.sh", checkout / "scripts")
    (checkout / "requirements.txt").write_text("numpy\n")
    stubs.mkdir()
    (stubs / "python3").write_text(STUB_PYTHON3)
    (stubs / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "LOG": str(log)}
    env.pop("PYTHON", None)
    command = 'set -euo pipefail; source scripts/_env.sh; setup_python requirements.txt; echo "$PY"'
    setups = [subprocess.Popen(["bash", "-c", command], cwd=checkout, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for setup in setups:
        out, err = setup.communicate(timeout=60)
        assert setup.returncode == 0, err
        assert out == f"{checkout / '.venv' / 'bin' / 'python'}\n"  # PY as before
    assert log.read_text().splitlines() == [
        "venv", "python -m pip install --disable-pip-version-check -q -r requirements.txt"]
    assert (checkout / ".venv" / ".installed-requirements").is_file()
