"""Checkpoint-safe, timed RecBole trainers.

``make_safe(TrainerClass)`` returns a subclass of any RecBole trainer that mixes in, one
module per concern:

* :mod:`~recbole_perpeft.trainer.checkpointing`: checkpoints holding tensors and builtins only,
  written atomically under a name no parallel run shares, loaded weights-only for the test step
  and for resuming;
* :mod:`~recbole_perpeft.trainer.epoch_loop`: the training epoch, timed, in mixed precision
  (``mixed_precision``) and under DDP;
* :mod:`~recbole_perpeft.trainer.evaluation`: timed evaluation that masks a user's own history.
"""

from __future__ import annotations

import os
from typing import Any

from recbole_perpeft.checkpoint import unique_checkpoint_name
from recbole_perpeft.trainer.checkpointing import CheckpointingMixin
from recbole_perpeft.trainer.epoch_loop import EpochLoopMixin
from recbole_perpeft.trainer.evaluation import EvaluationMixin


class SafeTrainerMixin(CheckpointingMixin, EpochLoopMixin, EvaluationMixin):
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
        self._init_epoch_loop(config)
        # Set by the run (recbole_perpeft.run_identity.run_identity): written into every checkpoint,
        # checked when resuming and when loading weights.
        self.run_identity: dict[str, str] | None = None
        # The newest resume file known to be complete on disk (written by this run, or the one it
        # resumed from): what an interrupted or failed run tells the user to continue from.
        self.last_resume_file: str | None = None
        if distributed:
            from recbole_perpeft.distributed import DistributedLoss, broadcast_object

            # Only rank 0 writes checkpoints; every rank reloads rank 0's file for the test.
            self.saved_model_file = broadcast_object(self.saved_model_file)
            self.distributed_loss = DistributedLoss(self.model)

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        self._train_data = train_data
        if self.start_epoch >= self.epochs or self.cur_step > self.stopping_step:
            # A resumed run that had already finished (or stopped early): nothing to train, and
            # RecBole would overwrite the best checkpoint with the last weights here.
            self.logger.info("training had already finished before the resume")
            return self.best_valid_score, self.best_valid_result

        def after_epoch(epoch_idx, valid_score):
            self.valid_scores.append([int(epoch_idx), float(valid_score)])
            if saved:
                self.save_resume_state(epoch_idx)
            if callback_fn is not None:
                callback_fn(epoch_idx, valid_score)

        return super().fit(train_data, valid_data, verbose, saved, show_progress, after_epoch)

    def report(self) -> dict[str, Any]:
        """What the trainer adds to the result record; subclasses extend it."""
        return {}


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
