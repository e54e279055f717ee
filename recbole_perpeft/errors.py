"""Errors the CLI turns into one clear line and a non-zero exit, never a traceback."""


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
