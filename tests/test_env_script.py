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


def slurm_checkout(tmp_path):
    """A copy of the Slurm script and what it sources, with a requirements.txt, a python3 that records any call (a
    setup would start there) and a grid file; no .venv."""
    checkout, stubs, log = tmp_path / "checkout", tmp_path / "bin", tmp_path / "calls.log"
    (checkout / "scripts").mkdir(parents=True)
    for name in ("_env.sh", "slurm_grid.sbatch"):
        shutil.copy(REPO / "scripts" / name, checkout / "scripts")
    (checkout / "requirements.txt").write_text("numpy\n")
    stubs.mkdir()
    (stubs / "python3").write_text(STUB_PYTHON3)
    (stubs / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "LOG": str(log), "SLURM_ARRAY_TASK_ID": "3",
           "SLURM_SUBMIT_DIR": str(checkout)}
    env.pop("PYTHON", None)
    return checkout, env, log


def sbatch(checkout, env):
    return subprocess.run(["bash", "scripts/slurm_grid.sbatch", "grid.yaml", "Data.root=/data"], cwd=checkout,
                          env=env, capture_output=True, text=True, timeout=60)


def test_a_slurm_task_without_a_ready_venv_refuses_instead_of_installing_on_the_compute_node(tmp_path):
    checkout, env, log = slurm_checkout(tmp_path)
    for state in ("missing", "stale"):
        result = sbatch(checkout, env)
        assert result.returncode == 2 and result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and ".venv" in lines[0] and "./scripts/test.sh" in lines[0] and "PYTHON" in lines[0]
        assert not log.exists() and not (checkout / ".venv" / "bin").exists()  # nothing installed
        (checkout / ".venv").mkdir(exist_ok=True)
        (checkout / ".venv" / ".installed-requirements").touch()
        os.utime(checkout / ".venv" / ".installed-requirements", (1, 1))  # older than requirements.txt: stale


def test_a_slurm_task_runs_with_the_venv_made_on_the_login_node_or_with_python(tmp_path):
    checkout, env, log = slurm_checkout(tmp_path)
    (checkout / ".venv" / "bin").mkdir(parents=True)
    (checkout / ".venv" / "bin" / "python").write_text('#!/usr/bin/env bash\necho "venv python $*"\n')
    (checkout / ".venv" / "bin" / "python").chmod(0o755)
    (checkout / ".venv" / ".installed-requirements-test").touch()  # as ./scripts/test.sh leaves it
    result = sbatch(checkout, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "venv python sweep.py --grid grid.yaml --cell 3 Data.root=/data\n" and not log.exists()
    shutil.rmtree(checkout / ".venv")
    given = tmp_path / "python"
    given.write_text('#!/usr/bin/env bash\necho "given python $*"\n')
    given.chmod(0o755)
    result = sbatch(checkout, {**env, "PYTHON": str(given)})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "given python sweep.py --grid grid.yaml --cell 3 Data.root=/data\n"
    assert not log.exists() and not (checkout / ".venv").exists()
