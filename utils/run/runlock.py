"""The file locks: one writer per run folder (train.py, eval.py and a grid's worker hold its lock while they work in
it), and take(), the exclusive lock on any file, which a shared learner's key also uses (utils/grid/sharing.py).

The lock is flock on <run>/.lock, taken without waiting; the holder writes its pid and host into that file so that
a refused command can name it. The kernel drops a lock when its process ends, however it ends, so a killed run
leaves no stale lock; flock also works across the nodes of an NFS share on Linux (emulated with NFS byte-range
locks). Status checks (`is_locked`) never touch <run>/.lock: the holder also holds <run>/.running exclusively, and a
check takes only a shared lock on that, so it cannot make a launcher's attempt on a free folder fail.
"""
import fcntl
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from utils.errors import UserError

LOCK, RUNNING = ".lock", ".running"
_HELD = set()  # run folders whose lock this process holds
RETRY_S = 0.5  # take() with a wait: how often it tries again


def take(path, wait=0.0):
    """The exclusive lock on the file at `path` (created when missing), as the open file that holds it: taken at
    once (wait 0), within `wait` seconds, or whenever it comes free (wait None); None when it was not taken.
    Closing the file frees it, and so does the end of the process, however it ends."""
    handle = open(path, "a")
    if wait is None:
        fcntl.flock(handle, fcntl.LOCK_EX)
        return handle
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                return None
            time.sleep(min(RETRY_S, max(0.0, deadline - time.monotonic())))


class RunLock:
    """The lock on one run folder; acquire() never waits for another holder."""

    def __init__(self, run_dir):
        self.folder = Path(run_dir)
        self.key = self.folder.resolve()
        self.handles = None

    def acquire(self) -> bool:
        """True when this call took the lock, False when another holder (another process, or another RunLock of
        this one) has it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = take(self.folder / LOCK)
        if lock is None:
            return False
        running = open(self.folder / RUNNING, "a")
        fcntl.flock(running, fcntl.LOCK_EX)  # waits only while a status check holds it, an instant
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {socket.gethostname()} ({Path(sys.argv[0]).name or 'python'})\n")
        lock.flush()
        self.handles = (lock, running)
        _HELD.add(self.key)
        return True

    def release(self) -> None:
        if self.handles is None:
            return
        lock, running = self.handles
        lock.truncate(0)  # a later refusal must not name this process
        running.close()
        lock.close()  # closing the file releases the lock
        self.handles = None
        _HELD.discard(self.key)

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it."""
        try:
            text = (self.folder / LOCK).read_text().strip()
        except OSError:
            text = ""
        return text or "another process"


@contextmanager
def hold(run_dir):
    """Work in `run_dir` under its lock; one UserError naming the holder when another process has it. A no-op when
    this process holds it already: a grid worker trains and evaluates a cell inside the cell's lock."""
    lock = RunLock(run_dir)
    if lock.key in _HELD:
        yield
        return
    if not lock.acquire():
        raise UserError(f"run folder {run_dir} is in use by {lock.holder()}; wait for it to finish or stop it")
    try:
        yield
    finally:
        lock.release()


def is_locked(run_dir) -> bool:
    """Whether a process holds the folder's lock, asked without taking anything a launcher needs."""
    try:
        running = open(Path(run_dir) / RUNNING)
    except FileNotFoundError:
        return False
    with running:
        try:
            fcntl.flock(running, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False
