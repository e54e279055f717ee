"""Multi-process (DDP) training for every model the CLI runs, on CPU (gloo) or CUDA (nccl): the
collective helpers the config and the trainer use (rank, barrier, broadcast, loss averaging).
Starting the processes is the CLI's business (:mod:`recbole_perpeft.launcher`).

RecBole 1.2.1's own distributed path does not work for us: ``Config._init_device`` hard-codes
``nccl`` and a CUDA device, the trainer wraps the model with ``device_ids=[rank]`` (CUDA only),
and its gradient sync adds ``0 * sum(all parameters)`` to every loss so that every parameter
"takes part". For PerPEFT that zero gradient is not harmless: AdamW would then decay and move
the modules of groups a batch never touched, which a single-process run leaves alone.

What we do instead (see :class:`recbole_perpeft.trainer.safe.SafeTrainerMixin`):

* the backend follows the device: ``gloo`` on CPU, ``nccl`` on CUDA;
* data loaders are built unsharded on every rank (same seed, so the same batches in the same
  order); each training batch is then split by rows, rank ``r`` taking the ``r``-th contiguous
  chunk. The effective batch is the single-process batch, whatever ``nproc`` is;
* the loss is computed through a ``DistributedDataParallel`` wrapper with
  ``find_unused_parameters=True``: a parameter no rank used keeps ``grad=None`` (as in one
  process); one used by some ranks gets the average. Each rank's loss is weighted by its share
  of the batch's rows, so the averaged gradient is the gradient of the whole batch's mean loss;
* every rank evaluates the whole validation / test split (no sharding), so metrics, early
  stopping and the stage schedule's decisions are identical on all ranks without any reduction;
* only rank 0 writes checkpoints and result files; the others load rank 0's checkpoint.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def is_rank_zero(config) -> bool:
    """Whether this process writes the run's files: a single-process run, or DDP's rank 0."""
    return bool(config["single_spec"]) or int(config["local_rank"]) == 0


def init_distributed_device(final: dict[str, Any]) -> None:
    """Join the process group of a ``local_rank``-configured run; set ``device`` and ``single_spec``.

    Called from ``Config._init_device`` with the final config dict.
    """
    gpu_id = final.get("gpu_id", "0")
    gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(gpu_id)
    final["gpu_id"] = gpu_id
    nproc = int(final.get("nproc") or 1)
    world_size = int(final.get("world_size") or -1)
    world_size = nproc if world_size <= 0 else world_size
    local_rank = int(final["local_rank"])
    rank = local_rank + int(final.get("offset") or 0)
    use_cuda = bool(final.get("use_gpu")) and gpu_id != "" and torch.cuda.is_available()
    if use_cuda:
        if len(gpu_id.split(",")) < nproc:
            raise ValueError(f"nproc={nproc} on CUDA needs gpu_id to list {nproc} devices, e.g. gpu_id='0,1'")
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", gpu_id)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            init_method=f"tcp://{final.get('ip') or 'localhost'}:{final.get('port')}",
            timeout=timedelta(minutes=30),
        )
    if use_cuda:
        torch.cuda.set_device(local_rank)
        final["device"] = torch.device("cuda", local_rank)
    else:
        final["device"] = torch.device("cpu")
    final["single_spec"] = False
    final["world_size"] = world_size
    final["dist_backend"] = backend
    if rank != 0:
        # Only rank 0 talks; the others would print the same lines again.
        final["state"] = "error"
        final["show_progress"] = False
        final["verbose"] = False


def is_distributed(config) -> bool:
    return not config["single_spec"]


def world_rank() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as held by rank ``src`` (in-memory exchange between our own ranks)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def average_loss(loss: float | tuple | None) -> float | tuple | None:
    """The epoch loss averaged over ranks (each rank summed its weighted share of each batch)."""
    if loss is None or not (dist.is_available() and dist.is_initialized()):
        return loss
    values = torch.tensor(list(loss) if isinstance(loss, tuple) else [loss], dtype=torch.float64)
    dist.all_reduce(values)
    values /= dist.get_world_size()
    return tuple(values.tolist()) if isinstance(loss, tuple) else float(values[0])


@contextlib.contextmanager
def unsharded_loaders(config) -> Iterator[None]:
    """Build RecBole data loaders as in one process (no ``DistributedSampler``), even under DDP.

    Training batches are split by rows later (:class:`RankShard`); evaluation runs whole.
    """
    distributed = is_distributed(config)
    if distributed:
        config["single_spec"] = True
    try:
        yield
    finally:
        if distributed:
            config["single_spec"] = False


class RankShard:
    """This rank's rows of every batch of a training loader (RecBole-loader shaped).

    Every rank iterates the same batches; rank ``r`` keeps the ``r``-th of ``world`` contiguous
    row chunks. ``weight`` is ``rows_here * world / rows_in_batch``: a per-row-mean loss times
    it, averaged over ranks by DDP, is the mean over the whole batch. A batch with fewer rows
    than ranks is processed whole by every rank (weight 1), so no rank ever gets an empty one.
    """

    def __init__(self, loader, rank: int, world: int) -> None:
        self.loader = loader
        self.rank = rank
        self.world = world
        self.shuffle = False  # RecBole calls sampler.set_epoch() on shuffled loaders under DDP
        self.weight = 1.0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            n_rows = len(batch)
            if n_rows < self.world:
                self.weight = 1.0
                yield batch
                continue
            bounds = torch.linspace(0, n_rows, self.world + 1).round().long().tolist()
            start, stop = bounds[self.rank], bounds[self.rank + 1]
            self.weight = (stop - start) * self.world / n_rows
            yield batch[start:stop]


class _LossModule(nn.Module):
    """``forward`` = the model's loss, so that DDP's hooks see the real loss graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss_func = None

    def forward(self, interaction):
        return self.loss_func(interaction)


class DistributedLoss:
    """The model's loss under ``DistributedDataParallel`` (unused parameters allowed)."""

    def __init__(self, model: nn.Module) -> None:
        self.module = _LossModule(model)
        # device_ids=None: the module already lives on its one device (CPU or this rank's GPU).
        # Construction broadcasts rank 0's weights, so every rank starts from the same model.
        self.ddp = DistributedDataParallel(self.module, device_ids=None, find_unused_parameters=True)

    def wrap(self, loss_func, shard: RankShard):
        def loss(interaction):
            self.module.loss_func = loss_func
            losses = self.ddp(interaction)
            if isinstance(losses, tuple):
                return tuple(part * shard.weight for part in losses)
            return losses * shard.weight

        return loss
