"""Where the plugin keeps what it builds once, and the one way it builds such a folder.

Everything built once and reused (the item-content cache, IISAN's and the frozen encoder's
cached states, the generated mmdemo dataset) is a folder published by :func:`build_once`:

* a published folder is complete: it is built in a temporary sibling folder
  (``.NAME.tmp-<random>``) and renamed into place in one step, so no reader ever sees half of it;
* two processes never build the same folder at once: the build runs under a file lock
  (``.NAME.lock`` beside it); the process that waited finds the folder built and reuses it;
* damage is checked on every use by the caller's ``problem_with(folder)``; a damaged folder is
  reported, removed and built again;
* a valid folder is served without taking the lock or writing anything, so a read-only cache
  root still serves what it holds.

All of it lives under one root, :func:`perpeft_home` (``$RECBOLE_PERPEFT_HOME``, default
``~/.cache/recbole_perpeft``): caches under ``cache/`` (or the ``cache_dir`` setting, see
:func:`cache_root`), generated datasets under ``datasets/``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from filelock import FileLock

from recbole_perpeft.errors import StorageError, storage_cause

HOME_ENV = "RECBOLE_PERPEFT_HOME"


class CacheNotWritableError(PermissionError):
    """The folder a cache is to be built in cannot be created or written to (the message names it)."""


def perpeft_home() -> Path:
    """``$RECBOLE_PERPEFT_HOME``, or ``~/.cache/recbole_perpeft``."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "recbole_perpeft"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The caches' root: the ``cache_dir`` setting when given, else ``perpeft_home()/cache``."""
    return Path(cache_dir).expanduser() if cache_dir else perpeft_home() / "cache"


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` and prove it writable with a probe file, or raise :class:`CacheNotWritableError`.

    Checked by writing rather than with ``os.access``, which answers True for root and ignores
    read-only mounts.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".probe-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise CacheNotWritableError(
            f"cache directory {folder} is not writable ({error.strerror or error}); "
            "choose another cache directory or fix its permissions"
        ) from error


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A temporary sibling of ``target`` to fill; renamed to ``target`` when the block succeeds.

    On any error the temporary folder is removed and ``target`` is left as it was. The rename
    fails rather than replace a ``target`` that holds files.
    """
    target = Path(target)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        yield staging
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _discard(folder: Path) -> None:
    # Renamed away first: removal of a large folder is not atomic, a rename is.
    trash = folder.parent / f".{folder.name}.trash-{uuid.uuid4().hex}"
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def build_once(
    target: Path,
    problem_with: Callable[[Path], str | None],
    build: Callable[[Path], None],
    *,
    report_damage: Callable[[str], None] = warnings.warn,
) -> bool:
    """Make sure ``target`` holds a valid build; True when this call built it, False when reused.

    ``problem_with(folder)`` says what is wrong with an existing ``folder`` (``None``: valid); it
    may raise to refuse a folder outright (e.g. one built by something else). ``build(folder)``
    writes a complete build into the empty ``folder``. ``report_damage(message)`` (default: a
    ``UserWarning``) is told about a damaged ``target`` before it is rebuilt. Raises
    :class:`CacheNotWritableError` when a build is needed and ``target``'s parent cannot be written.
    """
    target = Path(target)
    if target.exists() and problem_with(target) is None:
        return False
    root = target.parent
    ensure_writable(root)
    with FileLock(os.fspath(root / f".{target.name}.lock")):
        if target.exists():
            problem = problem_with(target)
            if problem is None:
                return False  # built by another process while this one waited
            report_damage(f"{target} is damaged ({problem}); rebuilding it")
            _discard(target)
        # Leftovers of a crashed build: nobody else is building this target, we hold the lock.
        for stale in root.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        try:
            with staged_folder(target) as staging:
                build(staging)
        except (OSError, RuntimeError) as error:
            cause = storage_cause(error)
            if cause is None:
                raise
            # staged_folder already removed the half-built folder.
            raise StorageError(
                f"cannot build {target}: {cause.strerror or cause}; nothing partial is kept "
                f"(free space in {root}, or set --cache_dir to a folder with room)"
            ) from error
    return True


def allocated_memmap(path: Path, dtype: str | np.dtype, shape: tuple[int, ...]) -> np.memmap:
    """A new ``.npy`` file opened as a writable memory map, with its disk blocks reserved first.

    ``np.lib.format.open_memmap`` makes a sparse file: on a full disk the first store into an
    unbacked page kills the process with SIGBUS (no message, the temporary folder left behind).
    Reserved up front, a full disk is an ``OSError`` (ENOSPC) here instead, which the caller's
    cleanup and :func:`build_once` turn into one line.
    """
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    data_bytes = int(array.nbytes)
    del array
    size = os.path.getsize(path)
    if data_bytes:
        with open(path, "r+b") as handle:
            try:
                os.posix_fallocate(handle.fileno(), 0, size)
            except OSError as error:
                if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                # A file system that cannot reserve blocks: write the zeros (after the header).
                handle.seek(size - data_bytes)
                chunk = bytes(min(data_bytes, 1 << 24))
                left = data_bytes
                while left:
                    left -= handle.write(chunk[: min(left, len(chunk))])
                handle.flush()
                os.fsync(handle.fileno())
    return np.load(path, mmap_mode="r+")


__all__ = [
    "HOME_ENV",
    "allocated_memmap",
    "CacheNotWritableError",
    "build_once",
    "cache_root",
    "ensure_writable",
    "perpeft_home",
    "staged_folder",
]
