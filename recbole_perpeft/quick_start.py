"""Train, validate and test one model on one dataset; return (and optionally write) its results.

The CLI's training path (``run_recbole_perpeft.py --model=M --dataset=D``) and the trials of a
search call :func:`run`; the run itself is built by :func:`recbole_perpeft.run.build_run`.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from logging import getLogger
from pathlib import Path
from typing import Any, NamedTuple

import torch
from recbole.utils import init_logger

from recbole_perpeft.atomic_write import atomic_write_text
from recbole_perpeft.checkpoint import check_export_dir, export_model, run_config_of
from recbole_perpeft.config import Config
from recbole_perpeft.distributed import is_rank_zero
from recbole_perpeft.errors import ConfigError, Interrupted, StorageError
from recbole_perpeft.id_check import check_line, choose, id_check_applies, id_only_config, twin_settings
from recbole_perpeft.model.protocol import model_report
from recbole_perpeft.plots import plot_run, plots_dir_for
from recbole_perpeft.run import build_config, build_run
from recbole_perpeft.run_identity import find_resume_file, run_identity


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process (and of the CUDA allocator, when used)."""
    peaks = {"peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peaks["peak_cuda_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peaks


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    return {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in model.parameters()),
    }


def _plain(result: dict | None) -> dict[str, float] | None:
    return None if result is None else {key: float(value) for key, value in result.items()}


def run_recbole_perpeft(
    model: str,
    dataset: str,
    config_file_list: list[str] | None = None,
    config_dict: dict[str, Any] | None = None,
    saved: bool = True,
    result_file: str | Path | None = None,
    resume: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Build the config of ``model`` on ``dataset`` and :func:`run` it; the result record."""
    return run(build_config(model, dataset, config_file_list, config_dict), saved=saved,
               result_file=result_file, resume=resume, **options)


def run(
    config: Config,
    saved: bool = True,
    result_file: str | Path | None = None,
    resume: str | Path | None = None,
    *,
    export_dir: str | Path | None = None,
    callback_fn: Callable[[int, float, Any], None] | None = None,
    evaluate_test: bool = True,
    prebuilt_dataset: Any = None,
) -> dict[str, Any]:
    """Train, validate and test the run ``config`` describes; return the result record.

    The record (also written as JSON to ``result_file`` when given) holds the metrics under
    RecBole's names (``ndcg@20``, ``hit@20``, ...), dataset statistics, timings, peak memory
    and parameter counts. ``resume`` continues an interrupted run from its ``.last.pth`` file
    (or ``"latest"``: the newest one of this run in ``checkpoint_dir``: same model, dataset,
    settings and vocabularies; see :mod:`recbole_perpeft.run_identity`). ``export_dir``: the
    tested model is also exported there (:func:`recbole_perpeft.checkpoint.export_model`).

    Hooks for hyperparameter search (:mod:`recbole_perpeft.tune`): ``callback_fn(epoch,
    valid_score, trainer)`` runs after every validation (``trainer.last_valid_result`` holds
    all metrics); ``evaluate_test=False`` skips the test split (``test_result`` is ``None``);
    ``prebuilt_dataset`` is a dataset object already built for the same data settings.
    """
    # The ID-only twin's settings are checked now, not found wrong after the content run trained.
    twin_config = id_only_config(config) if id_check_applies(config) else None
    is_writer = is_rank_zero(config)
    # Every output is checked before training, not found unwritable after it.
    if export_dir is not None and is_writer:
        check_export_dir(export_dir)
    if result_file and is_writer:
        check_output_file(result_file, "--result_file")
    # RecBole creates these with check-then-mkdir; parallel ranks / trials would race on it.
    for folder in (os.path.join("log", config["model"]), config["checkpoint_dir"]):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"cannot create the folder '{folder}' (logs and checkpoints go there, "
                              f"relative to {os.getcwd()}): {error}") from error
    if saved and is_writer:
        check_writable_folder(config["checkpoint_dir"], "checkpoint_dir")
    init_logger(config)
    send_console_logs_to_stdout()
    logger = getLogger()
    logger.info(config)

    served = _train(config, saved=saved, resume=resume, callback_fn=callback_fn, prebuilt_dataset=prebuilt_dataset)
    id_check = None
    if twin_config is not None:
        served, id_check = _check_against_ids(config, twin_config, served, saved=saved, logger=logger)
    built, trainer, best_valid_score, best_valid_result = served
    recommender = built.model
    test_result = None
    if evaluate_test:
        with _resume_file_on_interrupt(trainer):
            test_result = trainer.evaluate(
                built.test_data, load_best_model=saved, show_progress=config["show_progress"]
            )
    logger.info(f"best valid : {best_valid_result}")
    logger.info(f"test result: {test_result}")

    record: dict[str, Any] = {
        "model": config["model"],
        "dataset": config["dataset"],
        "seed": config["seed"],
        "device": str(config["device"]),
        "world_size": 1 if config["single_spec"] else int(config["world_size"]),
        "dataset_stats": built.dataset_stats,

        "best_valid_score": float(best_valid_score),
        "best_valid_result": _plain(best_valid_result),
        "test_result": _plain(test_result),
        "train_loss": [float(trainer.train_loss_dict[e]) for e in sorted(trainer.train_loss_dict)],
        "train_epoch_seconds": list(trainer.train_epoch_seconds),
        "valid_seconds": list(trainer.valid_seconds),
        "valid_scores": list(trainer.valid_scores),
        "eval_seconds": trainer.last_eval_seconds,
        **peak_memory_mb(),
        "params": parameter_counts(recommender),
        "checkpoint": trainer.saved_model_file if saved else None,
    }
    record.update(model_report(recommender))
    record.update(trainer.report())
    if getattr(built.dataset, "train_unit_choice", None):
        record["train_unit_choice"] = built.dataset.train_unit_choice
    if id_check is not None:
        record["id_check"] = id_check
    if export_dir is not None and is_writer:
        # The weights just tested: the best checkpoint's when saved, else the last epoch's.
        record["export"] = str(export_model(recommender, built.train_data._dataset, built.config, export_dir))
        logger.info(f"model exported to {export_dir}")
    if result_file:
        write_result(record, result_file)
        logger.info(f"result written to {result_file}")
    plots_dir = plots_dir_for(result_file, record["checkpoint"])
    if config["plots"] and is_writer and plots_dir is not None:
        record["plots"] = draw_plots(record, plots_dir, logger)
        if result_file and record["plots"]:
            write_result(record, result_file)
    return record


class _Trained(NamedTuple):
    """One fitted run: what :func:`recbole_perpeft.run.build_run` built, and its best validation."""

    built: Any
    trainer: Any
    best_valid_score: float
    best_valid_result: dict | None


@contextmanager
def _resume_file_on_interrupt(trainer: Any) -> Iterator[None]:
    """An interrupted run's :class:`Interrupted` names the file to resume from (the CLI's line)."""
    try:
        yield
    except Interrupted as stop:
        stop.resume_file = getattr(trainer, "last_resume_file", None)
        raise


def _train(config: Config, *, saved: bool, resume: str | Path | None = None,
           callback_fn: Callable[[int, float, Any], None] | None = None, prebuilt_dataset: Any = None) -> _Trained:
    """Build and fit the run ``config`` describes."""
    built = build_run(config, dataset=prebuilt_dataset)
    trainer = built.trainer
    trainer.run_identity = run_identity(run_config_of(config), built.dataset)
    epoch_callback = None
    if callback_fn is not None:
        def epoch_callback(epoch_idx: int, valid_score: float) -> None:
            callback_fn(epoch_idx, valid_score, trainer)

    with _resume_file_on_interrupt(trainer):
        if resume:
            trainer.resume_checkpoint(find_resume_file(config["checkpoint_dir"], trainer.run_identity, resume),
                                      built.train_data)
        best_valid_score, best_valid_result = trainer.fit(
            built.train_data, built.valid_data, saved=saved, show_progress=config["show_progress"],
            callback_fn=epoch_callback,
        )
    return _Trained(built, trainer, best_valid_score, best_valid_result)


def _check_against_ids(config: Config, twin_config: Config, content: _Trained, *, saved: bool,
                       logger: logging.Logger) -> tuple[_Trained, dict[str, Any]]:
    """Train ``twin_config``, the ID-only twin of ``config`` (:mod:`recbole_perpeft.id_check`); the
    trained run to serve (``content`` or the twin) and the record of the check."""
    logger.info("ID-only check (id_fallback: True): training the same backbone over item IDs alone, "
                f"with {dict(config['id_fallback_config'] or {})}")
    twin = _train(twin_config, saved=saved)
    metric = config["valid_metric"]
    content_score, id_only_score = float(content.best_valid_score), float(twin.best_valid_score)
    served = choose(content_score, id_only_score)
    # Dropping the content model is worth a warning: it is not what a PerPEFT run usually serves.
    (logger.warning if served == "id_only" else logger.info)(check_line(metric, content_score, id_only_score, served))

    def summary(run: _Trained) -> dict[str, Any]:
        return {
            "best_valid_score": float(run.best_valid_score),
            "epochs_run": len(run.trainer.train_loss_dict),
            "train_seconds": float(sum(run.trainer.train_epoch_seconds)),
            "checkpoint": run.trainer.saved_model_file if saved else None,
            "schedule": run.trainer.schedule_report(),  # both are PerPEFT runs (id_check_applies)
        }

    record = {"valid_metric": metric, "served": served, "content": summary(content), "id_only": summary(twin),
              "id_only_settings": twin_settings(config)}
    return (twin if served == "id_only" else content), record


def draw_plots(record: dict[str, Any], out_dir: Path, logger: logging.Logger) -> list[str]:
    """The run's plots (recbole_perpeft.plots); a failure is logged and never loses the results."""
    try:
        paths = [str(path) for path in plot_run(record, out_dir)]
    except Exception as error:  # noqa: BLE001 - the metrics are already safe; say why plots are missing
        logger.warning(f"plots were not drawn ({type(error).__name__}: {error}); "
                       "redraw later with python -m recbole_perpeft.plots RESULT.json")
        return []
    logger.info(f"plots written to {out_dir}")
    return paths


def check_output_file(path: str | os.PathLike, flag: str) -> None:
    """Refuse (one-line :class:`ConfigError`) an output file that could not be written later.

    Refused: a directory, a path below a file, a folder that cannot be written. The check probes
    the nearest existing folder with a temporary file (``os.access`` answers True for root and
    ignores read-only mounts); nothing is created or left.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a directory; give a file name (e.g. {path / 'result.json'})")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{flag} {path} cannot be created: {folder} is a file, not a folder")
    check_writable_folder(folder, flag)


def check_writable_folder(folder: str | os.PathLike, what: str) -> None:
    """Refuse a folder that cannot be written to (probed with a temporary file, removed at once)."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".probe-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise ConfigError(f"{what}: cannot write to {folder} ({error.strerror or error})") from error


def write_result(record: dict[str, Any], result_file: str | Path) -> None:
    """The result record as JSON, written atomically; a full disk is one :class:`StorageError` line."""
    path = Path(result_file)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False) + "\n")
    except OSError as error:
        raise StorageError(f"cannot write the result file {path}: {error.strerror or error}") from error


def send_console_logs_to_stdout() -> None:
    """Point RecBole's console log handler at stdout: the run's progress is output, and stderr
    then carries only what went wrong (the CLI's one error line)."""
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and handler.stream is sys.stderr:
            handler.setStream(sys.stdout)


def close_log_handlers() -> None:
    """Release RecBole's log file handlers (several runs in one process otherwise leak them)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            handler.close()
            root.removeHandler(handler)
    sys.stdout.flush()
