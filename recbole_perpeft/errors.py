"""Errors the CLI turns into one clear line and a non-zero exit, never a traceback."""


class PerPEFTError(Exception):
    """Base class of user-facing errors (bad input, missing files, unknown names)."""


class UnknownModelError(PerPEFTError):
    pass


class DatasetNotFoundError(PerPEFTError, FileNotFoundError):
    """A dataset name that resolves to no folder; the message says how to obtain it."""


class ConfigError(PerPEFTError):
    pass


class TrainingDivergedError(PerPEFTError):
    """The training loss became NaN or infinite."""
