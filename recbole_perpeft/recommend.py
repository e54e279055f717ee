"""Recommendations from a trained model: top-K raw item ids and scores for a history.

    from recbole_perpeft.recommend import Recommender

    recommender = Recommender.from_checkpoint("saved/PerPEFT-....pth")
    result = recommender.recommend(["i0042", "i0007", "i1913"], k=10)
    result.items, result.scores, result.group, result.pairs()

Works for PerPEFT and for every sequential model (the plugin's or RecBole's: SASRec, GRU4Rec,
BERT4Rec, ...). The checkpoint is loaded weights-only; it carries the run's final settings
(``run_config``), from which the dataset (for the raw <-> internal item ids and the item
content) and the model are rebuilt. The dataset's files must therefore be where the run found
them, or be pointed to with ``data_path=...``. Checkpoints written before they carried a run
config need ``dataset=...`` (and the run's settings) to be rebuilt.

PerPEFT routes each history to a user group. A known user (``user_id`` seen in training) keeps
the group the model assigned. A new user goes to the group that claims them most closely: the
history is encoded under every group's item table, and the group whose centroid is nearest to
its own view of the user wins. The centroids live in the space of the backbone's user
representation, so each group judges the user with its own modules, as it judged its members
when the groups were (re)formed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from recbole.data.interaction import Interaction
from recbole.utils import ModelType

from recbole_perpeft.checkpoint import apply_weights, load_checkpoint
from recbole_perpeft.config import dump_config_yaml
from recbole_perpeft.errors import (
    CheckpointError,
    ConfigError,
    InvalidHistoryError,
    UnknownItemError,
)
from recbole_perpeft.model.protocol import is_grouped
from recbole_perpeft.model.serving import score_histories
from recbole_perpeft.run import build_config, build_model, create_dataset, seed_everything
from recbole_perpeft.seen_items import history_pairs, mask_seen_items

__all__ = [
    "CheckpointError",
    "HistoryLine",
    "InvalidHistoryError",
    "Recommendation",
    "Recommender",
    "UnknownItemError",
    "read_history_file",
]

PAD_TOKEN = "[PAD]"


@dataclass
class Recommendation:
    """Top-K of one history: raw item ids, their scores (descending) and the user's group.

    ``group`` is the PerPEFT group whose modules scored the history (0 for other models and
    for PerPEFT before users were grouped); ``titles`` is set when the dataset has item titles.
    """

    items: list[str]
    scores: list[float]
    group: int
    titles: list[str] | None = None

    def pairs(self) -> list[tuple[str, float]]:
        """``[(item, score), ...]``, best first."""
        return list(zip(self.items, self.scores, strict=True))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"items": self.items, "scores": self.scores, "group": self.group}
        if self.titles is not None:
            out["titles"] = self.titles
        return out


@contextlib.contextmanager
def _quiet_logs(level: int = logging.ERROR) -> Iterator[None]:
    """Hold RecBole's (root) logger at ``level`` while rebuilding the run.

    The dataset's notes (filters, short users) were shown when the model was trained; repeated
    on every load they are noise. RecBole's ``init_logger`` would also write a log file into the
    working directory, which a read-only query should not.
    """
    root = logging.getLogger()
    before = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(before)


def _device(device: str | torch.device) -> torch.device:
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"invalid device {device!r}: {error}") from error
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available")
    return chosen


class Recommender:
    """A trained sequential model, ready to rank the catalogue for histories of raw item ids."""

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
        self.item_index = {str(token): index for index, token in enumerate(self.item_token)}
        self.user_index = {str(token): int(index) for token, index in dataset.field2token_id[dataset.uid_field].items()}
        self.device = next(model.parameters()).device
        content = getattr(dataset, "item_content", None)
        self.titles = list(content.titles) if content is not None else None

    # ----------------------------------------------------------------------- loading
    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        *,
        model: str | None = None,
        dataset: str | None = None,
        config_files: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
        **overrides: Any,
    ) -> Recommender:
        """Rebuild the run of ``checkpoint`` (a saved ``.pth``) and load its weights (weights-only).

        Settings, lowest priority first: the run's own (``run_config`` in the checkpoint) <
        ``config_files`` < ``overrides`` (e.g. ``data_path=...`` when the data moved). ``model``
        and ``dataset`` are only needed for checkpoints without a run config (older versions);
        those must also be given the training run's settings, or the weights will not fit.
        ``device`` is CPU unless asked otherwise (``"cuda"``).
        """
        path = Path(checkpoint)
        state = load_checkpoint(path)
        saved_model = state.get("model")
        run = state.get("run_config")
        if isinstance(run, dict):
            model_name = model or run["model"]
            dataset_name = dataset or run["dataset"]
            settings = dict(run.get("settings") or {})
        else:
            if dataset is None:
                raise CheckpointError(
                    f"{path} lacks a run config (it was written before checkpoints carried one): pass "
                    "--dataset=NAME, and --model, --config_files or --KEY=VALUE with the training run's "
                    "settings (Python: Recommender.from_checkpoint(path, dataset=..., **settings))"
                )
            model_name = model or saved_model
            dataset_name = dataset
            settings = {}
        if not model_name:
            raise CheckpointError(f"{path} does not say which model it holds: pass --model=NAME")
        if saved_model and str(saved_model).lower() != str(model_name).lower():
            raise CheckpointError(f"{path} holds model '{saved_model}', not '{model_name}'")
        chosen = _device(device)
        config_dict = {"show_progress": False, "state": "ERROR", **overrides}
        with tempfile.TemporaryDirectory(prefix="recbole_perpeft_run_") as folder, _quiet_logs():
            run_file = Path(folder) / "run_config.yaml"
            dump_config_yaml(settings, run_file)
            config = build_config(model_name, dataset_name, [str(run_file), *(config_files or [])], config_dict)
            config["device"] = chosen
            # The model is restored over the whole dataset: no train/valid/test split is built.
            seed_everything(config["seed"], config["reproducibility"])
            data = create_dataset(config)
            net = build_model(config, data)
        apply_weights(net, state, path, data)
        return cls(net, data, config)

    # ---------------------------------------------------------------------- inputs
    def item_ids(self, history: Sequence[str]) -> list[int]:
        """Internal ids of a history of raw item ids; unknown ids are an error naming them."""
        if isinstance(history, (str, bytes)):
            raise InvalidHistoryError("a history is a sequence of raw item ids, not one string: split it first")
        if len(history) == 0:
            raise InvalidHistoryError("an empty history has nothing to recommend from")
        unknown = [str(item) for item in history if str(item) not in self.item_index or str(item) == PAD_TOKEN]
        if unknown:
            distinct = list(dict.fromkeys(unknown))
            shown = ", ".join(distinct[:10]) + (" ..." if len(distinct) > 10 else "")
            raise UnknownItemError(
                f"{len(distinct)} item id(s) not in dataset '{self.config['dataset']}': {shown}"
            )
        return [self.item_index[str(item)] for item in history]

    def known_user(self, user_id: str | None) -> int | None:
        """The internal id of a user the dataset knows, else ``None`` (a new user)."""
        if user_id is None:
            return None
        index = self.user_index.get(str(user_id))
        return None if index in (None, 0) else index

    def _sequences(self, histories: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-aligned, zero-padded sequences of the last ``MAX_ITEM_LIST_LENGTH`` items.

        The layout of RecBole's own evaluation rows; BERT4Rec's ``full_sort_predict`` appends
        its mask token itself.
        """
        width = self.model.max_seq_length
        seq = torch.zeros(len(histories), width, dtype=torch.long)
        lengths = torch.zeros(len(histories), dtype=torch.long)
        for row, items in enumerate(histories):
            recent = items[-width:]
            seq[row, : len(recent)] = torch.tensor(recent)
            lengths[row] = len(recent)
        return seq.to(self.device), lengths.to(self.device)

    # --------------------------------------------------------------------- scoring
    @torch.no_grad()
    def _scores(self, seq: torch.Tensor, lengths: torch.Tensor, users: list[int | None]):
        model = self.model
        if is_grouped(model):  # PerPEFT: each row under its group's model
            return score_histories(model, seq, lengths, users)
        interaction = Interaction({
            model.ITEM_SEQ: seq,
            model.ITEM_SEQ_LEN: lengths,
            model.USER_ID: torch.tensor([u or 0 for u in users], device=self.device),
        })
        try:
            scores = model.full_sort_predict(interaction)
        except NotImplementedError as error:
            raise ConfigError(f"{self.config['model']} cannot rank the whole catalogue (no full_sort_predict)") \
                from error
        scores = scores.view(len(seq), -1)[:, : len(self.item_token)]
        return scores, torch.zeros(len(seq), dtype=torch.long)

    def recommend(
        self, history: Sequence[str], k: int = 10, exclude_seen: bool = True, user_id: str | None = None
    ) -> Recommendation:
        """Top-``k`` items for one history of raw item ids (oldest first).

        Only the last ``MAX_ITEM_LIST_LENGTH`` items are read, as in training. With
        ``exclude_seen`` the history's items are not recommended; padding never is. ``user_id``
        (PerPEFT): a known user keeps their group; otherwise the history picks one.
        """
        return self.recommend_batch([history], k=k, exclude_seen=exclude_seen, user_ids=[user_id])[0]

    def recommend_batch(
        self,
        histories: Sequence[Sequence[str]],
        k: int = 10,
        exclude_seen: bool = True,
        user_ids: Sequence[str | None] | None = None,
        batch_size: int = 256,
    ) -> list[Recommendation]:
        """Top-``k`` items for each history (as :meth:`recommend`), scored ``batch_size`` at a time.

        Every history is checked before any is scored; an error names the history (0-based).
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        user_ids = list(user_ids) if user_ids is not None else [None] * len(histories)
        if len(user_ids) != len(histories):
            raise ConfigError(f"{len(user_ids)} user ids for {len(histories)} histories")
        internal = []
        for number, history in enumerate(histories):
            try:
                internal.append(self.item_ids(history))
            except InvalidHistoryError as error:
                if len(histories) == 1:
                    raise
                raise type(error)(f"history {number}: {error}") from None
        results: list[Recommendation] = []
        for start in range(0, len(internal), batch_size):
            chunk = internal[start : start + batch_size]
            users = [self.known_user(u) for u in user_ids[start : start + batch_size]]
            seq, lengths = self._sequences(chunk)
            scores, groups = self._scores(seq, lengths, users)
            scores = scores.float()
            rows, items = history_pairs(chunk if exclude_seen else [])
            mask_seen_items(scores, rows, items)  # padding always, the history with exclude_seen
            top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
            for row in range(len(chunk)):
                keep = torch.isfinite(top.values[row])  # fewer candidates than k: no filler
                ids = top.indices[row][keep].tolist()
                results.append(Recommendation(
                    items=[str(self.item_token[i]) for i in ids],
                    scores=[float(s) for s in top.values[row][keep].tolist()],
                    group=int(groups[row]),
                    titles=[self.titles[i] for i in ids] if self.titles is not None else None,
                ))
        return results


@dataclass
class HistoryLine:
    """One history of a histories file, with the line it came from (for error messages)."""

    line: int
    user_id: str | None
    items: list[str]


def read_history_file(path: str | Path) -> list[HistoryLine]:
    """A histories file: one history per line, raw item ids separated by whitespace, oldest first.

    A line ``USER_ID<TAB>ITEM ITEM ...`` names the user (a known user keeps their group). Blank
    lines and lines starting with ``#`` are skipped; an empty history is an error naming its line.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"histories file not found: {file}")
    rows: list[HistoryLine] = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, items = line.split("\t", 1) if "\t" in line else (None, line)
        if not items.split():
            raise InvalidHistoryError(f"{file}:{number}: empty history")
        rows.append(HistoryLine(number, (user.strip() or None) if user is not None else None, items.split()))
    if not rows:
        raise InvalidHistoryError(f"{file} holds no history")
    return rows


def read_histories(path: str | Path) -> tuple[list[str | None], list[list[str]]]:
    """:func:`read_history_file` as two lists: user ids (``None``: not given) and histories."""
    rows = read_history_file(path)
    return [row.user_id for row in rows], [row.items for row in rows]


def format_table(result: Recommendation, heading: str | None = None) -> str:
    """A readable top-K under ``heading``: rank, item id, score (and title where the dataset has titles)."""
    lines = [heading or f"group {result.group}"]
    header = f"{'rank':>4}  {'item':<12} {'score':>9}"
    lines.append(header + "  title" if result.titles else header)
    for rank, (item, score) in enumerate(result.pairs(), start=1):
        line = f"{rank:>4}  {item:<12} {score:>9.4f}"
        if result.titles:
            line += f"  {result.titles[rank - 1]}"
        lines.append(line)
    return "\n".join(lines)


def write_jsonl(results: Iterable[tuple[str | None, Recommendation]], handle: IO[str]) -> None:
    """One JSON object per line: ``user_id``, ``items``, ``scores``, ``group`` (and ``titles``)."""
    for user, result in results:
        handle.write(json.dumps({"user_id": user, **result.as_dict()}) + "\n")
