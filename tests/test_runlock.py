"""One writer per run folder: a second train.py or eval.py is refused, and status checks never get in the way."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import eval as evaluate
from tests.conftest import REPO, run_cli, write_config
from utils.run import runlock

PROBE = """
import sys
from pathlib import Path
from utils.run.runlock import is_locked
run_dir, stop = Path(sys.argv[1]), Path(sys.argv[2])
seen = [0, 0]
print("ready", flush=True)
while not stop.exists():
    seen[is_locked(run_dir)] += 1
print(*seen)
"""


def test_a_status_check_never_makes_a_launcher_miss_a_free_folder(tmp_path):
    """`sweep.py --list` and the report after each Slurm task check folders while launchers try to take them."""
    lock = runlock.RunLock(tmp_path / "run")
    assert lock.acquire()  # the files a probe looks at now exist
    lock.release()
    probe = subprocess.Popen([sys.executable, "-c", PROBE, str(tmp_path / "run"), str(tmp_path / "stop")], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert probe.stdout.readline() == "ready\n"
        missed = 0
        for _ in range(2000):
            if lock.acquire():
                time.sleep(0.0002)  # held for a moment, as a launcher holds a folder while it works
                lock.release()
            else:
                missed += 1
            time.sleep(0.0002)  # free for a moment: the probe checks it now too
    finally:
        (tmp_path / "stop").touch()
        output, _ = probe.communicate(timeout=60)
    free, held = map(int, output.split())
    assert missed == 0
    assert held > 0 and free > 0, "the probe must have run beside the launcher"


def test_the_lock_is_reentrant_for_its_holder_only(tmp_path):
    """A grid worker trains and evaluates inside the cell's lock; another holder is refused with its name."""
    lock = runlock.RunLock(tmp_path / "run")
    assert lock.acquire()
    try:
        with runlock.hold(tmp_path / "run"):  # this process holds it: a no-op
            assert runlock.is_locked(tmp_path / "run")
        assert runlock.is_locked(tmp_path / "run")  # still held after the nested use
        assert not runlock.RunLock(tmp_path / "run").acquire()  # another attempt, as another launcher makes it
        assert lock.holder() == f"pid {os.getpid()} on {socket.gethostname()} ({os.path.basename(sys.argv[0])})"
    finally:
        lock.release()
    assert not runlock.is_locked(tmp_path / "run")


def wait_for(condition, process, what, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None and time.monotonic() < deadline, f"waiting for {what}"
        time.sleep(0.01)


def test_a_second_command_on_a_run_folder_in_use_is_refused(tiny_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", tiny_root, run_dir)
    first = subprocess.Popen([sys.executable, "train.py", "--config", str(cfg)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = run_dir / "train.log"
    try:
        wait_for(lambda: log.is_file() and "run folder" in log.read_text(), first, "the first run's log")
        os.kill(first.pid, signal.SIGSTOP)  # it keeps the folder for as long as the others take
        refusal = (f"error: run folder {run_dir} is in use by pid {first.pid} on {socket.gethostname()} (train.py); "
                   "wait for it to finish or stop it")
        second = run_cli("train.py", "--config", cfg)
        assert (second.returncode, second.stderr.splitlines()) == (2, [refusal])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            evaluate.main(["--config", str(cfg)])
        assert (exit_info.value.code, capsys.readouterr().err.splitlines()) == (2, [refusal])
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert log.read_text().count("run folder") == 1  # trained by the first command alone
    evaluate.main(["--config", str(cfg)])
    assert (run_dir / "results.json").is_file()
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))
