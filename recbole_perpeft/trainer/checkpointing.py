"""Checkpoints of the plugin's trainers: the best model, resume files, loading weights.

Checkpoints hold tensors and builtins only (no pickled ``Config``), are written atomically by
rank 0 under a name no parallel run shares, and are loaded with ``torch.load(...,
weights_only=True)`` (:mod:`recbole_perpeft.checkpoint`) for the test step and for resuming; a
resume file restores the run as if never interrupted (weights, optimiser, progress, timings,
random states, the fp16 loss scale). Mixed into a RecBole trainer by
:class:`recbole_perpeft.trainer.safe.SafeTrainerMixin`.
"""

from __future__ import annotations

from typing import Any

import torch

from recbole_perpeft.checkpoint import (
    apply_weights,
    atomic_torch_save,
    load_checkpoint,
    model_checkpoint,
    remove_stale_temporaries,
    resume_file_of,
    set_rng_states,
)
from recbole_perpeft.distributed import is_rank_zero
from recbole_perpeft.errors import StorageError
from recbole_perpeft.run_identity import RESUME_SUFFIX, check_resume_identity


class CheckpointingMixin:
    """Saving, resuming and loading weights; see the module docstring."""

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

    def extra_state(self) -> dict[str, Any]:
        """Trainer state beyond RecBole's, for subclasses to extend."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def save_resume_state(self, epoch: int) -> None:
        """Everything needed to continue after ``epoch`` as if never interrupted."""
        if not is_rank_zero(self.config):
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
        self._write(state, self.resume_file)
        if self.last_resume_file != self.resume_file:
            # Said once the file exists (never before: a run that fails in its first epoch
            # must not point at a file that was never written).
            self.logger.info(f"if this run is interrupted, continue it with --resume={self.resume_file}")
        self.last_resume_file = self.resume_file

    def _write(self, state: dict[str, Any], path: str) -> None:
        """``atomic_torch_save``; a full disk's one line also says what is left to resume from."""
        try:
            atomic_torch_save(state, path)
        except StorageError as error:
            left = (f"the last complete epoch is in {self.last_resume_file}" if self.last_resume_file
                    else "no epoch of this run was saved")
            raise StorageError(f"{error}; {left}") from error

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not is_rank_zero(self.config):
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        self._write(self.checkpoint_state(epoch), saved_model_file)
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
        # The vocabulary is checked once the run is known (its identity set, its data seen).
        known = self.run_identity is not None and self._train_data is not None
        apply_weights(self.model, checkpoint, checkpoint_file, self._train_data._dataset if known else None)

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
        if resume_file.endswith(RESUME_SUFFIX):
            self.last_resume_file = resume_file
        # The interrupted process cannot finish its writes any more: a SIGKILL (or power loss)
        # mid-write left its hidden temporary files behind.
        remove_stale_temporaries(resume_file, self.saved_model_file, self.resume_file)
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
