"""Checkpoint-safe, timed RecBole trainers.

``make_safe(TrainerClass)`` returns a subclass of any RecBole trainer that

* saves checkpoints holding tensors and builtins only (no pickled ``Config``), written
  atomically under a name no parallel run shares;
* loads them with ``torch.load(..., weights_only=True)`` for the test step and for resuming;
* records the seconds of every training epoch and evaluation for the result file;
* trains in mixed precision (``mixed_precision``, :mod:`recbole_perpeft.precision`).
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from recbole.trainer import Trainer
from torch.nn.utils import clip_grad_norm_

from recbole_perpeft.checkpoint import (
    atomic_torch_save,
    load_checkpoint,
    model_checkpoint,
    resume_file_of,
    set_rng_states,
    unique_checkpoint_name,
)
from recbole_perpeft.errors import TrainingDivergedError
from recbole_perpeft.model.protocol import groups_of_last_batch, is_grouped
from recbole_perpeft.precision import autocast, resolve_mixed_precision
from recbole_perpeft.run_identity import check_resume_identity, check_vocabulary


class SafeTrainerMixin:
    """Mixed in before a RecBole trainer class; see the module docstring."""

    def __init__(self, config, model):  # noqa: D107 - signature fixed by RecBole
        distributed = not config["single_spec"]
        # Under DDP, RecBole's own wrapping (device_ids=[rank]: CUDA only) and its zero-loss
        # gradient sync are replaced by ours (recbole_perpeft.distributed), so hide DDP from it.
        config["single_spec"] = True
        try:
            super().__init__(config, model)
        finally:
            config["single_spec"] = not distributed
        self.saved_model_file = os.path.join(
            self.checkpoint_dir, unique_checkpoint_name(config["model"])
        )
        self.train_epoch_seconds: list[float] = []
        self.valid_seconds: list[float] = []
        self.valid_scores: list[list[float]] = []  # [epoch, score] of every validation
        self.last_eval_seconds: float = 0.0
        self._train_data = None
        self.last_valid_result: dict | None = None
        self.distributed_loss = None
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
        # Set by the run (recbole_perpeft.run_identity.run_identity): written into every checkpoint,
        # checked when resuming and when loading weights.
        self.run_identity: dict[str, str] | None = None
        if distributed:
            from recbole_perpeft.distributed import DistributedLoss, broadcast_object

            # Only rank 0 writes checkpoints; every rank reloads rank 0's file for the test.
            self.saved_model_file = broadcast_object(self.saved_model_file)
            self.distributed_loss = DistributedLoss(self.model)

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

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        self._train_data = train_data
        if self.start_epoch >= self.epochs or self.cur_step > self.stopping_step:
            # A resumed run that had already finished (or stopped early): nothing to train, and
            # RecBole would overwrite the best checkpoint with the last weights here.
            self.logger.info("training had already finished before the resume")
            return self.best_valid_score, self.best_valid_result
        if saved:
            self.logger.info(f"if this run is interrupted, continue it with --resume={self.resume_file}")

        def after_epoch(epoch_idx, valid_score):
            self.valid_scores.append([int(epoch_idx), float(valid_score)])
            if saved:
                self.save_resume_state(epoch_idx)
            if callback_fn is not None:
                callback_fn(epoch_idx, valid_score)

        return super().fit(train_data, valid_data, verbose, saved, show_progress, after_epoch)

    def _valid_epoch(self, valid_data, show_progress=False):
        result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self.valid_seconds.append(self.last_eval_seconds)
        self.last_valid_result = result[1]
        return result

    # ------------------------------------------------------------ checkpoints
    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        """What a checkpoint holds (recbole_perpeft.checkpoint): weights, optimiser, progress, RNG, the
        fp16 loss scale; no code.

        Its run config carries the run's identity (recbole_perpeft.run_identity) once the run set it.
        """
        state = model_checkpoint(self.config, self.model, self.optimizer, epoch, self.cur_step,
                                 self.best_valid_score, identity=self.run_identity)
        state["scaler"] = self.scaler.state_dict()
        return state

    # ------------------------------------------------------------- resuming
    @property
    def resume_file(self) -> str:
        """The file holding the state after the last completed epoch (``--resume``)."""
        return resume_file_of(self.saved_model_file)

    def report(self) -> dict[str, Any]:
        """What the trainer adds to the result record; subclasses extend it."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Trainer state beyond RecBole's, for subclasses to extend."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def save_resume_state(self, epoch: int) -> None:
        """Everything needed to continue after ``epoch`` as if never interrupted."""
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        state = self.checkpoint_state(epoch)
        state.update(
            best_checkpoint=self.saved_model_file,
            best_valid_result=(
                None if self.best_valid_result is None
                else {k: float(v) for k, v in self.best_valid_result.items()}
            ),
            train_loss=[[int(e), float(v)] for e, v in self.train_loss_dict.items()],
            train_epoch_seconds=list(self.train_epoch_seconds),
            valid_seconds=list(self.valid_seconds),
            valid_scores=[list(v) for v in self.valid_scores],
            extra=self.extra_state(),
        )
        generator = getattr(self._train_data, "generator", None)
        if isinstance(generator, torch.Generator):
            state["rng"]["train_loader"] = generator.get_state()
        atomic_torch_save(state, self.resume_file)

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        atomic_torch_save(self.checkpoint_state(epoch), saved_model_file)
        if verbose:
            self.logger.info(f"Saving current: {saved_model_file}")

    def load_weights(self, checkpoint_file: str) -> dict[str, Any]:
        """Load model weights from a checkpoint (weights-only) and return the checkpoint.

        Refused with one line: an unreadable file, another model's, or (once the run's data are
        known) one trained on other item ids.
        """
        if self.distributed_loss is not None:
            from recbole_perpeft.distributed import barrier

            barrier()  # rank 0 may still be writing the file the other ranks are about to read
        checkpoint = load_checkpoint(checkpoint_file, map_location=self.device, model_name=self.config["model"])
        self._apply_weights(checkpoint_file, checkpoint)
        return checkpoint

    def _apply_weights(self, checkpoint_file: str, checkpoint: dict[str, Any]) -> None:
        if self.run_identity is not None and self._train_data is not None:
            check_vocabulary(checkpoint_file, checkpoint, self._train_data._dataset,
                             users=is_grouped(self.model))
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))

    def resume_checkpoint(self, resume_file, train_data=None):
        """Continue from a ``.last.pth`` resume file (or, less completely, a best checkpoint).

        The file must belong to this run (same identity, see recbole_perpeft.run_identity):
        another run's file is refused before anything of it is applied or later overwritten.
        """
        resume_file = str(resume_file)
        self._train_data = train_data
        checkpoint = load_checkpoint(resume_file, map_location=self.device, model_name=self.config["model"])
        if self.run_identity is not None:
            check_resume_identity(resume_file, checkpoint, self.run_identity)
        self._apply_weights(resume_file, checkpoint)
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.saved_model_file = checkpoint.get("best_checkpoint", resume_file)
        if checkpoint.get("best_valid_result") is not None:
            self.best_valid_result = checkpoint["best_valid_result"]
        self.train_loss_dict = {epoch: loss for epoch, loss in checkpoint.get("train_loss", [])}
        self.train_epoch_seconds = list(checkpoint.get("train_epoch_seconds", []))
        self.valid_seconds = list(checkpoint.get("valid_seconds", []))
        self.valid_scores = [list(v) for v in checkpoint.get("valid_scores", [])]
        self.load_extra_state(checkpoint.get("extra", {}))
        if "rng" in checkpoint:
            set_rng_states(checkpoint["rng"])
            generator = getattr(train_data, "generator", None)
            if "train_loader" in checkpoint["rng"] and isinstance(generator, torch.Generator):
                generator.set_state(checkpoint["rng"]["train_loader"])
        self.logger.info(
            f"Resumed from {resume_file}: epoch {checkpoint['epoch']} was the last completed, "
            f"training continues at epoch {self.start_epoch}"
        )

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data:
            return None
        if load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            self.load_weights(checkpoint_file)
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        self._eval_history = None
        if self.config["exclude_history"]:
            self._eval_history = getattr(eval_data._dataset, "history", None)
        start = time.perf_counter()
        result = super().evaluate(
            eval_data, load_best_model=False, model_file=None, show_progress=show_progress
        )
        self.last_eval_seconds = time.perf_counter() - start
        return result


    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        history = getattr(self, "_eval_history", None)
        if history is not None:
            # RecBole ranks a sequential model's past items too; the paper's protocol does not.
            rows, items = history.pairs_of(interaction[self.config["USER_ID_FIELD"]])
            rows, items = rows.to(scores.device), items.to(scores.device)
            targets = interaction[self.config["ITEM_ID_FIELD"]].to(scores.device)
            keep = items != targets[rows]
            scores[rows[keep], items[keep]] = -float("inf")
        return interaction, scores, positive_u, positive_i


def _next_train_epoch(cls: type):
    """The ``_train_epoch`` that ``SafeTrainerMixin`` would call through ``super()``."""
    mro = cls.__mro__
    for klass in mro[mro.index(SafeTrainerMixin) + 1:]:
        if "_train_epoch" in vars(klass):
            return vars(klass)["_train_epoch"]
    return None


_SAFE_CLASSES: dict[type, type] = {}


def make_safe(trainer_class: type) -> type:
    """The checkpoint-safe, timed subclass of a RecBole trainer class."""
    if issubclass(trainer_class, SafeTrainerMixin):
        return trainer_class
    if trainer_class not in _SAFE_CLASSES:
        _SAFE_CLASSES[trainer_class] = type(
            f"Safe{trainer_class.__name__}", (SafeTrainerMixin, trainer_class), {}
        )
    return _SAFE_CLASSES[trainer_class]
