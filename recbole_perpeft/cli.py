"""``run_recbole_perpeft.py``: the command line for plugin models and RecBole's own alike."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any

from recbole_perpeft.config import parse_value
from recbole_perpeft.errors import ConfigError, PerPEFTError

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

USAGE = """run_recbole_perpeft.py --model=MODEL --dataset=DATASET [--config_files="a.yaml b.yaml"]
                              [--result_file=PATH] [--resume=FILE|latest] [--KEY=VALUE ...]

Any RecBole or plugin config key can be given as --KEY=VALUE (values are read as YAML:
--epochs=2, --learning_rate=1e-4, --topk="[10,20]"). Plugin models are looked up first,
then RecBole's (SASRec, GRU4Rec, BERT4Rec, ...)."""


def parse_overrides(arguments: Sequence[str]) -> dict[str, Any]:
    """``--key=value`` arguments as a config dict; anything else is a :class:`ConfigError`."""
    overrides: dict[str, Any] = {}
    for argument in arguments:
        if not argument.startswith("--") or "=" not in argument:
            raise ConfigError(
                f"malformed argument '{argument}': config keys are given as --KEY=VALUE"
            )
        key, value = argument[2:].split("=", 1)
        if not _KEY.match(key):
            raise ConfigError(f"malformed argument '{argument}': '{key}' is not a config key")
        overrides[key] = parse_value(value)
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_recbole_perpeft.py", usage=USAGE, allow_abbrev=False, add_help=True
    )
    parser.add_argument("--model", "-m", required=True, help="model name (plugin or RecBole)")
    parser.add_argument("--dataset", "-d", required=True, help="dataset name")
    parser.add_argument(
        "--config_files", default=None, help="space-separated YAML config files"
    )
    parser.add_argument("--result_file", default=None, help="write the result record here (JSON)")
    parser.add_argument(
        "--resume", default=None,
        help="continue an interrupted run: its saved/<...>.last.pth file, or 'latest'",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    known, rest = parser.parse_known_args(argv)
    try:
        overrides = parse_overrides(rest)
        config_files = known.config_files.split() if known.config_files else None
        from recbole_perpeft.quick_start import close_log_handlers, run_recbole_perpeft

        try:
            record = run_recbole_perpeft(
                known.model,
                known.dataset,
                config_file_list=config_files,
                config_dict=overrides,
                result_file=known.result_file,
                resume=known.resume,
            )
        finally:
            close_log_handlers()
    except PerPEFTError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    test = record.get("test_result") or {}
    summary = ", ".join(f"{key}={value:.4f}" for key, value in test.items())
    print(f"{record['model']} on {record['dataset']}: test {summary}")
    return 0
