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
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock

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
        with staged_folder(target) as staging:
            build(staging)
    return True


__all__ = [
    "HOME_ENV",
    "CacheNotWritableError",
    "build_once",
    "cache_root",
    "ensure_writable",
    "perpeft_home",
    "staged_folder",
]
