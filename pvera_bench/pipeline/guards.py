"""What keeps a run safe to start, to stop and to repeat: the results folder check, the run's lock, SIGTERM."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from pvera_bench.core.errors import UserError

MIN_FREE_BYTES = 256 << 20  # a results folder with less free space fails before training


def ensure_writable(folder: Path) -> None:
    """Fail now, not after hours of training, if results cannot be written there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        reason = error.strerror or error
        raise UserError(f"paths.results: cannot write to {folder} ({reason}); choose another folder") from None
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise UserError(
            f"paths.results: only {free >> 20} MiB free in {folder}; free some space or choose another folder"
        )


@contextlib.contextmanager
def exclusive(lock_path: Path) -> Iterator[bool]:
    """Hold the run's lock file while the block runs, and remove it after; yields False when another process holds
    it (the same run is under way).

    The holder removes the file before it unlocks, so a process that opened the file just before then finds its
    lock on a file that is gone, and takes the lock again on the path: two processes never both hold the run.
    """
    while True:
        lock = open(lock_path, "a")  # noqa: SIM115 (held across the yield)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            yield False
            return
        if is_same_file(lock_path, lock):
            break
        lock.close()
    try:
        yield True
    finally:
        lock_path.unlink(missing_ok=True)
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def is_same_file(path: Path, handle) -> bool:
    """Whether ``path`` still names the file ``handle`` has open."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[Callable[[], bool]]:
    """Yields the ``should_stop`` of the training loop: true once SIGTERM (e.g. SLURM preemption) has arrived.

    Within the block SIGTERM no longer kills the process; training stops at the next batch instead.
    Outside the main thread (where Python cannot handle signals) nothing is installed.
    """
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: requested.set())
    try:
        yield requested.is_set
    finally:
        signal.signal(signal.SIGTERM, previous)
