"""The one atomic writer: every file the harness writes (results, predictions, adapters, checkpoints, decoded
caches, prepared tasks, tables, the report) goes through :func:`write_atomically`, so a reader never sees half
a file and a failed write leaves the previous file as it was."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

UMASK = os.umask(0o022)  # read once (setting it is the only way to read it), then put back
os.umask(UMASK)


def write_atomically(path: Path, data: bytes | str | Callable[[IO[bytes]], object]) -> None:
    """Write ``data`` (bytes, text as UTF-8, or a function that writes into a binary file) to ``path`` through a
    temporary file in the same folder, then rename it into place.

    The file gets the permissions a plain ``open(path, "w")`` would give it (0o666 less the umask), not the
    temporary file's private 0o600. A failed write (full disk, bad value) removes the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
        try:
            os.fchmod(f.fileno(), 0o666 & ~UMASK)
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            f.close()
            os.unlink(f.name)
            raise
    os.replace(f.name, path)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    write_atomically(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")
