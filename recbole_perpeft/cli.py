"""``run_recbole_perpeft.py``: the command line for plugin models and RecBole's own alike."""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from recbole_perpeft.config import parse_value
from recbole_perpeft.config_keys import UnknownConfigKeyWarning
from recbole_perpeft.errors import ConfigError, DataWarning, Interrupted, PerPEFTError, storage_cause

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

USAGE = """run_recbole_perpeft.py --model=MODEL --dataset=DATASET [--config_files="a.yaml b.yaml"]
                              [--result_file=PATH] [--resume=FILE|latest] [--nproc=N] [--export=DIR]
                              [--KEY=VALUE ...]
       run_recbole_perpeft.py --tune=SPACE.yaml --model=MODEL --dataset=DATASET [--num_samples=N]
                              [--max_concurrent=K] [--cpus_per_trial=C] [--gpus_per_trial=G]
                              [--ray_address=ADDR] [--tune_dir=DIR] [--KEY=VALUE ...]
       run_recbole_perpeft.py --recommend=CHECKPOINT (--history="ITEM ITEM ..." | --histories=FILE)
                              [--user_id=USER] [--topk=K] [--include_seen] [--output=FILE]
                              [--device=cpu|cuda] [--KEY=VALUE ...]

Any RecBole or plugin config key can be given as --KEY=VALUE (values are read as YAML:
--epochs=2, --learning_rate=1e-4, --topk="[10,20]"). Plugin models are looked up first,
then RecBole's (SASRec, GRU4Rec, BERT4Rec, ...). --nproc=N trains in N processes (DDP: gloo on
CPU, nccl on CUDA). --export=DIR also writes the tested model as peft adapters and safetensors.
--tune runs a Ray Tune search over SPACE.yaml; the other --KEY=VALUE are fixed for all trials
(docs/tuning.md). --recommend ranks the catalogue with a saved model for one
history of raw item ids (oldest first) or for every line of a histories file (JSON lines out)."""


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
        if key in overrides and overrides[key] != parse_value(value):
            raise ConfigError(
                f"--{key} is given twice with different values ({overrides[key]!r}, {value!r})"
            )
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
    parser.add_argument(
        "--export", default=None, metavar="DIR",
        help="also write the tested model to the new folder DIR (peft adapters, safetensors, text tables)",
    )
    tune = parser.add_argument_group("hyperparameter search (Ray Tune), see docs/tuning.md")
    tune.add_argument("--tune", default=None, metavar="SPACE.yaml", help="search space file; runs a search")
    tune.add_argument("--num_samples", default=None, help="samples of the space (grids: per grid point); 1")
    tune.add_argument("--max_concurrent", default=None, help="trials running at once (0: as resources allow)")
    tune.add_argument("--cpus_per_trial", default=None, help="CPUs per trial (default 1)")
    tune.add_argument("--gpus_per_trial", default=None, help="GPUs per trial, fractions allowed (default 0)")
    tune.add_argument("--ray_address", default=None, help="attach to this Ray cluster (default: local Ray)")
    tune.add_argument("--tune_dir", default=None, help="where trials and results go (default tune_results)")
    tune.add_argument("--grace_period", default=None, help="ASHA: epochs before a trial may be stopped (1)")
    tune.add_argument("--reduction_factor", default=None, help="ASHA: keep 1 in this many at each rung (2)")
    return parser


TUNE_FLAGS = ("num_samples", "max_concurrent", "cpus_per_trial", "gpus_per_trial", "ray_address",
              "tune_dir", "grace_period", "reduction_factor")


def build_recommend_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run_recbole_perpeft.py --recommend", usage=USAGE, allow_abbrev=False)
    parser.add_argument("--recommend", required=True, metavar="CHECKPOINT", help="a saved model (.pth)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--history", help="raw item ids, oldest first, separated by spaces")
    source.add_argument("--histories", metavar="FILE", help="one history per line (USER_ID<TAB>items allowed)")
    parser.add_argument("--user_id", default=None, help="a known user keeps their group (PerPEFT)")
    parser.add_argument("--topk", type=int, default=10, help="how many items (default 10)")
    parser.add_argument("--include_seen", action="store_true", help="also rank the history's own items")
    parser.add_argument("--output", default=None, help="write JSON lines here (default: stdout)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    old = parser.add_argument_group("only for checkpoints without a run config (older versions)")
    old.add_argument("--model", "-m", default=None, help="model name (default: the checkpoint's)")
    old.add_argument("--dataset", "-d", default=None, help="dataset name")
    old.add_argument("--config_files", default=None, help="space-separated YAML config files of the run")
    return parser


def recommend_main(argv: list[str]) -> int:
    """``--recommend``: top-K items from a saved model; a table for one history, JSON lines for a file."""
    known, rest = build_recommend_parser().parse_known_args(argv)
    from recbole_perpeft.errors import InvalidHistoryError
    from recbole_perpeft.model.protocol import is_personalised
    from recbole_perpeft.recommend import (
        HistoryLine,
        Recommender,
        format_table,
        read_history_file,
        write_jsonl,
    )

    overrides = parse_overrides(rest)
    # What needs no model is checked before the (possibly minutes-long) model load.
    if known.topk < 1:
        raise ConfigError(f"--topk must be a positive integer, got {known.topk}")
    if known.histories:
        rows = read_history_file(known.histories)
    else:
        if not known.history.split():
            raise InvalidHistoryError("--history is empty: give raw item ids, oldest first, separated by spaces")
        rows = [HistoryLine(0, known.user_id, known.history.split())]
    with warnings.catch_warnings():
        # Library deprecation notices (pandas, transformers, torch.amp) say nothing to this user.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        recommender = Recommender.from_checkpoint(
            known.recommend, model=known.model, dataset=known.dataset,
            config_files=known.config_files.split() if known.config_files else None,
            device=known.device, **overrides,
        )
    if known.histories:
        for row in rows:  # name the file's line, not the history's position
            try:
                recommender.item_ids(row.items)
            except InvalidHistoryError as error:
                raise type(error)(f"{known.histories}:{row.line}: {error}") from None
    users = [row.user_id for row in rows]
    results = recommender.recommend_batch(
        [row.items for row in rows], k=known.topk, exclude_seen=not known.include_seen, user_ids=users
    )
    if known.histories or known.output:
        if known.output:
            try:
                with open(known.output, "w", encoding="utf-8") as handle:
                    write_jsonl(zip(users, results), handle)
            except OSError as error:
                raise ConfigError(f"cannot write {known.output}: {error.strerror or error}") from error
            print(f"{len(results)} recommendation lists written to {known.output}")
        else:
            write_jsonl(zip(users, results), sys.stdout)
    else:
        config = recommender.config
        heading = f"{config['model']} on {config['dataset']}: top {len(results[0].items)}"
        if is_personalised(recommender.model):
            how = "known user" if recommender.known_user(known.user_id) is not None else "new user, nearest group"
            heading += f", group {results[0].group} ({how})"
        print(format_table(results[0], heading))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    with warnings.catch_warnings():
        # Libraries' deprecation notices (pandas inside RecBole, torch.amp, transformers) say
        # nothing to this user and would bury the one line an error ends with.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.showwarning = _show_warning
        return _main(argv)


_python_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The plugin's own warnings as one line (``warning: ...``); others as Python prints them."""
    if issubclass(category, (UnknownConfigKeyWarning, DataWarning)):
        print(f"warning: {message}", file=file or sys.stderr)
        return
    _python_showwarning(message, category, filename, lineno, file, line)


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT raise :class:`Interrupted` in the main thread.

    Python's default SIGTERM ends the process on the spot: no message, and a checkpoint being
    written stays behind as a hidden ``.tmp`` file. Raised as an exception instead, the writers'
    cleanup runs and the CLI ends with one line and the shell's code (143, 130).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def interrupted_line(stop: Interrupted) -> str:
    """The one line a run stopped by a signal ends with: which signal, and how to continue."""
    name = signal.Signals(stop.signum).name
    if stop.resume_file:
        return (f"interrupted by {name}; nothing half-written is left, and the last complete epoch is saved: "
                f"continue with --resume={stop.resume_file}")
    return f"interrupted by {name} before this run saved an epoch; nothing half-written is left"


def _main(argv: Sequence[str] | None = None) -> int:
    try:
        return _dispatch(argv)
    except Interrupted as stop:
        print(f"error: {interrupted_line(stop)}", file=sys.stderr)
        return stop.exit_code
    except (OSError, RuntimeError) as error:
        # A full disk (or quota, read-only mount) met by a writer without its own message: the
        # writers remove their temporary files on the way out, so one line is all that is left.
        cause = storage_cause(error)
        if cause is None:
            raise
        where = f" {cause.filename}" if cause.filename else ""
        print(f"error: cannot write{where}: {cause.strerror or cause}", file=sys.stderr)
        return 2


def _dispatch(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg == "--recommend" or arg.startswith("--recommend=") for arg in argv):
        try:
            return recommend_main(argv)
        except PerPEFTError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    parser = build_parser()
    known, rest = parser.parse_known_args(argv)
    try:
        overrides = parse_overrides(rest)
        config_files = known.config_files.split() if known.config_files else None
        if known.tune is not None or any(getattr(known, flag) is not None for flag in TUNE_FLAGS):
            from recbole_perpeft.tune import tune_main

            if known.export is not None:
                raise ConfigError("--export is for a training run; a search saves its best model as best_model.pth")

            return tune_main(known, config_files, overrides)
        from recbole_perpeft.quick_start import close_log_handlers, run
        from recbole_perpeft.run import build_config

        try:
            # Built here first: every value is checked before any data or model is loaded, and
            # nproc is read wherever it was set (command line or config file).
            config = build_config(known.model, known.dataset, config_files, overrides)
            if config["nproc"] > 1:
                from recbole_perpeft.launcher import run_distributed

                if known.resume:
                    raise ConfigError("--resume cannot be combined with --nproc > 1")
                record = run_distributed(config, config_files, overrides, result_file=known.result_file,
                                         export_dir=known.export)
            else:
                # One process: a signal becomes Interrupted (a search and DDP keep their own handling
                # of SIGINT, Ray's and the launcher's).
                with signals_interrupt():
                    record = run(config, result_file=known.result_file, resume=known.resume,
                                 export_dir=known.export)
        finally:
            close_log_handlers()
    except PerPEFTError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    test = record.get("test_result") or {}
    summary = ", ".join(f"{key}={value:.4f}" for key, value in test.items())
    served = " (served: the ID-only backbone, which validated better than item content)" if (
        record.get("id_check", {}).get("served") == "id_only") else ""
    print(f"{record['model']} on {record['dataset']}: test {summary}{served}")
    return 0
