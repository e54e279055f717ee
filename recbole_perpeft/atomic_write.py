"""Atomic file writes whose files get the usual permissions (``0666 & ~umask``: 0644 under 022).

A file is written under a temporary name in its target folder and renamed over the target, so a
reader (or a crash) never sees half a file. ``tempfile.mkstemp`` would create that temporary
file with mode 0600, which the rename keeps: checkpoints and converted datasets on a shared
folder or a Ray cluster would be unreadable to other users and workers. The temporary file is
created here with ``os.open(..., 0o666)`` instead, which the kernel masks with the umask exactly
as for an ordinary ``open``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path`` that no other writer picks: ``.NAME.<random>.tmp``."""
    return path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None, fsync: bool = False
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on a clean exit it replaces ``path`` in one rename.

    ``mode`` is ``"wb"`` or ``"w"`` (text: ``encoding`` defaults to UTF-8, ``\\n`` line ends).
    ``fsync`` flushes the data to disk before the rename (checkpoints: the rename must never
    publish a file whose blocks are not yet written). On any error the temporary file is removed
    and ``path`` is untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes new files: mode 'wb' or 'w', got {mode!r}")
    path = Path(path)
    tmp = temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        text = {"encoding": encoding or "utf-8", "newline": "\n"} if mode == "w" else {}
        with os.fdopen(fd, mode, **text) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb", fsync=fsync) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = False) -> None:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w", fsync=fsync) as handle:
        handle.write(text)
