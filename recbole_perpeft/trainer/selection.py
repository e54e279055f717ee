"""Model selection for PerPEFT: which epoch's state serves which users.

Two modes (``model_selection``):

* ``stage``: the tested model is the best epoch of the *personalised* stage (a warm-up epoch,
  i.e. the global model, can never be reported as PerPEFT); the best global epoch's validation
  result is kept beside it, so one run says whether personalisation helped.
* ``group``: each group's users are served by the state of the epoch with that group's own best
  validation score, warm-up (global) epochs included: the group's PEFT module and projector with
  the shared backbone and ID embeddings as they were at that epoch. A group that
  personalisation never helped keeps the global model. On validation the result is, by
  construction, at least the best global epoch's; the test split says whether it generalises.

Every validation records each user's score on the validation metric, so a group's score at a
warm-up epoch (before groups existed) is computed afterwards from the users it received. The
states of warm-up epochs are kept until grouping (and, with regrouping, for the whole run),
then only those some group still needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from recbole_perpeft.config_schema import MODEL_SELECTION_MODES as MODES  # noqa: F401 (the modes, re-exported)


def per_user_metric(evaluator, struct, metric: str) -> torch.Tensor:
    """``[n_rows]``: each evaluated user's value of a top-k metric (``"ndcg@20"``) from
    RecBole's collected data (its evaluator averages exactly these)."""
    name, _, k = metric.lower().partition("@")
    metric_object = evaluator.metric_class.get(name)
    if metric_object is None or not k or not hasattr(metric_object, "metric_info"):
        raise ValueError(f"per-group model selection needs a top-k valid_metric (e.g. NDCG@20), got '{metric}'")
    pos_index, pos_len = metric_object.used_info(struct)
    values = metric_object.metric_info(pos_index, pos_len)
    return torch.as_tensor(values[:, int(k) - 1], dtype=torch.float64)


@dataclass
class KeptState:
    """A state that may serve a group: the shared backbone and one group's module parameters."""

    epoch: int
    backbone: dict[str, torch.Tensor]
    modules: list[torch.Tensor]

    def as_plain(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "backbone": self.backbone, "modules": self.modules}

    @classmethod
    def from_plain(cls, value: dict[str, Any]) -> KeptState:
        return cls(int(value["epoch"]), dict(value["backbone"]), list(value["modules"]))


@dataclass
class GroupSelection:
    """Per-group model selection (``model_selection: group``); see the module docstring.

    ``scores[epoch]`` is every validation row's metric value; ``row_users`` says whose row it
    is (RecBole's validation loader keeps its order across epochs).
    """

    bigger_is_better: bool = True
    keep_all_warmup: bool = False
    row_users: torch.Tensor | None = None
    scores: dict[int, torch.Tensor] = field(default_factory=dict)
    warmup: dict[int, KeptState] = field(default_factory=dict)
    best: dict[int, KeptState] = field(default_factory=dict)
    best_score: dict[int, float] = field(default_factory=dict)
    global_score: dict[int, float] = field(default_factory=dict)
    personalised_score: dict[int, float] = field(default_factory=dict)

    def _better(self, score: float, than: float | None) -> bool:
        return than is None or (score > than if self.bigger_is_better else score < than)

    @staticmethod
    def _mean(row_scores: torch.Tensor, rows: torch.Tensor) -> float:
        return float(row_scores[rows].mean()) if len(rows) else float("nan")

    def observe(self, epoch: int, row_users: torch.Tensor, row_scores: torch.Tensor, model,
                frozen: set[int] | frozenset[int] = frozenset()) -> None:
        """Record a validation: keep the warm-up state, or each improved group's state.

        ``frozen`` groups (stopped by ``schedule: auto``) keep the state they stopped with."""
        self.row_users = row_users.cpu()
        backbone = model.backbone_state()
        if not model.is_personalised():
            self.scores[int(epoch)] = row_scores.cpu()
            modules = [p.detach().clone() for p in model.items.group_parameters(0)]
            self.warmup[int(epoch)] = KeptState(int(epoch), backbone, modules)
            return
        for group, rows in self._rows_of_groups(model).items():
            if group in frozen:
                continue
            score = self._mean(row_scores.cpu(), rows)
            if score == score and self._better(score, self.best_score.get(group)):
                modules = [p.detach().clone() for p in model.items.group_parameters(group)]
                self.best[group] = KeptState(int(epoch), backbone, modules)
                self.best_score[group] = score
            previous = self.personalised_score.get(group)
            if score == score and self._better(score, previous):
                self.personalised_score[group] = score

    def _rows_of_groups(self, model) -> dict[int, torch.Tensor]:
        row_groups = model.user_groups().cpu()[self.row_users]
        return {g: (row_groups == g).nonzero().squeeze(1) for g in range(model.formed_groups())}

    def on_grouping(self, model) -> None:
        """Users were (re)grouped: each group starts from its best warm-up epoch, scored on
        its own users; states kept from an earlier grouping belong to other users and go."""
        self.best, self.best_score, self.global_score, self.personalised_score = {}, {}, {}, {}
        for group, rows in self._rows_of_groups(model).items():
            for epoch in sorted(self.warmup):
                score = self._mean(self.scores[epoch], rows)
                if score == score and self._better(score, self.best_score.get(group)):
                    self.best[group], self.best_score[group] = self.warmup[epoch], score
            if group in self.best_score:
                self.global_score[group] = self.best_score[group]
        if not self.keep_all_warmup:  # no later regrouping will look at the others
            needed = {state.epoch for state in self.best.values()}
            self.warmup = {e: s for e, s in self.warmup.items() if e in needed}
            self.scores = {}

    def assemble(self, model) -> dict[int, int]:
        """Serve every group with its kept state; returns each group's epoch."""
        kept = {}
        for group in range(model.formed_groups()):
            state = self.best.get(group)
            if state is None:
                continue
            model.serve_group(group, state.backbone, state.modules)
            kept[group] = state.epoch
        return kept

    def report(self, kept: dict[int, int], warmup_epochs: int) -> dict[str, dict[str, Any]]:
        return {
            str(group): {
                "epoch_kept": epoch,
                "stage_kept": "global" if epoch < warmup_epochs else "personalised",
                "best_global_valid": self.global_score.get(group),
                "best_personalised_valid": self.personalised_score.get(group),
            }
            for group, epoch in kept.items()
        }

    # -- resume ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "row_users": self.row_users,
            "scores": {str(e): v for e, v in self.scores.items()},
            "warmup": {str(e): s.as_plain() for e, s in self.warmup.items()},
            "best": {str(g): s.as_plain() for g, s in self.best.items()},
            "best_score": {str(g): v for g, v in self.best_score.items()},
            "global_score": {str(g): v for g, v in self.global_score.items()},
            "personalised_score": {str(g): v for g, v in self.personalised_score.items()},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.row_users = state.get("row_users")
        self.scores = {int(e): v for e, v in state.get("scores", {}).items()}
        self.warmup = {int(e): KeptState.from_plain(s) for e, s in state.get("warmup", {}).items()}
        self.best = {int(g): KeptState.from_plain(s) for g, s in state.get("best", {}).items()}
        for name in ("best_score", "global_score", "personalised_score"):
            setattr(self, name, {int(g): float(v) for g, v in state.get(name, {}).items()})
