"""The training epoch of the plugin's trainers: timing, mixed precision and DDP.

:class:`EpochLoopMixin` times every epoch, shards batches by rank and averages the loss under
DDP (:mod:`recbole_perpeft.distributed`), trains in mixed precision (``mixed_precision``,
:mod:`recbole_perpeft.precision`) with a loss scale that persists across epochs, and names the
epoch (and a grouped model's groups) when the loss diverges. Mixed into a RecBole trainer by
:class:`recbole_perpeft.trainer.safe.SafeTrainerMixin`.
"""

from __future__ import annotations

import time

import torch
from recbole.trainer import Trainer
from torch.nn.utils import clip_grad_norm_

from recbole_perpeft.errors import TrainingDivergedError
from recbole_perpeft.model.protocol import groups_of_last_batch
from recbole_perpeft.precision import autocast, resolve_mixed_precision


class EpochLoopMixin:
    """RecBole's training epoch, timed, in mixed precision and under DDP; see the module docstring."""

    def _init_epoch_loop(self, config) -> None:
        # Mixed precision. Our loop (_amp_epoch) replaces RecBole's base one: RecBole's picks no
        # dtype (fp16 on CUDA, never bf16), makes a fresh GradScaler every epoch and clips the
        # still-scaled gradients. Trainers with their own epoch logic (RecBole's KG trainers, ...)
        # keep it, with RecBole's autocast switched on for them.
        self.amp_dtype = resolve_mixed_precision(config["mixed_precision"], self.device)
        self._own_loop = _next_train_epoch(type(self)) is Trainer._train_epoch
        self.enable_amp = self.amp_dtype is not None and not self._own_loop
        self.enable_scaler = self.enable_amp and self.amp_dtype == torch.float16 and torch.cuda.is_available()
        self.scaler = torch.amp.GradScaler(
            torch.device(self.device).type, enabled=self._own_loop and self.amp_dtype == torch.float16
        )

    # ------------------------------------------------------------ distributed
    def set_reduce_hook(self):
        """Unused: gradients are reduced by our DDP wrapper (see recbole_perpeft.distributed)."""

    def sync_grad_loss(self):
        return 0

    def _map_reduce(self, result, num_sample):
        # Every rank evaluates the whole split, so its result is already the global one.
        return result

    # ----------------------------------------------------------------- timing
    def _check_nan(self, loss):
        if not torch.isfinite(loss):
            where = f"epoch {self._current_epoch}"
            groups = groups_of_last_batch(self.model)
            if groups is not None:
                where += f", group(s) {groups}"
            raise TrainingDivergedError(
                f"training loss is {loss.item()} at {where}: lower learning_rate, or set "
                "clip_grad_norm (e.g. --clip_grad_norm=\"{max_norm: 5}\")"
            )

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self._current_epoch = epoch_idx
        start = time.perf_counter()
        if self.distributed_loss is not None:
            from recbole_perpeft.distributed import RankShard, average_loss, world_rank

            rank, world = world_rank()
            train_data = RankShard(train_data, rank, world)
            loss_func = self.distributed_loss.wrap(loss_func or self.model.calculate_loss, train_data)
            loss = average_loss(self._epoch(train_data, epoch_idx, loss_func, show_progress))
        else:
            loss = self._epoch(train_data, epoch_idx, loss_func, show_progress)
        self.train_epoch_seconds.append(time.perf_counter() - start)
        return loss

    def _epoch(self, train_data, epoch_idx, loss_func, show_progress):
        if self._own_loop:
            return self._amp_epoch(train_data, epoch_idx, loss_func, show_progress)
        return super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)

    def _amp_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        """RecBole's training loop, with autocast in ``amp_dtype``, fp32 master weights, and fp16
        loss scaling whose scale persists across epochs (and resumes) and is removed before
        gradients are clipped."""
        from recbole.utils import set_color
        from tqdm import tqdm

        self.model.train()
        loss_func = loss_func or self.model.calculate_loss
        total_loss = None
        batches = train_data
        if show_progress:
            batches = tqdm(train_data, total=len(train_data), ncols=100,
                           desc=set_color(f"Train {epoch_idx:>5}", "pink"))
        for interaction in batches:
            interaction = interaction.to(self.device)
            self.optimizer.zero_grad()
            with autocast(self.device, self.amp_dtype):
                losses = loss_func(interaction)
            if isinstance(losses, tuple):
                loss = sum(losses)
                parts = tuple(part.item() for part in losses)
                total_loss = parts if total_loss is None else tuple(map(sum, zip(total_loss, parts)))
            else:
                loss = losses
                total_loss = losses.item() if total_loss is None else total_loss + losses.item()
            self._check_nan(loss)
            self.scaler.scale(loss).backward()
            if self.clip_grad_norm:
                self.scaler.unscale_(self.optimizer)
                clip_grad_norm_(self.model.parameters(), **self.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return total_loss


def _next_train_epoch(cls: type):
    """The ``_train_epoch`` that ``EpochLoopMixin`` would call through ``super()``."""
    mro = cls.__mro__
    for klass in mro[mro.index(EpochLoopMixin) + 1:]:
        if "_train_epoch" in vars(klass):
            return vars(klass)["_train_epoch"]
    return None
