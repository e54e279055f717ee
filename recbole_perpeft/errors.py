"""Errors the CLI turns into one clear line and a non-zero exit, never a traceback."""

import errno


class PerPEFTError(Exception):
    """Base class of user-facing errors (bad input, missing files, unknown names)."""


class UnknownModelError(PerPEFTError):
    pass


class DatasetNotFoundError(PerPEFTError, FileNotFoundError):
    """A dataset name that resolves to no folder; the message says how to obtain it."""


class ConfigError(PerPEFTError):
    pass


class FoundationModelError(ConfigError):
    """A foundation model that cannot be built: a path that does not exist, or a hub id that is
    neither cached nor reachable (the message says how to run offline)."""


class DataFileError(PerPEFTError, ValueError):
    """A dataset file that cannot be read (the message names the file and, where known, the line)."""


class TrainingDivergedError(PerPEFTError):
    """The training loss became NaN or infinite."""


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: missing, unreadable, not weights-only, or without a run config."""


class InvalidHistoryError(ConfigError):
    """A history that cannot be ranked from (empty, or not a sequence of raw item ids)."""


class UnknownItemError(InvalidHistoryError, KeyError):
    """A history names items the model's dataset does not know (the message names them)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class StorageError(PerPEFTError):
    """A file or folder could not be written: full disk, quota, read-only file system.

    Raised by the writers (checkpoints, caches, results) after they removed their temporary
    files; the message names the file and what the operating system said.
    """


#: errno values that mean "the storage, not the input, is at fault".
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def storage_cause(error: BaseException) -> OSError | None:
    """The full-disk (or quota, read-only) ``OSError`` behind ``error``, if any.

    ``torch.save`` reports a failed write as a ``RuntimeError`` whose context is the ``OSError``,
    so the chain of causes is followed.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in STORAGE_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


class DataWarning(UserWarning):
    """Something in the data or the settings the run goes on with, but the user must know about
    (duplicate rows dropped, a setting that disables a feature); the CLI prints it as one line."""


class Interrupted(BaseException):
    """SIGTERM (or SIGINT) arrived during a run. A ``BaseException`` like ``KeyboardInterrupt``, so
    no ``except Exception`` swallows it while the writers' cleanup (``finally``/``except
    BaseException``) still runs. ``resume_file``: the last complete resume file, once known."""

    def __init__(self, signum: int, resume_file: str | None = None) -> None:
        super().__init__(signum)
        self.signum = signum
        self.resume_file = resume_file

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
