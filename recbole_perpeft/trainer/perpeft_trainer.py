"""The PerPEFT stage schedule as a RecBole trainer.

The global model (one PEFT module and projector for all users) trains first; then users are
grouped (:mod:`recbole_perpeft.model.grouping`), each group's modules start as copies of the
global ones, and personalised training runs. When the stages change is the ``schedule``:

* ``auto`` (default, :mod:`recbole_perpeft.trainer.schedule`): the global stage runs while its
  validation improves (``patience``; at most ``warmup_epochs``), users are grouped from the best
  global state, each group trains while its own validation improves and then stops (its batches
  skipped), and the run ends when every group has stopped or at ``epochs``;
* ``fixed``: epochs ``0 .. warmup_epochs-1`` are global, grouping happens at ``warmup_epochs``,
  and all ``epochs`` run (RecBole's ``stopping_step`` aside).

With ``regroup_every > 0`` users are regrouped every that many personalised epochs, each new
group starting from the old group that shares most of its members. Evaluation scores every
user with their own group's item table and reports per-group metrics.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch
from recbole.data.interaction import Interaction
from recbole.evaluator.collector import DataStruct
from recbole.trainer import Trainer
from recbole.utils import calculate_valid_score, dict2str

from recbole_perpeft.errors import DataWarning
from recbole_perpeft.model.grouping import (
    Grouping,
    cluster_users,
    grouping_quality,
    match_groups,
    project_2d,
    read_segments,
)
from recbole_perpeft.trainer.safe import SafeTrainerMixin
from recbole_perpeft.trainer.schedule import AutoSchedule
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


class _StagedLoop(Trainer):
    """RecBole's epoch loop, or under ``schedule: auto`` one that ends when the schedule says so.

    RecBole's loop can only end on its own early stopping (one score, ``stopping_step``), which
    cannot express "every group has stopped". Placed after :class:`SafeTrainerMixin` in the MRO,
    so checkpoints, resume files and timing wrap either loop alike.
    """

    auto: AutoSchedule | None = None

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        if self.auto is None or not valid_data:
            return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        self.eval_collector.data_collect(train_data)
        for epoch_idx in range(self.start_epoch, self.epochs):
            if self.auto.finished:
                break
            start = time.time()
            train_loss = self._train_epoch(train_data, epoch_idx, show_progress=show_progress)
            self.train_loss_dict[epoch_idx] = sum(train_loss) if isinstance(train_loss, tuple) else train_loss
            if verbose:
                self.logger.info(self._generate_train_loss_output(epoch_idx, start, time.time(), train_loss))
            start = time.time()
            valid_score, valid_result = self._valid_epoch(valid_data, show_progress=show_progress)
            # ties count as better, as in RecBole's early_stopping
            if self.valid_metric_bigger:
                improved = self.best_valid_result is None or valid_score >= self.best_valid_score
            else:
                improved = self.best_valid_result is None or valid_score <= self.best_valid_score
            if improved:
                self.best_valid_score, self.best_valid_result, self.cur_step = valid_score, valid_result, 0
                if saved:
                    self._save_checkpoint(epoch_idx, verbose=verbose)
            else:
                self.cur_step += 1
            if verbose:
                self.logger.info(f"epoch {epoch_idx} evaluating [time: {time.time() - start:.2f}s, "
                                 f"valid_score: {valid_score:f}]")
                self.logger.info("valid result: \n" + dict2str(valid_result))
            if callback_fn:
                callback_fn(epoch_idx, valid_score)
        return self.best_valid_score, self.best_valid_result


class PerPEFTTrainer(SafeTrainerMixin, _StagedLoop):
    """Warm-up → grouping → personalised training, with optional periodic regrouping."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.warmup_epochs = config["warmup_epochs"]
        # schedule: auto decides when users are grouped and when each group (and the run) stops.
        self._best_global_state: dict | None = None
        self.regroup_every = config["regroup_every"] or 0
        self.batch_mode = config["batch_mode"]
        self.grouping_sequence = config["grouping_sequence"]
        self.min_group_size = config["min_group_size"] or 1
        self.auto = AutoSchedule(config["patience"], self.valid_metric_bigger) if config["schedule"] == "auto" else None
        # Under schedule: auto the global stage may also end earlier, at its patience.
        global_stage_cap = self.warmup_epochs
        if self.auto is not None:
            global_stage_cap = min(global_stage_cap, config["patience"] + 1)
        if model.n_groups > 1 and global_stage_cap >= self.epochs:
            message = (f"warmup_epochs={self.warmup_epochs} >= epochs={self.epochs}: users are never grouped, "
                       "this run trains the global model only")
            self.logger.warning(message)
            # Also on stderr (one line from the CLI): the log alone goes unread, and the result
            # would pass for a personalised one.
            warnings.warn(message, DataWarning, stacklevel=2)
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
        if not model.is_personalised() and self._global_stage_over(epoch_idx):
            self.personalise(epoch_idx)
        elif (
            model.is_personalised()
            and self.regroup_every > 0
            and epoch_idx > self.grouped_at
            and (epoch_idx - self.grouped_at) % self.regroup_every == 0
        ):
            self.regroup(epoch_idx)

    def _global_stage_over(self, epoch_idx: int) -> bool:
        if epoch_idx >= self.warmup_epochs:
            return True
        return self.auto is not None and self.auto.global_exhausted

    @property
    def grouped_at(self) -> int:
        """The epoch users were first grouped at (``warmup_epochs`` until then)."""
        for entry in self.grouping_log:
            if entry["event"] == "grouped":
                return int(entry["epoch"])
        return self.warmup_epochs

    def _global_state(self) -> dict:
        """The trainable state of the global stage: the shared backbone and group 0's modules."""
        return {"backbone": self.model.backbone_state(), "modules": self._group_state(0)}

    def _restore_best_global(self) -> str:
        """Load the best global epoch's state (``schedule: auto``); says why the stage ended."""
        best = self.auto.global_stage
        why = (f"the global score had not improved for {self.auto.patience} epochs"
               if self.auto.global_exhausted
               else f"the global stage reached its cap (warmup_epochs={self.warmup_epochs})")
        if self._best_global_state is not None:
            self.model.load_state_dict(self._best_global_state["backbone"], strict=False)
            self._load_group_state(0, self._best_global_state["modules"])
        self._best_global_state = None  # a group's state from now on, never needed again
        return f"{why}; grouped from the best global epoch {best.best_epoch} (valid {best.best:.4f})"

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
        if self.auto is not None:
            reason = self._restore_best_global()
        else:
            reason = f"warmup_epochs={self.warmup_epochs}"
        grouping = self._cluster()
        for group in range(1, grouping.n_groups):
            self.model.items.copy_group(0, group)
        self.model.set_grouping(grouping)
        self.best_valid_score = -float("inf") if self.valid_metric_bigger else float("inf")
        self.best_valid_result = None
        self.cur_step = 0
        if self.selection is not None:
            self.selection.on_grouping(self.model)
        entry = {"epoch": epoch_idx, "event": "grouped", "sizes": grouping.sizes(), "merged": grouping.merged,
                 "reason": reason}
        entry.update(self._quality(grouping))
        self.grouping_log.append(entry)
        self.logger.info(
            f"epoch {epoch_idx}: users grouped into {grouping.n_groups} groups ({reason}), sizes {grouping.sizes()}"
            + (f" ({grouping.merged} small groups merged)" if grouping.merged else "")
            + (f"; against the known segments: purity {entry['purity']}, NMI {entry['nmi']}" if "nmi" in entry else "")
        )
        if self._valid_data:
            self.evaluate(self._valid_data, load_best_model=False)
            self.global_group_valid_results = {str(g): r for g, r in self.evaluator.group_results.items()}
            if self.auto is not None:
                self.auto.start_groups(epoch_idx, self._group_scores())

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
        if self.auto is not None and self._valid_data:
            # new groups hold other users: each starts its patience afresh
            self.evaluate(self._valid_data, load_best_model=False)
            self.auto.start_groups(epoch_idx, self._group_scores())
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
        if not self.model.is_personalised():
            return list(torch.split(order, size))
        groups = self.model.user_groups().cpu()[dataset.inter_feat[dataset.uid_field][order]]
        stopped = sorted(self.auto.stopped) if self.auto is not None else []
        if stopped:  # a stopped group's modules stay as they are: its rows train nothing any more
            active = ~torch.isin(groups, torch.tensor(stopped, dtype=groups.dtype))
            order, groups = order[active], groups[active]
        if self.batch_mode == "mixed":
            return list(torch.split(order, size))
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
            frozen = set(self.auto.stopped) if self.auto is not None else set()
            self.selection.observe(epoch, users, self.evaluator.row_scores, self.model, frozen=frozen)
        if self.auto is not None:
            self._follow_validation(int(epoch), float(score), personalised)
        return score, result

    def _group_scores(self) -> dict[int, float]:
        """Each group's validation metric at the last evaluation."""
        return {int(g): float(r[self.valid_metric]) for g, r in self.evaluator.group_results.items()}

    def _follow_validation(self, epoch: int, score: float, personalised: bool) -> None:
        """``schedule: auto``: keep the best global state, stop groups, end the run."""
        auto = self.auto
        if not personalised:
            if auto.observe_global(epoch, score) and self.model.n_groups > 1:
                self._best_global_state = self._global_state()
            if self.model.n_groups == 1 and auto.global_exhausted:
                auto.finish_global_only(epoch)
                self.logger.info(
                    f"epoch {epoch}: training stopped: the validation score had not improved for "
                    f"{auto.patience} epochs (best epoch {auto.global_stage.best_epoch}, "
                    f"valid {auto.global_stage.best:.4f})"
                )
            elif self.model.n_groups > 1 and auto.global_exhausted:
                self.logger.info(f"epoch {epoch}: the global stage ends (no gain for {auto.patience} epochs); "
                                 "users are grouped before the next epoch")
            return
        for group in auto.observe_groups(epoch, self._group_scores()):
            patience = auto.groups[group]
            self.logger.info(
                f"epoch {epoch}: group {group} stopped: its validation score had not improved for "
                f"{auto.patience} epochs (best epoch {patience.best_epoch}, valid {patience.best:.4f}); "
                f"{len(auto.stopped)}/{len(auto.groups)} groups stopped"
            )
        if auto.finished:
            self.logger.info(f"epoch {epoch}: every group has stopped: training ends")

    def schedule_report(self) -> dict:
        """When users were grouped, when each group stopped, and what the epoch cap would have cost."""
        epochs_run = len(self.train_epoch_seconds)
        report = {"mode": "auto" if self.auto is not None else "fixed", "epochs_cap": self.epochs,
                  "epochs_run": epochs_run, "train_seconds": float(sum(self.train_epoch_seconds)),
                  "grouped": [e for e in self.grouping_log if e["event"] == "grouped"]}
        if self.auto is None:
            return report
        report["patience"] = self.auto.patience
        report["stops"] = self.auto.events
        first_stop = min(self.auto.stopped.values(), default=None)
        full = [s for epoch, s in enumerate(self.train_epoch_seconds) if first_stop is None or epoch <= first_stop]
        if full and epochs_run:
            # every epoch of the cap at the cost of an epoch with every group still training
            estimate = self.epochs * sum(full) / len(full)
            report["cap_estimated_train_seconds"] = float(estimate)
            report["train_seconds_saved_estimate"] = float(max(estimate - report["train_seconds"], 0.0))
        return report

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        # Validation rows hold each user's training items; with ``train_valid`` the row's target
        # (the validation item) is appended (see user_representations).
        self._grouping_data = valid_data
        self._valid_data = valid_data
        self._train_rows = train_data
        if self.auto is not None and not valid_data:
            self.logger.warning("schedule: auto follows validation, and this run has none: fixed schedule used")
            self.auto = None
        result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        if self.auto is not None:
            schedule = self.schedule_report()
            if "cap_estimated_train_seconds" in schedule:
                self.logger.info(
                    f"schedule: auto trained {schedule['epochs_run']} of at most {self.epochs} epochs in "
                    f"{schedule['train_seconds']:.1f} s; the full cap would have taken about "
                    f"{schedule['cap_estimated_train_seconds']:.1f} s"
                )
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
        if self.auto is not None:
            state["schedule"] = self.auto.state()
            state["best_global_state"] = self._best_global_state
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
        if self.auto is not None and "schedule" in state:
            self.auto.load_state(state["schedule"])
            self._best_global_state = state.get("best_global_state")

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
            "schedule": self.schedule_report(),
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
            report["groups"] = self.selection.report(self.kept_epochs, self.grouped_at)
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
