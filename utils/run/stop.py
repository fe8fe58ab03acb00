"""Stopping cleanly on SIGTERM or SIGUSR1, which clusters send before pre-emption or a time limit (Slurm: --signal).

Training defers a signal to the end of the current epoch, saves a checkpoint there and stops (`deferred` and
`check`); evaluation, short and restartable, stops at once (`immediate`). Either way the command ends with one line
and exit code 128 + the signal's number, and rerunning it resumes.
"""
import signal
import threading
from contextlib import contextmanager

from utils.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_received = []  # the stop signals this process got: once asked to stop, it stops


def requested() -> bool:
    return bool(_received)


def check(what: str) -> None:
    """Raise Interrupted when a stop signal has come; `what` says what was kept, e.g. the checkpoint's path."""
    if _received:
        name = signal.Signals(_received[0]).name
        raise Interrupted(f"stopped by {name}: {what}; rerun the same command to resume", _received[0])


@contextmanager
def _handling(handler):
    if threading.current_thread() is not threading.main_thread():  # Python lets only the main thread set handlers
        yield
        return
    previous = {number: signal.signal(number, handler) for number in SIGNALS}
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, signal.SIG_DFL if old is None else old)


@contextmanager
def deferred():
    """Within: a stop signal is only recorded; the code calls check() where it can stop cleanly."""
    with _handling(lambda signum, frame: _received.append(signum)):
        yield


@contextmanager
def immediate(what: str):
    """Within: a stop signal (or one that came before) raises Interrupted(what) at once."""
    def handler(signum, frame):
        _received.append(signum)
        check(what)

    with _handling(handler):
        check(what)
        yield
