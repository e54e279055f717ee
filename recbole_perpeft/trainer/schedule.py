"""``schedule: auto``: a stage schedule that follows validation instead of fixed epoch counts.

* **Global stage.** Trains while the global validation score improves: it ends once the score
  has not improved for ``patience`` validations, or at ``warmup_epochs`` (then the most global
  epochs a run may take). Users are grouped from the state of the *best* global epoch, not the
  last one.
* **Personalised stage.** Each group trains while its own users' validation score improves
  (same ``patience``, counted from its score under the global state it started from). A group
  that stops keeps its modules unchanged from then on and its batches are skipped, so epochs get
  cheaper as groups finish.
* **End.** The run ends when every group has stopped (with one group, the global model: when it
  stops), or at ``epochs``, which is a cap.

This module holds the bookkeeping only (scores in, decisions out); the trainer
(:class:`recbole_perpeft.trainer.PerPEFTTrainer`) acts on the decisions. Everything here is plain
numbers, so it goes into resume files as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Patience:
    """The best score seen, its epoch, and validations since it improved."""

    best: float | None = None
    best_epoch: int | None = None
    since: int = 0

    def observe(self, epoch: int, score: float, bigger_is_better: bool) -> bool:
        """Record a validation; True when it improved on the best."""
        improved = score == score and (
            self.best is None or (score > self.best if bigger_is_better else score < self.best)
        )
        if improved:
            self.best, self.best_epoch, self.since = float(score), int(epoch), 0
        else:
            self.since += 1
        return improved


@dataclass
class AutoSchedule:
    """Decisions of ``schedule: auto`` (see the module docstring)."""

    patience: int
    bigger_is_better: bool = True
    global_stage: Patience = field(default_factory=Patience)
    groups: dict[int, Patience] = field(default_factory=dict)
    stopped: dict[int, int] = field(default_factory=dict)  # group -> epoch it stopped after
    finished_at: int | None = None
    # What happened and why, for the log and the result file.
    events: list[dict[str, Any]] = field(default_factory=list)

    # ------------------------------------------------------------------ global stage
    def observe_global(self, epoch: int, score: float) -> bool:
        """A global-stage validation; True when it is the best global epoch so far."""
        return self.global_stage.observe(epoch, score, self.bigger_is_better)

    @property
    def global_exhausted(self) -> bool:
        """The global score has not improved for ``patience`` validations."""
        return self.global_stage.since >= self.patience

    def finish_global_only(self, epoch: int) -> None:
        """One group only: the global model's patience ran out, so the run ends."""
        self.finished_at = int(epoch)
        self.events.append({"epoch": int(epoch), "event": "stopped", "group": 0,
                            "best_epoch": self.global_stage.best_epoch, "best_score": self.global_stage.best})

    # ------------------------------------------------------------ personalised stage
    def start_groups(self, epoch: int, baseline: dict[int, float]) -> None:
        """Users were (re)grouped before ``epoch``; each group's patience counts from its
        ``baseline`` score (its users' validation under the state the groups start from)."""
        self.groups = {}
        self.stopped = {}
        for group, score in baseline.items():
            self.groups[int(group)] = Patience(best=float(score), best_epoch=int(epoch) - 1)

    def observe_groups(self, epoch: int, scores: dict[int, float]) -> list[int]:
        """A personalised validation: the groups that stop now (their patience ran out)."""
        newly_stopped = []
        for group, score in sorted(scores.items()):
            if group in self.stopped:
                continue
            patience = self.groups.setdefault(int(group), Patience())
            patience.observe(epoch, score, self.bigger_is_better)
            if patience.since >= self.patience:
                self.stopped[int(group)] = int(epoch)
                newly_stopped.append(int(group))
                self.events.append({"epoch": int(epoch), "event": "stopped", "group": int(group),
                                    "best_epoch": patience.best_epoch, "best_score": patience.best})
        if self.groups and len(self.stopped) == len(self.groups) and self.finished_at is None:
            self.finished_at = int(epoch)
        return newly_stopped

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def is_stopped(self, group: int) -> bool:
        return int(group) in self.stopped

    # ------------------------------------------------------------------------ resume
    def state(self) -> dict[str, Any]:
        def plain(p: Patience) -> dict[str, Any]:
            return {"best": p.best, "best_epoch": p.best_epoch, "since": p.since}

        return {
            "global_stage": plain(self.global_stage),
            "groups": {str(g): plain(p) for g, p in self.groups.items()},
            "stopped": {str(g): e for g, e in self.stopped.items()},
            "finished_at": self.finished_at,
            "events": list(self.events),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.global_stage = Patience(**state["global_stage"])
        self.groups = {int(g): Patience(**p) for g, p in state.get("groups", {}).items()}
        self.stopped = {int(g): int(e) for g, e in state.get("stopped", {}).items()}
        self.finished_at = state.get("finished_at")
        self.events = list(state.get("events", []))
