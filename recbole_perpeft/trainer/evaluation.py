"""Evaluation in the plugin's trainers: timed, on the best checkpoint, with history masking.

With ``exclude_history`` a user's own past items are not ranked (the rule of
:mod:`recbole_perpeft.seen_items`, shared with ``recommend``); every validation's seconds
and result are kept for the result record. Mixed into a RecBole trainer by
:class:`recbole_perpeft.trainer.safe.SafeTrainerMixin`.
"""

from __future__ import annotations

import time

import torch

from recbole_perpeft.seen_items import mask_seen_items


class EvaluationMixin:
    """Timed evaluation with the user's history masked; see the module docstring."""

    #: The evaluated split's user -> items table, while ``exclude_history`` masks it.
    _eval_history = None

    def _valid_epoch(self, valid_data, show_progress=False):
        result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self.valid_seconds.append(self.last_eval_seconds)
        self.last_valid_result = result[1]
        return result

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
        if self._eval_history is not None:
            rows, items = self._eval_history.pairs_of(interaction[self.config["USER_ID_FIELD"]])
            mask_seen_items(scores, rows, items, targets=interaction[self.config["ITEM_ID_FIELD"]])
        return interaction, scores, positive_u, positive_i
