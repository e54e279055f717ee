"""Start a training run in ``nproc`` processes on this machine (the CLI's ``--nproc=N``, or
``nproc: N`` in a config file).

Every process runs :func:`recbole_perpeft.quick_start.run` with its own ``local_rank``; how they
train together is :mod:`recbole_perpeft.distributed`'s (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import socket
from typing import Any

import torch.distributed as dist

from recbole_perpeft.config import Config
from recbole_perpeft.errors import ConfigError, PerPEFTError
from recbole_perpeft.quick_start import close_log_handlers, run
from recbole_perpeft.run import build_config


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("localhost", 0))
        return int(probe.getsockname()[1])


def _worker(local_rank: int, model: str, dataset: str, config_file_list, config_dict: dict, options: dict,
            queue) -> None:
    try:
        config = build_config(model, dataset, config_file_list, {**config_dict, "local_rank": local_rank})
        if local_rank != 0:
            options = {**options, "result_file": None}  # rank 0 writes the result
        record = run(config, **options)
        if local_rank == 0:
            queue.put({"record": record})
    except PerPEFTError as error:
        if local_rank == 0:
            queue.put({"error": str(error)})
    finally:
        close_log_handlers()
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(
    config: Config, config_file_list: list[str] | None = None, config_dict: dict[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run ``config`` (built from ``config_file_list`` and ``config_dict``) in ``config['nproc']``
    processes; rank 0's result record. ``options`` go to :func:`recbole_perpeft.quick_start.run`
    (``saved``, ``result_file``, ``export_dir``; ``resume`` is refused by the CLI).

    Each process rebuilds the config from the same files and settings. Without a ``port`` of
    the user's a free one is taken, so concurrent runs do not collide.
    """
    import torch.multiprocessing as mp

    nproc = int(config["nproc"])
    given = config.external_config_dict  # the user's own settings, files and command line
    if given.get("world_size", -1) not in (-1, None) and given["world_size"] != nproc and "offset" not in given:
        raise ConfigError("world_size differs from nproc: give each machine's offset (first rank) too")
    settings = {**(config_dict or {}), "nproc": nproc}
    if "port" not in given:
        settings["port"] = free_port()
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_worker, args=(config["model"], config["dataset"], config_file_list, settings, options, queue),
             nprocs=nproc, join=True)
    answer = None if queue.empty() else queue.get()
    if answer is None:
        raise PerPEFTError("the distributed run ended without a result from rank 0")
    if "error" in answer:
        raise PerPEFTError(answer["error"])
    return answer["record"]


__all__ = ["free_port", "run_distributed"]
