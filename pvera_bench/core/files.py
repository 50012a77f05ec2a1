"""The one atomic writer: every file the harness writes (results, predictions, adapters, checkpoints, decoded
caches, prepared tasks, tables, the report) goes through :func:`write_atomically`, so a reader never sees half
a file, a failed write leaves the previous file as it was and no temporary file behind, and a full disk or a
folder that cannot be written is a one-line :class:`WriteError`."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pvera_bench.core.errors import UserError

UMASK = os.umask(0o022)  # read once (setting it is the only way to read it), then put back
os.umask(UMASK)
NEARLY_FULL_BYTES = 64 << 20  # a writer that fails with this little space left failed on a full disk


class WriteError(UserError, OSError):
    """A file could not be written (full disk, no permission, not a folder): a one-line UserError, and still an
    OSError for callers that treat a failed write as optional (the decoded cache)."""


def free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def write_error(path: Path, error: OSError | RuntimeError) -> WriteError | None:
    """What to tell the user about a write of ``path`` that failed with ``error``: an OS error always, a writer's
    ``RuntimeError`` (``torch.save`` reports a full disk so) only when the disk is nearly full; None otherwise."""
    free = free_bytes(path.parent)
    nearly_full = free is not None and free < NEARLY_FULL_BYTES
    if not isinstance(error, OSError) and not nearly_full:
        return None
    if getattr(error, "errno", None) == errno.ENOSPC or not isinstance(error, OSError):
        left = f"{free >> 20} MiB" if free is not None else "no space"
        message = (
            f"cannot write {path}: the disk is full ({left} left in {path.parent}); free some space or choose another "
            "folder, then run the same command again"
        )
        code = errno.ENOSPC
    else:
        reason = error.strerror or (str(error).splitlines() or [type(error).__name__])[0]
        message = f"cannot write {path} ({reason}); check that {path.parent} is a folder you can write to"
        code = error.errno
    failure = WriteError(message)
    failure.errno = code
    return failure


def write_atomically(path: Path, data: bytes | str | Callable[[IO[bytes]], object]) -> None:
    """Write ``data`` (bytes, text as UTF-8, or a function that writes into a binary file) to ``path`` through a
    temporary file in the same folder, then rename it into place.

    The file gets the permissions a plain ``open(path, "w")`` would give it (0o666 less the umask), not the
    temporary file's private 0o600. A failed write removes the temporary file; an OS error (or a writer's error
    on a nearly full disk, as ``torch.save`` reports one) becomes a :class:`WriteError`.
    """
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as f:
            temporary = f.name
            os.fchmod(f.fileno(), 0o666 & ~UMASK)
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        failure = write_error(path, error) if isinstance(error, OSError | RuntimeError) else None
        if failure is not None:
            raise failure from error
        raise


def write_json(path: Path, payload: dict[str, Any]) -> None:
    write_atomically(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def load_tensors(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True`` (tensors and plain values only; a pickled object is refused, never
    run), on the CPU, without torch's note on an unusual pickle protocol, which is not the user's business."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location="cpu", weights_only=True)
