"""Hyperparameter search with Ray Tune's ``Tuner`` API, for every model the CLI runs.

``python run_recbole_perpeft.py --tune=space.yaml --model=M --dataset=D [--KEY=VALUE ...]``

* the search space is a YAML mapping of config keys to distributions (:func:`load_space`);
* every trial is :func:`_trial`: :func:`run_recbole_perpeft` with a per-epoch callback that
  reports the validation metrics through ``ray.tune.report`` (RecBole's ``objective_function``
  and ``run_hyper`` do not work with current Ray), and no test evaluation;
* ASHA stops weak trials early on the validation metric (``valid_metric``); a failing trial is
  recorded with its error and the search goes on;
* each trial reports its best weights-only checkpoint to Ray; after the search the driver
  evaluates the best trial's checkpoint on the test split (the only test evaluation);
* outputs under ``--tune_dir``: ``results.csv``, ``results.json``, ``best.yaml`` (reruns with
  ``--config_files=best.yaml``), ``best_model.pth``, and Ray's experiment folder.

The dataset and the item-content / IISAN caches are built once by the driver: the processed
dataset goes to Ray's object store (unless a searched key changes it), the caches are warmed on
disk under ``$RECBOLE_PERPEFT_HOME``, and trials get absolute ``data_path`` / ``cache_dir``
because each trial runs in its own working directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from recbole_perpeft.config_schema import DATASET_KEYS
from recbole_perpeft.errors import ConfigError, PerPEFTError

METRIC = "valid_score"  # what ASHA watches: the value of the config's ``valid_metric``
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# name -> (Ray Tune function name, how the YAML value is read)
#   "values": the value is the list of candidates
#   "args":   a list of positional arguments or a mapping of keyword arguments
_SAMPLED = ("uniform", "quniform", "loguniform", "qloguniform", "randint", "qrandint", "lograndint",
            "qlograndint", "randn", "qrandn")
DISTRIBUTIONS: dict[str, tuple[str, str]] = {
    "choice": ("choice", "values"),
    "grid": ("grid_search", "values"),
    "grid_search": ("grid_search", "values"),
    **{name: (name, "args") for name in _SAMPLED},  # each named as Ray Tune names it
}

# Keys whose change alters the processed dataset (the schema's, besides the dataset arguments): with
# one of them searched, every trial builds its own dataset instead of sharing the driver's.
_DATASET_KEYS_EXTRA = set(DATASET_KEYS)


# --------------------------------------------------------------------------- search space
def load_space(path: str | os.PathLike) -> dict[str, Any]:
    """The Ray Tune ``param_space`` described by a YAML file; :class:`ConfigError` if invalid.

    Each top-level key is a config key; its value is either a one-key mapping naming a
    distribution (``learning_rate: {loguniform: [1e-4, 1e-2]}``, ``n_groups: {choice: [1, 2,
    4]}``, ``dropout: {grid: [0.1, 0.3]}``; arguments as a list or as a mapping, e.g.
    ``{loguniform: {lower: 1e-4, upper: 1e-2}}``), or a plain value fixed for all trials.
    """
    from ray import tune

    from recbole_perpeft.config import ConfigLoader

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"search space file not found: {path}")
    try:
        loaded = yaml.load(file.read_text(encoding="utf-8"), Loader=ConfigLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"search space file {path} is not valid YAML: {str(error).splitlines()[0]}") from error
    if not isinstance(loaded, dict) or not loaded:
        raise ConfigError(f"search space file {path} must be a non-empty mapping of config keys to distributions")
    space: dict[str, Any] = {}
    for key, spec in loaded.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise ConfigError(f"search space {path}: {key!r} is not a config key")
        if not isinstance(spec, dict):
            space[key] = spec  # a constant
            continue
        if len(spec) != 1:
            raise ConfigError(
                f"search space {path}: '{key}' must map to one distribution, e.g. "
                f"{{choice: [..]}}, got keys {sorted(map(str, spec))}"
            )
        name, argument = next(iter(spec.items()))
        if name not in DISTRIBUTIONS:
            raise ConfigError(
                f"search space {path}: unknown distribution '{name}' for '{key}'; "
                f"use one of {', '.join(DISTRIBUTIONS)}"
            )
        function_name, style = DISTRIBUTIONS[name]
        function = getattr(tune, function_name)
        try:
            if style == "values":
                if not isinstance(argument, list) or not argument:
                    raise ValueError("expects a non-empty list of values")
                domain = function(argument)
            elif isinstance(argument, list):
                domain = function(*argument)
            elif isinstance(argument, dict):
                domain = function(**argument)
            else:
                raise ValueError("expects a list of arguments or a mapping of keyword arguments")
            if name not in ("grid", "grid_search"):
                _check_domain(domain, name, argument)
        except (TypeError, ValueError, AssertionError) as error:
            raise ConfigError(f"search space {path}: bad '{name}' for '{key}': {error or type(error).__name__}") \
                from error
        space[key] = domain
    return space


def _check_domain(domain, name: str, argument: Any) -> None:
    """Catch bounds Ray would only trip over while sampling (e.g. ``uniform: [1, 0]``)."""
    lower, upper = getattr(domain, "lower", None), getattr(domain, "upper", None)
    if lower is not None and upper is not None:
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lower, upper)):
            raise ValueError(f"bounds must be numbers, got {argument!r}")
        if not lower < upper:
            raise ValueError(f"lower bound {lower} must be below upper bound {upper}")
        if name.startswith(("log", "qlog")) and lower <= 0:
            raise ValueError(f"log-scale bounds must be positive, got {lower}")
    import numpy as np

    domain.sample(random_state=np.random.RandomState(0))  # raises on arguments Ray cannot use


# --------------------------------------------------------------------------------- trials
def _plain(value: Any) -> Any:
    """Plain Python / YAML types (NumPy scalars and tuples become int, float, list)."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _trial(
    params: dict[str, Any],
    *,
    model: str,
    dataset: str,
    config_files: list[str] | None,
    fixed: dict[str, Any],
    shared_dataset: Any = None,
    threads: int = 1,
) -> None:
    """One trial: train with ``fixed`` + ``params``, report every validation to Ray Tune."""
    import torch
    from ray import tune

    from recbole_perpeft.quick_start import close_log_handlers, run_recbole_perpeft

    torch.set_num_threads(max(1, threads))
    workdir = Path.cwd().resolve()  # Ray runs each trial in its own working directory
    # A trial reports its content run to Ray epoch by epoch, so it runs no ID-only check (which
    # would train a second model Ray never sees) unless the search sets id_fallback itself.
    config_dict = {"id_fallback": False, **fixed, **_plain(params), "checkpoint_dir": str(workdir / "checkpoints")}

    def report(epoch: int, valid_score: float, trainer) -> None:
        improved = trainer.cur_step == 0
        metrics: dict[str, Any] = {
            "epoch": epoch,
            METRIC: float(valid_score),
            "best_valid_score": float(trainer.best_valid_score),
            "train_loss": float(trainer.train_loss_dict.get(epoch, float("nan"))),
            "epoch_seconds": float(trainer.train_epoch_seconds[-1]) if trainer.train_epoch_seconds else 0.0,
            "cur_step": int(trainer.cur_step),
        }
        for name, value in (trainer.last_valid_result or {}).items():
            metrics[f"valid/{name}"] = float(value)
        if not improved:
            tune.report(metrics)
            return
        # The best weights so far (a weights-only file) travel with this report to the storage.
        with tempfile.TemporaryDirectory() as folder:
            shutil.copyfile(trainer.saved_model_file, os.path.join(folder, "model.pth"))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    try:
        run_recbole_perpeft(
            model, dataset, config_files, config_dict, saved=True,
            callback_fn=report, evaluate_test=False, prebuilt_dataset=shared_dataset,
        )
    finally:
        close_log_handlers()


# -------------------------------------------------------------------------------- driver
def _ray_init(ray_address: str | None, env_vars: dict[str, str]) -> bool:
    """Start local Ray or attach to a cluster; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": env_vars}
    if ray_address:
        try:
            ray.init(address=ray_address, runtime_env=runtime_env, logging_level=logging.WARNING,
                     log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise ConfigError(f"cannot attach to the Ray cluster at {ray_address}: {error}") from error
    else:
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False, runtime_env=runtime_env)
    return True


def _check_resources(cpus_per_trial: float, gpus_per_trial: float) -> None:
    import ray

    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    # Ray would keep such trials pending forever instead of failing.
    if cpus_per_trial > cpus:
        raise ConfigError(f"--cpus_per_trial={cpus_per_trial:g} but the Ray cluster has {cpus:g} CPUs")
    if gpus_per_trial > gpus:
        raise ConfigError(f"--gpus_per_trial={gpus_per_trial:g} but the Ray cluster has {gpus:g} GPUs")


def _error_line(error: BaseException | None) -> str:
    if error is None:
        return ""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _best_row(frame, bigger: bool):
    if frame is None or len(frame) == 0 or METRIC not in frame:
        return None
    scores = frame[METRIC].astype(float)
    return frame.loc[scores.idxmax() if bigger else scores.idxmin()]


def _evaluate_checkpoint(model: str, dataset: str, config_files, config_dict: dict, model_file: str) -> dict:
    """Test metrics of a trial's saved weights (loaded weights-only) in the driver."""
    from recbole_perpeft.run import build_config, build_run

    config = build_config(model, dataset, config_files, {**config_dict, "checkpoint_dir": tempfile.gettempdir()})
    built = build_run(config)
    result = built.trainer.evaluate(built.test_data, load_best_model=True, model_file=model_file, show_progress=False)
    return {key: float(value) for key, value in result.items()}


def run_search(
    model: str,
    dataset: str,
    space_file: str | os.PathLike,
    config_file_list: list[str] | None = None,
    fixed: dict[str, Any] | None = None,
    *,
    num_samples: int = 1,
    max_concurrent: int = 0,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    ray_address: str | None = None,
    tune_dir: str | os.PathLike = "tune_results",
    grace_period: int = 1,
    reduction_factor: int = 2,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Search ``space_file`` for ``model`` on ``dataset``; return the summary (also written to disk).

    The summary holds ``rows`` (one per trial: id, status, parameters, best validation metrics,
    seconds, error), ``best`` (its parameters, validation and test metrics), and the paths of
    ``results.csv``, ``results.json``, ``best.yaml`` and ``best_model.pth`` under ``tune_dir``.
    """
    import pandas as pd
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from recbole_perpeft.cache import HOME_ENV, cache_root, perpeft_home
    from recbole_perpeft.quick_start import close_log_handlers
    from recbole_perpeft.run import build_config, build_run, create_dataset
    from recbole_perpeft.utils import get_model

    start = time.perf_counter()
    fixed = dict(fixed or {})
    space = load_space(space_file)
    both = sorted(set(space) & set(fixed))
    if both:
        raise ConfigError(f"{', '.join(both)} both searched (in {space_file}) and fixed on the command line")
    if num_samples < 1 or max_concurrent < 0 or grace_period < 1 or reduction_factor < 2:
        raise ConfigError("need num_samples >= 1, max_concurrent >= 0, grace_period >= 1, reduction_factor >= 2")
    if not cpus_per_trial > 0 or gpus_per_trial < 0 or not math.isfinite(cpus_per_trial + gpus_per_trial):
        raise ConfigError(f"bad resources: cpus_per_trial={cpus_per_trial} (> 0), gpus_per_trial={gpus_per_trial}"
                          " (>= 0)")
    config_files = [str(Path(f).resolve()) for f in config_file_list or []]
    get_model(model)  # an unknown model fails here, before Ray starts

    # The driver's config: fixed settings, searched keys at their defaults.
    config = build_config(model, dataset, config_files, fixed)
    if int(config["nproc"] or 1) > 1:
        raise ConfigError("--nproc > 1 cannot be combined with --tune (a trial is one process)")
    bigger = bool(config["valid_metric_bigger"])
    valid_metric = str(config["valid_metric"]).lower()
    planned_epochs = config["epochs"]
    trial_fixed = dict(fixed)
    # Trials run in their own working directories: every path they read must be absolute.
    trial_fixed["data_path"] = str(Path(config["data_path"]).resolve().parent)
    if "cache_dir" in config.final_config_dict:
        trial_fixed["cache_dir"] = str(cache_root(config["cache_dir"]).resolve())
    home = str(perpeft_home().resolve())
    env_vars = {HOME_ENV: home}
    if not ray_address:
        # Local workers import this checkout even when it is not installed.
        package_root = str(Path(__file__).resolve().parent.parent)
        env_vars["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)

    # Keeping one checkpoint per trial makes Ray snapshot the experiment at every improvement and
    # warn about it each time; the snapshots are tiny here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started_ray = _ray_init(ray_address, env_vars)
    try:
        _check_resources(cpus_per_trial, gpus_per_trial)
        dataset_keys = set(config.parameters["Dataset"]) | _DATASET_KEYS_EXTRA
        trial_config = build_config(model, dataset, config_files,
                                    {**trial_fixed, "checkpoint_dir": tempfile.gettempdir()})
        data = create_dataset(trial_config)
        share = not (set(space) & dataset_keys)
        log(f"search: {model} on {dataset}, {len(space)} searched keys, dataset "
            + ("shared through Ray's object store" if share else "built per trial (a dataset key is searched)"))
        trainable = tune.with_resources(
            tune.with_parameters(  # puts the dataset into Ray's object store now, before it is split
                _trial, model=model, dataset=dataset, config_files=config_files or None, fixed=trial_fixed,
                shared_dataset=data if share else None, threads=max(1, int(cpus_per_trial)),
            ),
            {"cpu": cpus_per_trial, "gpu": gpus_per_trial},
        )
        # Warm the on-disk caches (item content, IISAN states): building the model once fills
        # them, under their file locks, before any trial starts.
        if "foundation_model" in trial_config.final_config_dict:
            build_run(trial_config, dataset=data, with_trainer=False)
        close_log_handlers()

        max_t = planned_epochs if "epochs" not in space else 10**6
        storage = Path(tune_dir).resolve()
        name = f"{model}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max" if bigger else "min",
                search_alg=BasicVariantGenerator(random_state=int(config["seed"])),
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=max(1, max_t),
                                        grace_period=grace_period, reduction_factor=reduction_factor),
                num_samples=num_samples,
                max_concurrent_trials=max_concurrent or None,
                trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(storage),
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=0,
            ),
        )
        grid = tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()

    rows: list[dict[str, Any]] = []
    checkpoints: dict[str, Any] = {}
    for index, result in enumerate(grid):
        metrics = result.metrics or {}
        folder = Path(result.path).name if result.path else ""
        trial_id = metrics.get("trial_id") or folder.removeprefix("trial_") or str(index)
        frame = result.metrics_dataframe
        best = _best_row(frame, bigger)
        epochs_run = 0 if frame is None else len(frame)
        params = {key: _plain((result.config or {}).get(key)) for key in space}
        epochs = params.get("epochs", planned_epochs)
        if result.error is not None:
            status = "ERROR"
        elif epochs_run >= epochs:
            status = "TERMINATED"
        else:
            status = "STOPPED"  # by ASHA, or by RecBole's stopping_step
        row: dict[str, Any] = {"trial_id": trial_id, "status": status, **params, "epochs_run": epochs_run,
                               "best_epoch": None if best is None else int(best["epoch"]),
                               f"valid_{valid_metric}": None if best is None else float(best[METRIC])}
        if best is not None:
            row.update({f"valid_{k[len('valid/'):]}": float(best[k]) for k in best.index if k.startswith("valid/")})
        row["seconds"] = round(float(metrics.get("time_total_s", 0.0)), 2)
        row["error"] = _error_line(result.error)
        rows.append(row)
        if result.error is None and result.checkpoint is not None and best is not None:
            checkpoints[trial_id] = result.checkpoint
    rows.sort(key=lambda r: r["trial_id"])

    candidates = [r for r in rows if r["trial_id"] in checkpoints]
    summary: dict[str, Any] = {"model": model, "dataset": dataset, "space_file": str(space_file),
                               "searched_keys": list(space), "fixed": _plain(fixed), "valid_metric": valid_metric,
                               "experiment_path": str(storage / name), "rows": rows, "best": None}
    out = storage
    out.mkdir(parents=True, exist_ok=True)
    if candidates:
        key = f"valid_{valid_metric}"
        chosen = (max if bigger else min)(candidates, key=lambda r: r[key])
        best_params = {k: chosen[k] for k in space}
        best_model = out / "best_model.pth"
        with checkpoints[chosen["trial_id"]].as_directory() as folder:
            shutil.copyfile(os.path.join(folder, "model.pth"), best_model)
        log(f"evaluating the best trial {chosen['trial_id']} on the test split")
        try:
            test = _evaluate_checkpoint(model, dataset, config_files or None, {**trial_fixed, **best_params},
                                        str(best_model))
        finally:
            close_log_handlers()
        for name_, value in test.items():
            chosen[f"test_{name_}"] = value
        best_yaml = out / "best.yaml"
        best_config = {**_plain(fixed), **_plain(best_params)}
        best_yaml.write_text(
            f"# best of {len(rows)} trials ({model} on {dataset}, {valid_metric} = {chosen[key]:.4f});\n"
            f"# rerun: python run_recbole_perpeft.py --model={model} --dataset={dataset} "
            f"--config_files=\"{' '.join([*config_files, str(best_yaml)])}\"\n"
            + yaml.safe_dump(best_config, sort_keys=False, default_flow_style=None)
        )
        summary["best"] = {"trial_id": chosen["trial_id"], "params": best_params,
                           "valid": {k[6:]: v for k, v in chosen.items() if k.startswith("valid_")},
                           "test": test, "config_file": str(best_yaml), "model_file": str(best_model)}
    summary["seconds"] = round(time.perf_counter() - start, 1)
    table = pd.DataFrame(rows)
    table.to_csv(out / "results.csv", index=False)
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    summary["table"] = table
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The trial table and the best configuration, for the terminal."""
    import pandas as pd

    table: pd.DataFrame = summary["table"]
    shown = table.drop(columns=[c for c in table.columns if c.startswith(("valid_hit", "test_hit"))
                                or (c.startswith(("valid_ndcg", "test_ndcg")) and c[6:] != summary["valid_metric"]
                                    and c[5:] != summary["valid_metric"])])
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_colwidth", 60):
        lines = [shown.to_string(index=False, na_rep="-")]
    out = Path(summary["experiment_path"]).parent
    lines.append(f"results: {out / 'results.csv'}, {out / 'results.json'} ({summary['seconds']} s)")
    best = summary["best"]
    if best is None:
        lines.append("no trial finished a validation: no best configuration")
    else:
        test = ", ".join(f"{k}={v:.4f}" for k, v in best["test"].items())
        lines.append(f"best trial {best['trial_id']}: {best['params']}; test {test}")
        lines.append(f"best configuration: {best['config_file']}")
    return "\n".join(lines)


def _number(flag: str, text: str | None, default: float, kind: type) -> Any:
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"--{flag} must be {'an integer' if kind is int else 'a number'}, got '{text}'") from None
    if not math.isfinite(value):
        raise ConfigError(f"--{flag} must be finite, got '{text}'")
    return value


def tune_main(known: argparse.Namespace, config_files: list[str] | None, overrides: dict[str, Any]) -> int:
    """The CLI's ``--tune`` path: parse the resource flags, search, print and save the results."""
    if known.tune is None:
        raise ConfigError("the search flags (--num_samples, --cpus_per_trial, ...) need --tune=SPACE.yaml")
    summary = run_search(
        known.model, known.dataset, known.tune, config_files, overrides,
        num_samples=_number("num_samples", known.num_samples, 1, int),
        max_concurrent=_number("max_concurrent", known.max_concurrent, 0, int),
        cpus_per_trial=_number("cpus_per_trial", known.cpus_per_trial, 1.0, float),
        gpus_per_trial=_number("gpus_per_trial", known.gpus_per_trial, 0.0, float),
        ray_address=known.ray_address,
        tune_dir=known.tune_dir or "tune_results",
        grace_period=_number("grace_period", known.grace_period, 1, int),
        reduction_factor=_number("reduction_factor", known.reduction_factor, 2, int),
    )
    print(format_summary(summary))
    if known.result_file:
        Path(known.result_file).write_text(
            json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=2, default=str) + "\n"
        )
    return 0 if summary["best"] is not None else 1


__all__ = ["DISTRIBUTIONS", "PerPEFTError", "format_summary", "load_space", "run_search", "tune_main"]
