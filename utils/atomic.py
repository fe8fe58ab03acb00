"""The one atomic writer: a file is replaced whole or not at all, even when several processes write it at once."""
import csv
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path, mode="w"):
    """Yield a handle on a temporary file of this process beside `path` ('w' text or 'wb'); on success flush it to
    disk and rename it over `path`, on failure remove it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: two writers never share one
    try:
        with open(tmp, mode, **({} if "b" in mode else {"newline": ""})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_leftovers(folder) -> None:
    """Remove the temporary files killed writers left in `folder` (call it only where no other writer works)."""
    for stale in Path(folder).glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def atomic_write_text(path, text):
    """Replace the file `path` with `text`, atomically."""
    with atomic_write(path) as handle:
        handle.write(text)


def atomic_write_csv(path, header, rows):
    """Replace the file `path` with a CSV table, atomically; floats written with 8 significant digits."""
    with atomic_write(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([f"{value:.8g}" if isinstance(value, float) else value for value in row] for row in rows)
