"""Checking RecBole atomic files (``.inter``) before RecBole reads them, and translating its errors.

RecBole reads ``NAME.inter`` with pandas and fails on a malformed file deep inside its dataset
code (``KeyError: 'user_id'`` for a byte-order mark, a dump of the whole interaction tensor for a
missing timestamp column, ...). :func:`check_interaction_file` reads the file once, line by line,
and stops at the first problem with a :class:`DataFileError` naming the file and the line;
:func:`build_dataset` runs the check, then RecBole, and turns whatever RecBole still raises while
loading into one such line.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recbole.utils import ModelType

from recbole_perpeft.errors import ConfigError, DataFileError, PerPEFTError

FEATURE_TYPES = ("token", "token_seq", "float", "float_seq")
EXAMPLE_HEADER = "user_id:token<TAB>item_id:token<TAB>timestamp:float"


@dataclass(frozen=True)
class Column:
    """One header column ``name:type`` and its position."""

    index: int
    name: str
    type: str


@dataclass(frozen=True)
class InterRules:
    """What a run needs from its ``.inter`` file: the id and time columns and how to read it."""

    required: dict[str, str]  # column name -> why it is needed
    loaded: frozenset[str] | None  # columns RecBole loads (None: all)
    time_field: str | None
    separator: str
    encoding: str


def rules_of(config: Any) -> InterRules:
    """The checks a run's config implies (``USER_ID_FIELD``, ``ITEM_ID_FIELD``, ``TIME_FIELD``, ``load_col``)."""
    required = {
        config["USER_ID_FIELD"]: "USER_ID_FIELD",
        config["ITEM_ID_FIELD"]: "ITEM_ID_FIELD",
    }
    order = ((config["eval_args"] or {}).get("order") or "RO").upper()
    time_field = config["TIME_FIELD"]
    if time_field and (order == "TO" or config["MODEL_TYPE"] == ModelType.SEQUENTIAL):
        required[time_field] = "TIME_FIELD; interactions are ordered by it"
    else:
        time_field = None
    load_col = config["load_col"]
    loaded = None
    if isinstance(load_col, dict) and isinstance(load_col.get("inter"), (list, tuple)):
        loaded = frozenset(load_col["inter"]) | frozenset(required)
    return InterRules(
        required={k: v for k, v in required.items() if k},
        loaded=loaded,
        time_field=time_field,
        separator=config["field_separator"] or "\t",
        encoding=config["encoding"] or "utf-8",
    )


def _lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every line, 1-based; undecodable bytes are an error naming the line."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as error:
                bad = raw[error.start : error.start + 4]
                raise DataFileError(
                    f"{path}:{number}: bytes that are not {encoding} ({bad!r} at column {error.start + 1}); "
                    f"save the file as {encoding} (or set --encoding to the file's encoding)"
                ) from None
            yield number, text.rstrip("\n")


def parse_header(path: Path, header: str, separator: str) -> list[Column]:
    """The columns of a header line; a column that is not ``NAME:TYPE`` is an error naming it."""
    if header.startswith("\ufeff"):
        raise DataFileError(
            f"{path}:1: the file starts with a UTF-8 byte-order mark, which RecBole would read as part of "
            f"the first column's name; save it without one (e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' {path})"
        )
    if header.endswith("\r"):
        raise DataFileError(
            f"{path}:1: Windows line endings (\\r\\n); convert the file to \\n line endings (e.g. dos2unix {path})"
        )
    columns = []
    for index, column in enumerate(header.split(separator)):
        name, colon, kind = column.partition(":")
        if not colon or not name or kind not in FEATURE_TYPES:
            raise DataFileError(
                f"{path}:1: header column {column!r} is not NAME:TYPE with TYPE one of {', '.join(FEATURE_TYPES)} "
                f"(expected a header such as {EXAMPLE_HEADER})"
            )
        columns.append(Column(index, name, kind))
    return columns


def _check_required(path: Path, columns: list[Column], rules: InterRules) -> None:
    names = [column.name for column in columns]
    for name, why in rules.required.items():
        if name not in names:
            present = ", ".join(f"{c.name}:{c.type}" for c in columns)
            raise DataFileError(
                f"{path}:1: no '{name}' column ({why}); the header has {present} "
                f"(expected a header such as {EXAMPLE_HEADER})"
            )


def _check_row(path: Path, number: int, fields: list[str], columns: list[Column], rules: InterRules) -> None:
    if len(fields) != len(columns):
        raise DataFileError(
            f"{path}:{number}: {len(fields)} field(s), the header has {len(columns)} "
            f"(fields are separated by {rules.separator!r})"
        )
    for column in columns:
        if rules.loaded is not None and column.name not in rules.loaded:
            continue
        value = fields[column.index]
        if column.name in rules.required and column.type != "float" and not value.strip():
            raise DataFileError(f"{path}:{number}: empty '{column.name}'")
        if column.type == "float":
            try:
                number_value = float(value)
            except ValueError:
                raise DataFileError(
                    f"{path}:{number}: column '{column.name}' (float) holds {value!r}, not a number"
                ) from None
            if column.name == rules.time_field and not math.isfinite(number_value):
                raise DataFileError(
                    f"{path}:{number}: '{column.name}' is {value!r}; interactions are ordered by it, "
                    "so it must be a finite number"
                )


def check_interaction_file(path: str | os.PathLike, rules: InterRules) -> int:
    """Read ``path`` once and raise a :class:`DataFileError` at its first problem; returns the row count.

    Checked: the file has a header of ``NAME:TYPE`` columns (no byte-order mark, no ``\\r\\n``)
    holding the columns the run needs, every line decodes, every non-blank line has one field per
    column, loaded ``float`` fields are numbers (the time a finite one), ids are non-empty, and
    there is at least one row.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise DataFileError(
            f"{path}: the file is empty; expected a header such as {EXAMPLE_HEADER} and one line per interaction"
        )
    rows = 0
    columns: list[Column] = []
    for number, line in _lines(path, rules.encoding):
        if number == 1:
            columns = parse_header(path, line, rules.separator)
            _check_required(path, columns, rules)
            continue
        if not line.strip():
            continue  # pandas skips blank lines
        _check_row(path, number, line.rstrip("\r").split(rules.separator), columns, rules)
        rows += 1
    if rows == 0:
        raise DataFileError(f"{path}: a header but no interaction; the file needs one line per interaction")
    return rows


def interaction_files(config: Any) -> list[Path]:
    """The ``.inter`` file(s) RecBole will read for this config (``benchmark_filename`` splits too)."""
    folder = Path(config["data_path"])
    name = config["dataset"]
    parts = config["benchmark_filename"]
    if parts:
        return [folder / f"{name}.{part}.inter" for part in parts]
    return [folder / f"{name}.inter"]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def build_dataset(dataset_class: type, config: Any) -> Any:
    """``dataset_class(config)`` after checking its ``.inter`` file(s); loading errors become one line.

    RecBole's own errors while reading and filtering (``ValueError``, ``KeyError``, ...) are
    translated: into a :class:`ConfigError` when filtering left nothing, else a
    :class:`DataFileError` naming the dataset's folder.
    """
    rules = rules_of(config)
    for path in interaction_files(config):
        if not path.is_file():
            raise DataFileError(f"{path}: interaction file not found")
        check_interaction_file(path, rules)
    try:
        return dataset_class(config)
    except PerPEFTError:
        raise
    except ValueError as error:
        if "Some feat is empty" in str(error):
            raise ConfigError(
                f"no interaction of dataset '{config['dataset']}' is left after filtering "
                f"(user_inter_num_interval={config['user_inter_num_interval']}, "
                f"item_inter_num_interval={config['item_inter_num_interval']}, val_interval={config['val_interval']})"
            ) from error
        raise DataFileError(
            f"cannot load dataset '{config['dataset']}' from {config['data_path']}: {_first_line(error)}"
        ) from error
    except (KeyError, IndexError, UnicodeError) as error:
        raise DataFileError(
            f"cannot load dataset '{config['dataset']}' from {config['data_path']}: "
            f"{type(error).__name__}: {_first_line(error)}"
        ) from error
