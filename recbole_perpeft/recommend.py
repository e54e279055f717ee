"""Recommendations from a trained model: top-K raw item ids and scores for a history.

    from recbole_perpeft.recommend import Recommender

    recommender = Recommender.from_checkpoint("saved/PerPEFT-....pth")
    result = recommender.recommend(["i0042", "i0007", "i1913"], k=10)
    result.items, result.scores, result.group

Works for PerPEFT and for every sequential model (the plugin's or RecBole's: SASRec, GRU4Rec,
BERT4Rec, ...). The checkpoint is loaded weights-only; it carries the run's own settings
(``run_config``), from which the dataset (for the raw <-> internal item ids and the item
content) and the model are rebuilt. The dataset's files must therefore be where the run found
them, or be pointed to with ``data_path=...``.

PerPEFT routes each history to a user group. A known user (``user_id`` seen in training) keeps
the group the model assigned. A new user goes to the group that claims them most closely: the
history is encoded under every group's item table, and the group whose centroid is nearest to
its own view of the user wins. The centroids live in the space of the backbone's user
representation, so each group judges the user with its own modules, as it judged its members
when the groups were (re)formed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from recbole.data import data_preparation
from recbole.data.interaction import Interaction
from recbole.utils import ModelType, init_logger

from recbole_perpeft.compat import safe_load
from recbole_perpeft.errors import ConfigError, PerPEFTError
from recbole_perpeft.quick_start import build_config, create_dataset, seed_everything
from recbole_perpeft.utils import get_model


class UnknownItemError(PerPEFTError, KeyError):
    """A history names items the model's dataset does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class Recommendation:
    """Top-K of one history: raw item ids, their scores (descending) and the user's group."""

    items: list[str]
    scores: list[float]
    group: int
    titles: list[str] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"items": self.items, "scores": self.scores, "group": self.group}
        if self.titles is not None:
            out["titles"] = self.titles
        return out


class Recommender:
    """A trained model, ready to rank the catalogue for histories of raw item ids."""

    def __init__(self, model: torch.nn.Module, dataset: Any, config: Any) -> None:
        if config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
            raise ConfigError(
                f"{config['model']} is not a sequential model; recommendations for a history need one "
                "(PerPEFT, SASRec, GRU4Rec, BERT4Rec, ...)"
            )
        self.model = model.eval()
        self.dataset = dataset
        self.config = config
        self.item_token = list(dataset.field2id_token[dataset.iid_field])
        self.item_index = {token: index for index, token in enumerate(self.item_token)}
        self.user_index = dict(dataset.field2token_id[dataset.uid_field])
        self.device = next(model.parameters()).device
        content = getattr(dataset, "item_content", None)
        self.titles = list(content.titles) if content is not None else None

    # ----------------------------------------------------------------------- loading
    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, **overrides: Any) -> Recommender:
        """Rebuild the run of ``checkpoint`` (a saved ``.pth``) and load its weights (weights-only).

        ``overrides`` replace the run's settings (e.g. ``data_path=...`` when the data moved,
        ``device="cpu"``).
        """
        path = Path(checkpoint)
        if not path.is_file():
            raise ConfigError(f"checkpoint not found: {path}")
        state = safe_load(path)
        run = state.get("run_config")
        if not isinstance(run, dict):
            raise ConfigError(
                f"{path} holds no run config (it was written by an older version); "
                "retrain, or rebuild the model from its config and load the weights yourself"
            )
        settings = {**run["settings"], "show_progress": False, "state": "ERROR", **overrides}
        settings.setdefault("use_gpu", torch.cuda.is_available())
        config = build_config(run["model"], run["dataset"], None, settings)
        init_logger(config)
        seed_everything(config["seed"], config["reproducibility"])
        dataset = create_dataset(config)
        train_data, _, _ = data_preparation(config, dataset)
        model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
        model.load_state_dict(state["state_dict"])
        model.load_other_parameter(state.get("other_parameter"))
        return cls(model, train_data._dataset, config)

    # ---------------------------------------------------------------------- inputs
    def item_ids(self, history: Sequence[str]) -> list[int]:
        """Internal ids of a history of raw item ids; unknown ids are an error naming them."""
        if isinstance(history, str):
            raise TypeError("history must be a sequence of raw item ids, not one string")
        if len(history) == 0:
            raise ConfigError("an empty history has nothing to recommend from")
        unknown = [item for item in history if str(item) not in self.item_index or str(item) == "[PAD]"]
        if unknown:
            shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
            raise UnknownItemError(
                f"{len(unknown)} item id(s) not in dataset '{self.config['dataset']}': {shown}"
            )
        return [self.item_index[str(item)] for item in history]

    def _sequences(self, histories: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-aligned, zero-padded item sequences of the last ``MAX_ITEM_LIST_LENGTH`` items."""
        width = self.model.max_seq_length
        seq = torch.zeros(len(histories), width, dtype=torch.long)
        lengths = torch.zeros(len(histories), dtype=torch.long)
        for row, items in enumerate(histories):
            recent = items[-width:]
            seq[row, : len(recent)] = torch.tensor(recent)
            lengths[row] = len(recent)
        return seq.to(self.device), lengths.to(self.device)

    def _known_user(self, user_id: str | None) -> int | None:
        if user_id is None:
            return None
        index = self.user_index.get(str(user_id))
        return None if index in (None, 0) else int(index)

    # --------------------------------------------------------------------- scoring
    def _groups(self, seq: torch.Tensor, lengths: torch.Tensor, users: list[int | None]) -> torch.Tensor:
        model = self.model
        groups = torch.zeros(len(seq), dtype=torch.long, device=self.device)
        if not bool(getattr(model, "personalised", False)):
            return groups
        formed = int(model.groups_formed)
        distances = torch.stack([
            (model._last_hidden(seq, lengths, model.group_table(g)) - model.centroids[g]).norm(dim=-1)
            for g in range(formed)
        ], dim=1)
        groups = distances.argmin(dim=1)
        for row, user in enumerate(users):
            if user is not None:
                groups[row] = model.group_of_user[user]
        return groups

    @torch.no_grad()
    def _scores(self, seq: torch.Tensor, lengths: torch.Tensor, users: list[int | None]):
        model = self.model
        if hasattr(model, "group_table"):  # PerPEFT: each row under its group's item table
            groups = self._groups(seq, lengths, users)
            scores = torch.empty(len(seq), model.n_items, device=self.device)
            for group in torch.unique(groups).tolist():
                rows = (groups == group).nonzero().squeeze(1)
                table = model.group_table(group)
                scores[rows] = model._last_hidden(seq[rows], lengths[rows], table) @ table.T
            return scores, groups
        interaction = Interaction({
            model.ITEM_SEQ: seq,
            model.ITEM_SEQ_LEN: lengths,
            model.USER_ID: torch.tensor([u or 0 for u in users], device=self.device),
        })
        scores = model.full_sort_predict(interaction).view(len(seq), -1)[:, : len(self.item_token)]
        return scores, torch.zeros(len(seq), dtype=torch.long)

    def recommend(
        self, history: Sequence[str], k: int = 10, exclude_seen: bool = True, user_id: str | None = None
    ) -> Recommendation:
        """Top-``k`` items for one history of raw item ids (oldest first)."""
        return self.recommend_batch([history], k=k, exclude_seen=exclude_seen, user_ids=[user_id])[0]

    def recommend_batch(
        self,
        histories: Sequence[Sequence[str]],
        k: int = 10,
        exclude_seen: bool = True,
        user_ids: Sequence[str | None] | None = None,
        batch_size: int = 256,
    ) -> list[Recommendation]:
        """Top-``k`` items for each history, scored in batches of ``batch_size``."""
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        user_ids = list(user_ids) if user_ids is not None else [None] * len(histories)
        if len(user_ids) != len(histories):
            raise ConfigError("user_ids and histories differ in length")
        internal = [self.item_ids(history) for history in histories]
        results: list[Recommendation] = []
        for start in range(0, len(internal), batch_size):
            chunk = internal[start : start + batch_size]
            users = [self._known_user(u) for u in user_ids[start : start + batch_size]]
            seq, lengths = self._sequences(chunk)
            scores, groups = self._scores(seq, lengths, users)
            scores[:, 0] = -torch.inf  # padding is never an item
            if exclude_seen:
                for row, items in enumerate(chunk):
                    scores[row, items] = -torch.inf
            top = torch.topk(scores, min(k, int(torch.isfinite(scores).sum(dim=1).min())), dim=1)
            for row in range(len(chunk)):
                ids = top.indices[row].tolist()
                results.append(Recommendation(
                    items=[self.item_token[i] for i in ids],
                    scores=[float(s) for s in top.values[row].tolist()],
                    group=int(groups[row]),
                    titles=[self.titles[i] for i in ids] if self.titles is not None else None,
                ))
        return results


def read_histories(path: str | Path) -> tuple[list[str | None], list[list[str]]]:
    """A histories file: one history per line, raw item ids separated by spaces, oldest first.

    A line ``USER_ID<TAB>ITEM ITEM ...`` names the user (a known user keeps their group). Blank
    lines and lines starting with ``#`` are skipped; an empty history is an error naming its line.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"histories file not found: {file}")
    users: list[str | None] = []
    histories: list[list[str]] = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, _, items = line.partition("\t") if "\t" in line else (None, "", line)
        if not items.split():
            raise ConfigError(f"{file}:{number}: empty history")
        users.append(user.strip() if user is not None else None)
        histories.append(items.split())
    if not histories:
        raise ConfigError(f"{file} holds no history")
    return users, histories


def format_table(result: Recommendation) -> str:
    """A readable top-K: rank, item id, score (and title where the dataset has titles)."""
    lines = [f"group {result.group}", f"{'rank':>4}  {'item':<12} {'score':>9}  title" if result.titles else
             f"{'rank':>4}  {'item':<12} {'score':>9}"]
    for rank, item in enumerate(result.items, start=1):
        line = f"{rank:>4}  {item:<12} {result.scores[rank - 1]:>9.4f}"
        if result.titles:
            line += f"  {result.titles[rank - 1]}"
        lines.append(line)
    return "\n".join(lines)


def write_jsonl(results: Iterable[tuple[str | None, Recommendation]], handle) -> None:
    for user, result in results:
        handle.write(json.dumps({"user_id": user, **result.as_dict()}) + "\n")
