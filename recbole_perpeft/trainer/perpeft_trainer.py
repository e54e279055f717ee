"""The PerPEFT stage schedule as a RecBole trainer.

Epochs ``0 .. warmup_epochs-1`` train the global model (one PEFT module and projector for all
users). At ``warmup_epochs`` users are grouped (:mod:`recbole_perpeft.model.grouping`), each
group's modules start as copies of the global ones, and personalised training runs; with
``regroup_every > 0`` users are regrouped every that many epochs, each new group starting from
the old group that shares most of its members. Evaluation scores every user with their own
group's item table and reports per-group metrics.
"""

from __future__ import annotations

from pathlib import Path

import torch
from recbole.data.interaction import Interaction
from recbole.evaluator.collector import DataStruct
from recbole.trainer import Trainer
from recbole.utils import calculate_valid_score

from recbole_perpeft.model.grouping import (
    Grouping,
    cluster_users,
    grouping_quality,
    match_groups,
    project_2d,
    read_segments,
)
from recbole_perpeft.trainer.safe import SafeTrainerMixin
from recbole_perpeft.trainer.selection import GroupSelection, per_user_metric


class GroupAwareEvaluator:
    """RecBole's evaluator, plus the same metrics for each group of users and, when asked
    (``row_metric``), every user's own value of one metric."""

    def __init__(self, evaluator, row_metric: str | None = None) -> None:
        self.evaluator = evaluator
        self.row_metric = row_metric
        self.row_groups: torch.Tensor | None = None
        self.group_results: dict[int, dict[str, float]] = {}
        self.row_scores: torch.Tensor | None = None

    def evaluate(self, struct: DataStruct):
        result = self.evaluator.evaluate(struct)
        self.group_results = {}
        self.row_scores = None
        if self.row_metric is not None and "rec.topk" in struct:
            self.row_scores = per_user_metric(self.evaluator, struct, self.row_metric)
        if self.row_groups is not None and "rec.topk" in struct:
            n_rows = len(struct.get("rec.topk"))
            for group in torch.unique(self.row_groups).tolist():
                rows = (self.row_groups == group).nonzero().squeeze(1)
                part = DataStruct()
                for key, value in struct._data_dict.items():
                    is_per_row = isinstance(value, torch.Tensor) and value.dim() and len(value) == n_rows
                    part.set(key, value[rows] if is_per_row else value)
                self.group_results[group] = {k: float(v) for k, v in self.evaluator.evaluate(part).items()}
        return result


class PerPEFTTrainer(SafeTrainerMixin, Trainer):
    """Warm-up → grouping → personalised training, with optional periodic regrouping."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.warmup_epochs = config["warmup_epochs"]
        self.regroup_every = config["regroup_every"] or 0
        self.batch_mode = config["batch_mode"]
        self.grouping_sequence = config["grouping_sequence"]
        self.min_group_size = config["min_group_size"] or 1
        if model.n_groups > 1 and self.warmup_epochs >= self.epochs:
            self.logger.warning(
                f"warmup_epochs={self.warmup_epochs} >= epochs={self.epochs}: users are never grouped, "
                "this run trains the global model only"
            )
        self.model_selection = config["model_selection"]
        self.selection: GroupSelection | None = None
        if self.model_selection == "group" and model.n_groups > 1:
            self.selection = GroupSelection(bigger_is_better=self.valid_metric_bigger,
                                            keep_all_warmup=self.regroup_every > 0)
        self.evaluator = GroupAwareEvaluator(self.evaluator, self.valid_metric if self.selection else None)
        # The best validated epoch of each stage: {"epoch", "score", "result"}.
        self.stage_best: dict[str, dict] = {}
        self.kept_epochs: dict[int, int] = {}
        self.grouping_log: list[dict] = []
        self._grouping_data = None
        self._valid_data = None
        # For the result file and its plots: the last grouping's 2-D view of the users, each
        # group's validation metrics under the global model (taken right after grouping, when
        # every group still holds a copy of the global modules) and at every later validation.
        self.user_projection: dict | None = None
        self.global_group_valid_results: dict[str, dict[str, float]] = {}
        self.group_valid_history: dict[str, dict[str, dict[str, float]]] = {}

    # ---------------------------------------------------------------- schedule
    def _stage_hooks(self, epoch_idx: int) -> None:
        model = self.model
        if model.n_groups == 1:
            return
        if not model.is_personalised() and epoch_idx >= self.warmup_epochs:
            self.personalise(epoch_idx)
        elif (
            model.is_personalised()
            and self.regroup_every > 0
            and epoch_idx > self.warmup_epochs
            and (epoch_idx - self.warmup_epochs) % self.regroup_every == 0
        ):
            self.regroup(epoch_idx)

    @torch.no_grad()
    def user_representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each user's last hidden state over their sequence, under their current group."""
        if self._grouping_data is None:
            raise RuntimeError("grouping needs the validation data: call fit() with valid_data")
        model = self.model
        was_training = model.training
        model.eval()
        users, reps = [], []
        for batch in self._grouping_data:
            interaction = batch[0].to(self.device)
            batch_users = interaction[model.USER_ID]
            item_seq, item_seq_len = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
            if self.grouping_sequence == "train_valid":
                item_seq, item_seq_len = append_item(item_seq, item_seq_len, interaction[model.ITEM_ID])
            reps.append(
                model.user_representation(item_seq, item_seq_len, model.group_of(batch_users)).float().cpu()
            )
            users.append(batch_users.cpu())
        model.train(was_training)
        return torch.cat(users), torch.cat(reps)

    def _cluster(self) -> Grouping:
        users, reps = self.user_representations()
        grouping = cluster_users(users, reps, self.model.n_groups, seed=self.config["seed"],
                                 min_group_size=self.min_group_size)
        if self.distributed_loss is not None:
            # Ranks hold the same weights and data, but make the groups identical by construction.
            from recbole_perpeft.distributed import broadcast_object

            grouping = broadcast_object(grouping)
        order = {int(u): i for i, u in enumerate(users.tolist())}
        rows = torch.tensor([order[int(u)] for u in grouping.users.tolist()], dtype=torch.long)
        self.user_projection = project_2d(reps[rows], grouping.group_of_user, grouping.centroids,
                                          seed=self.config["seed"])
        return grouping

    def personalise(self, epoch_idx: int) -> None:
        """Stage 2 and the start of stage 3: group users, copy the global modules to every group.

        Model selection starts afresh: the tested checkpoint is a personalised epoch (the best
        global epoch is kept in ``stage_best`` for the record).
        """
        grouping = self._cluster()
        for group in range(1, grouping.n_groups):
            self.model.items.copy_group(0, group)
        self.model.set_grouping(grouping)
        self.best_valid_score = -float("inf") if self.valid_metric_bigger else float("inf")
        self.best_valid_result = None
        self.cur_step = 0
        if self.selection is not None:
            self.selection.on_grouping(self.model)
        entry = {"epoch": epoch_idx, "event": "grouped", "sizes": grouping.sizes(), "merged": grouping.merged}
        entry.update(self._quality(grouping))
        self.grouping_log.append(entry)
        self.logger.info(
            f"epoch {epoch_idx}: users grouped into {grouping.n_groups} groups, sizes {grouping.sizes()}"
            + (f" ({grouping.merged} small groups merged)" if grouping.merged else "")
            + (f"; against the known segments: purity {entry['purity']}, NMI {entry['nmi']}" if "nmi" in entry else "")
        )
        if self._valid_data:
            self.evaluate(self._valid_data, load_best_model=False)
            self.global_group_valid_results = {str(g): r for g, r in self.evaluator.group_results.items()}

    def regroup(self, epoch_idx: int) -> None:
        """Recluster; each new group starts from the old group it shares most members with."""
        model = self.model
        old_groups = model.user_groups().clone().cpu()
        grouping = self._cluster()
        source = match_groups(old_groups[grouping.users], grouping.group_of_user,
                              model.formed_groups(), grouping.n_groups)
        snapshot = {g: self._group_state(g) for g in set(source.tolist())}
        for new_group, old_group in enumerate(source.tolist()):
            self._load_group_state(new_group, snapshot[old_group])
        model.set_grouping(grouping)
        if self.selection is not None:
            self.selection.on_grouping(model)
        moved = int((source[grouping.group_of_user] != old_groups[grouping.users]).sum())
        self.grouping_log.append({"epoch": epoch_idx, "event": "regrouped", "sizes": grouping.sizes(),
                                  "moved": moved, **self._quality(grouping)})
        self.logger.info(
            f"epoch {epoch_idx}: regrouped into {grouping.n_groups} groups, sizes {grouping.sizes()}, "
            f"{moved} users moved to another group"
        )

    def _quality(self, grouping: Grouping) -> dict[str, float]:
        """Purity and NMI against the dataset's known user segments (``grouping_truth``), if any."""
        truth_file = self.config["grouping_truth"]
        if not truth_file:
            return {}
        path = Path(self.config["data_path"]) / truth_file
        if not path.is_file():
            self.logger.warning(f"grouping_truth: {path} not found; grouping quality not measured")
            return {}
        segments = read_segments(path)
        raw_ids = self._train_rows._dataset.field2id_token[self._train_rows._dataset.uid_field]
        known = [(g, segments[raw_ids[u]]) for u, g in zip(grouping.users.tolist(), grouping.group_of_user.tolist())
                 if raw_ids[u] in segments]
        if not known:
            return {}
        groups, truth = zip(*known)
        return grouping_quality(torch.tensor(groups), list(truth))

    def _group_state(self, group: int) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.model.items.group_parameters(group)]

    def _load_group_state(self, group: int, state: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for parameter, value in zip(self.model.items.group_parameters(group), state, strict=True):
                parameter.copy_(value)

    # ---------------------------------------------------------------- training
    def _batches(self, train_data, epoch_idx: int) -> list[torch.Tensor]:
        """Row indices of each batch; one-group batches in ``group`` mode once personalised."""
        dataset = train_data._dataset
        generator = torch.Generator().manual_seed(int(self.config["seed"]) * 100_003 + epoch_idx)
        n_rows = len(dataset)
        order = torch.randperm(n_rows, generator=generator)
        size = self.config["train_batch_size"]
        if self.batch_mode == "mixed" or not self.model.is_personalised():
            return list(torch.split(order, size))
        groups = self.model.user_groups().cpu()[dataset.inter_feat[dataset.uid_field][order]]
        batches = []
        for group in torch.unique(groups).tolist():
            batches.extend(torch.split(order[groups == group], size))
        shuffle = torch.randperm(len(batches), generator=generator)
        return [batches[i] for i in shuffle.tolist()]

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self._stage_hooks(epoch_idx)
        return super()._train_epoch(
            _RowBatches(train_data._dataset, self._batches(train_data, epoch_idx)),
            epoch_idx, loss_func, show_progress,
        )

    # -------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data:
            return None
        if load_best_model:
            # Load before the row groups are read: the checkpoint holds its own grouping.
            self.load_weights(model_file or self.saved_model_file)
        users = eval_data._dataset.inter_feat[eval_data._dataset.uid_field]
        self.evaluator.row_groups = None
        if self.model.is_personalised():
            # Rows reach the collector in the loader's order (it does not shuffle eval data).
            self.evaluator.row_groups = self.model.user_groups().cpu()[users]
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)

    def _valid_epoch(self, valid_data, show_progress=False):
        score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
        epoch = self._current_epoch
        personalised = self.model.is_personalised()
        if personalised:
            self.group_valid_history[str(epoch)] = {str(g): r for g, r in self.evaluator.group_results.items()}
        stage = "personalised" if personalised else "global"
        best = self.stage_best.get(stage)
        if best is None or (score > best["score"] if self.valid_metric_bigger else score < best["score"]):
            self.stage_best[stage] = {"epoch": int(epoch), "score": float(score),
                                      "result": {k: float(v) for k, v in result.items()}}
        if self.selection is not None:
            users = valid_data._dataset.inter_feat[valid_data._dataset.uid_field]
            self.selection.observe(epoch, users, self.evaluator.row_scores, self.model)
        return score, result

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        # Validation rows hold each user's training items; with ``train_valid`` the row's target
        # (the validation item) is appended (see user_representations).
        self._grouping_data = valid_data
        self._valid_data = valid_data
        self._train_rows = train_data
        result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        # (also after a resume of a run that was stopped between its last epoch and this step)
        if (self.selection is not None and self.model.is_personalised() and valid_data
                and not bool(self.model.serving_per_group)):
            result = self._serve_groups_from_kept_states(valid_data, saved, show_progress)
        return result

    def _serve_groups_from_kept_states(self, valid_data, saved: bool, show_progress: bool):
        """Per-group selection: assemble the served model, validate it, make it the best checkpoint."""
        self.kept_epochs = self.selection.assemble(self.model)
        self.logger.info(
            "per-group model selection, epoch kept for each group: "
            + ", ".join(f"group {g}: {e}" for g, e in sorted(self.kept_epochs.items()))
        )
        result = self.evaluate(valid_data, load_best_model=False, show_progress=show_progress)
        score = calculate_valid_score(result, self.valid_metric)
        self.best_valid_score, self.best_valid_result = score, result
        self.stage_best["served"] = {"epoch": None, "score": float(score),
                                     "result": {k: float(v) for k, v in result.items()}}
        self.logger.info(f"served model (each group at its own best epoch): valid score {score:.6f}")
        if saved:
            self._save_checkpoint(self.epochs - 1)
            self.save_resume_state(self.epochs - 1)
        return score, result

    def extra_state(self) -> dict:
        state = {"grouping_log": self.grouping_log, "user_projection": self.user_projection,
                 "global_group_valid_results": self.global_group_valid_results,
                 "group_valid_history": self.group_valid_history, "stage_best": self.stage_best,
                 "kept_epochs": {str(g): e for g, e in self.kept_epochs.items()}}
        if self.selection is not None:
            state["selection"] = self.selection.state()
        return state

    def load_extra_state(self, state: dict) -> None:
        self.grouping_log = list(state.get("grouping_log", []))
        self.user_projection = state.get("user_projection")
        self.global_group_valid_results = dict(state.get("global_group_valid_results", {}))
        self.group_valid_history = dict(state.get("group_valid_history", {}))
        self.stage_best = dict(state.get("stage_best", {}))
        self.kept_epochs = {int(g): int(e) for g, e in state.get("kept_epochs", {}).items()}
        if self.selection is not None and "selection" in state:
            self.selection.load_state(state["selection"])

    def best_group_valid_results(self) -> dict[str, dict[str, float]]:
        """Per-group validation metrics at the best validated epoch after grouping (first of ties)."""
        best_epoch, best_score = None, None
        for epoch, score in self.valid_scores:
            if str(epoch) not in self.group_valid_history:
                continue
            better = best_score is None or (score > best_score if self.valid_metric_bigger else score < best_score)
            if better:
                best_epoch, best_score = str(epoch), score
        return self.group_valid_history.get(best_epoch, {}) if best_epoch is not None else {}

    def report(self) -> dict:
        return {
            "group_test_results": {str(g): r for g, r in self.evaluator.group_results.items()},
            "grouping_log": self.grouping_log,
            "user_projection": self.user_projection,
            "global_group_valid_results": self.global_group_valid_results,
            "best_group_valid_results": self.best_group_valid_results(),
            "model_selection": self.selection_report(),
        }

    def selection_report(self) -> dict:
        """Which model was tested, and each stage's best validation (did personalisation help?)."""
        report = {
            "mode": self.model_selection if self.model.n_groups > 1 else "best epoch",
            "best_global": self.stage_best.get("global"),
            "best_personalised": self.stage_best.get("personalised"),
        }
        if self.selection is not None:
            report["served"] = self.stage_best.get("served")
            report["groups"] = self.selection.report(self.kept_epochs, self.warmup_epochs)
        return report


def append_item(item_seq: torch.Tensor, item_seq_len: torch.Tensor, items: torch.Tensor):
    """Each row's sequence with ``items[row]`` appended; a full row drops its oldest item.

    Applied to the validation rows, this gives the test rows' input sequences (training items
    plus the validation item), as RecBole builds them.
    """
    full = item_seq_len >= item_seq.size(1)
    extended = torch.where(full.unsqueeze(1), item_seq.roll(-1, dims=1), item_seq.clone())
    position = torch.where(full, item_seq_len - 1, item_seq_len)
    extended[torch.arange(len(item_seq), device=item_seq.device), position] = items
    return extended, position + 1


class _RowBatches:
    """An iterable of ``Interaction`` batches over given row indices (RecBole-loader shaped)."""

    def __init__(self, dataset, batches: list[torch.Tensor]) -> None:
        self.dataset = dataset
        self.batches = batches
        self.shuffle = False

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for rows in self.batches:
            batch = self.dataset[rows]
            yield batch if isinstance(batch, Interaction) else Interaction(batch)


__all__ = ["PerPEFTTrainer"]
