"""Every config key the plugin sets, checks or treats specially: one table, :data:`SCHEMA`.

Each :class:`Key` says what a valid value is (its rule), what the key means (one line), whether
it shapes the run (part of the run's identity, :mod:`recbole_perpeft.run_identity`) and whether
it shapes the processed dataset (a searched one makes every Ray Tune trial build its own,
:mod:`recbole_perpeft.tune`). Defaults are not here: they stay in the property files
(``properties/overall.yaml``, ``properties/model/<Model>.yaml``, ``properties/dataset/``,
``properties/recipe/``), as RecBole keeps its own.

Derived from the table: :data:`recbole_perpeft.config_rules.RULES` (checked when a ``Config`` is
built), :data:`NOT_SHAPING`, :data:`DATASET_KEYS`, the keys the unknown-key warning knows, and
the key reference ``docs/config.md`` (``python -m recbole_perpeft.config_doc > docs/config.md``;
``tests/test_config_schema.py`` fails when it is stale).

**Adding a key**: its default goes into the property file, and one :class:`Key` into
:data:`SCHEMA`; then regenerate ``docs/config.md``. Nothing else lists keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

Check = Callable[[Any], bool]


class Kind(NamedTuple):
    """What a value may be: ``check(value)`` holds; ``expected`` says so in words."""

    check: Check
    expected: str


# ------------------------------------------------------------------------- allowed values
#: The PEFT backends (the same as recbole_perpeft.peft_backends.PEFT_TYPES; kept here so that a bad
#: value fails before the model, and with it transformers, is imported).
PEFT_TYPES = ("lora", "ia3", "peft", "iisan", "none")
#: How a user's training sequence becomes samples (recbole_perpeft.data.sequential).
TRAIN_UNITS = ("user", "window", "prefix")
#: ``train_unit`` values a config may hold (``auto`` is resolved once the data is loaded).
TRAIN_UNIT_CHOICES = (*TRAIN_UNITS, "auto")
#: Which epoch's state is tested (recbole_perpeft.trainer.selection).
MODEL_SELECTION_MODES = ("group", "stage")
LOSS_TYPES = ("BCE", "CE", "sampled_softmax")
BATCH_MODES = ("group", "mixed")
SCHEDULES = ("auto", "fixed")
GROUPING_SEQUENCES = ("train", "train_valid")
PRECISIONS = ("auto", "bf16", "fp16", "no")


# --------------------------------------------------------------------- what a value may be
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(minimum: int) -> Kind:
    return Kind(lambda value: _is_int(value) and value >= minimum, f"an integer >= {minimum}")


def positive_number() -> Kind:
    return Kind(lambda value: _is_number(value) and value > 0, "a number > 0")


def number() -> Kind:
    return Kind(_is_number, "a finite number")


def boolean() -> Kind:
    return Kind(lambda value: isinstance(value, bool), "True or False")


def one_of(*choices: str, any_case: bool = False) -> Kind:
    def check(value: Any) -> bool:
        return isinstance(value, str) and (value.lower() if any_case else value) in choices

    return Kind(check, "one of " + ", ".join(choices))


def text() -> Kind:
    return Kind(lambda value: isinstance(value, str) and bool(value.strip()), "a non-empty string")


def mapping() -> Kind:
    return Kind(lambda value: isinstance(value, Mapping), "a mapping")


def precision() -> Kind:
    # YAML (and the CLI) read an unquoted `no` as False; ~ means auto.
    check, expected = one_of(*PRECISIONS, any_case=True)
    return Kind(lambda value: value is None or value is False or check(value), expected)


def or_none(kind: Kind) -> Kind:
    return Kind(lambda value: value is None or kind.check(value), f"{kind.expected} or ~ (none)")


# ----------------------------------------------------------------------------------- a key
PERPEFT = ("PerPEFT",)


@dataclass(frozen=True)
class Key:
    """One config key: its rule, its meaning and what it shapes.

    ``kind``: the valid values (``None``: unchecked, RecBole judges them); ``models``: the models
    the rule applies to (empty: every model); ``shapes_run``: part of the run's identity (False:
    paths, logging, hardware, planned length); ``shapes_data``: changes the processed dataset
    (besides RecBole's dataset arguments and the keys of dataset property files); ``recbole``: a
    key RecBole defines (its default is RecBole's unless a plugin property file sets one).
    """

    name: str
    doc: str
    kind: Kind | None = None
    models: tuple[str, ...] = ()
    shapes_run: bool = True
    shapes_data: bool = False
    recbole: bool = False


def _recbole(name: str, doc: str, kind: Kind | None = None, **flags: bool) -> Key:
    return Key(name, doc, kind, recbole=True, **flags)


def _perpeft(name: str, doc: str, kind: Kind | None = None, **flags: bool) -> Key:
    return Key(name, doc, kind, models=PERPEFT, **flags)


# ---------------------------------------------------------------------------------- the table
SCHEMA: tuple[Key, ...] = (
    # every model: training and evaluation (properties/overall.yaml, RecBole's defaults)
    _recbole("epochs", "epochs planned (a resumed run may be given more)", integer(1), shapes_run=False),
    _recbole("train_batch_size", "training batch size (PerPEFT: users, or windows with `train_unit: window`)",
             integer(1)),
    _recbole("eval_batch_size", "evaluation batch size", integer(1), shapes_run=False),
    _recbole("learning_rate", "optimiser learning rate", positive_number()),
    Key("nproc", "processes on this machine (DDP: gloo on CPU, nccl on CUDA); `--nproc=N` or a config file",
        integer(1), shapes_run=False),
    Key("mixed_precision", "`auto`: bf16 on a CUDA GPU that supports it, else fp16, fp32 on CPU; `bf16`, `fp16`, "
        "`no` force a choice (weights stay fp32)", precision()),
    # PerPEFT: item content and the foundation model (properties/model/PerPEFT.yaml)
    _perpeft("foundation_model", "hub id or local path of a CLIP (image+text) or text `AutoModel`; `auto`: "
             "`openai/clip-vit-base-patch32` where items have images, `all-MiniLM-L6-v2` for text-only datasets; "
             "offline: `tiny-clip`, `clip-vit-base-patch32-random`, `all-MiniLM-L6-v2` "
             "([usage.md](usage.md#what-runs-offline))", text()),
    _perpeft("peft_type", "`lora` (r 4, α 8, dropout 0.1, `q_proj`/`v_proj`), `ia3` (`k_proj`, `v_proj`, `fc1`), "
             "`iisan`, `peft` (any peft config), `none` (frozen)", one_of(*PEFT_TYPES, any_case=True)),
    _perpeft("peft_config", "overrides of the method's defaults (`{r: 8}`), or a full peft config for `peft`",
             or_none(mapping())),
    _perpeft("content_weight", "e_i = E_id[i] + content_weight · projector(encoder(x_i))", number()),
    _perpeft("cache_dir", "content, IISAN and frozen-feature caches (`~`: `$RECBOLE_PERPEFT_HOME/cache`, "
             "`RECBOLE_PERPEFT_HOME` defaulting to `~/.cache/recbole_perpeft`)", or_none(text()), shapes_run=False),
    _perpeft("max_image_pixels", "images with more pixels (read from the file's header) are never decoded: "
             "counted and treated as missing", integer(1)),
    _perpeft("encode_batch_size", "items per no-grad encoder batch when the catalogue is encoded for evaluation",
             integer(1), shapes_run=False),
    _perpeft("recipe", "`default`, or the name of a training recipe in `properties/recipe/` (`paper`: the "
             "reference's exact training; [recipes.md](recipes.md#training-recipe-recipe))", text()),
    _perpeft("learn_content_weight", "learn the content weight (one scalar per group), starting at `content_weight`",
             boolean()),
    _perpeft("id_fallback", "also train the same backbone over item IDs alone (`n_groups: 1`, `peft_type: none`, "
             "`content_weight: 0`) and serve it where its best validation score beats the content model's: never "
             "worse than the IDs on validation ([recipes.md](recipes.md#id-only-check-id_fallback))", boolean()),
    _perpeft("id_fallback_config", "how the ID-only twin of `id_fallback` trains: settings on top of the run's "
             "(default: `learning_rate: 1.0e-3` as RecBole's SASRec, `patience: 20`, a cap of 200 epochs, batch 64); "
             "a mapping given replaces the default one as a whole", or_none(mapping())),
    _perpeft("scale_item_inputs", "item inputs times √hidden_size before positions are added (the reference)",
             boolean()),
    Key("TITLE_FIELD", "the `.item` column holding the title (`~`: none)", shapes_data=True),
    Key("IMAGE_FIELD", "the `.item` column holding the image file name (`~`: text only)", shapes_data=True),
    Key("image_dir", "the folder of the item images, inside the dataset's folder", shapes_data=True),
    # PerPEFT: training (the default recipe; `recipe: paper` overrides)
    _perpeft("loss_type", "`sampled_softmax`: softmax over every item a step encodes plus `num_negatives` shared "
             "negatives (from the group's own items once personalised); `BCE`: one negative per position (the "
             "paper); `CE`: softmax over all items (encodes the catalogue every step)", one_of(*LOSS_TYPES)),
    _perpeft("num_negatives", "shared negatives per step (per group in a batch) for `sampled_softmax`", integer(1)),
    _perpeft("train_unit", "`window`: a user's training items in windows of `MAX_ITEM_LIST_LENGTH` targets, each "
             "a target once an epoch; `user`: the last window only (the paper); `prefix`: RecBole's augmentation; "
             "`auto`: `prefix` (batches of `train_batch_size` x `MAX_ITEM_LIST_LENGTH` rows) where windows would "
             "shorten the history of more than half the training targets, else `window`",
             one_of(*TRAIN_UNIT_CHOICES)),
    # PerPEFT: grouping, per-group modules, group negatives, model selection
    _perpeft("n_groups", "user groups; 1 = global PEFT (the baseline)", integer(1)),
    _perpeft("item_encoder", "the registered builder of the item encoder (foundation model + content cache + PEFT "
             "backend) handed to the model; a new one is a `@register_item_encoder(\"name\")` function "
             "(`recbole_perpeft/item_encoder.py`)", text()),
    _perpeft("schedule", "`auto`: the global stage runs while validation improves (`patience`), users are grouped "
             "from the best global state, each group trains until its own validation stops improving, the run ends "
             "when every group has stopped (`epochs` is a cap); `fixed`: `warmup_epochs` global epochs, then all "
             "`epochs` ([recipes.md](recipes.md#schedule-auto))", one_of(*SCHEDULES)),
    _perpeft("patience", "`schedule: auto`: validations without a gain before the global stage or a group stops",
             integer(1)),
    _perpeft("warmup_epochs", "`fixed`: global epochs before users are grouped; `auto`: the most global epochs",
             integer(0)),
    _perpeft("group_negatives", "personalised stage: negatives from the group's own items", boolean()),
    _perpeft("regroup_every", "regroup every N personalised epochs (0 = never, as the paper)", or_none(integer(0))),
    _perpeft("batch_mode", "`group`: one-group batches (the paper); `mixed`: each user routed to their group",
             one_of(*BATCH_MODES)),
    _perpeft("grouping_sequence", "what users are grouped by: `train`, or `train_valid` (also the validation "
             "item, as the reference)", one_of(*GROUPING_SEQUENCES)),
    _perpeft("min_group_size", "smaller k-means clusters merge into the nearest group", or_none(integer(1))),
    _perpeft("grouping_truth", "a TSV of known user segments (user id, segment) in the dataset folder: each "
             "grouping's purity and NMI are logged and kept in `grouping_log`", or_none(text()), shapes_run=False),
    _perpeft("model_selection", "`group`: each group served by the epoch of its own best validation score, "
             "warm-up epochs included (needs a top-k `valid_metric`); `stage`: the best personalised epoch "
             "([recipes.md](recipes.md#model-selection-perpeft-with-n_groups--1))",
             one_of(*MODEL_SELECTION_MODES)),
    # PerPEFT: the SASRec backbone (RecBole's SASRec keys)
    _recbole("hidden_size", "width of the backbone and the item embeddings"),
    _recbole("inner_size", "width of the point-wise feed-forward layer"),
    _recbole("n_layers", "transformer layers"),
    _recbole("n_heads", "attention heads"),
    _recbole("hidden_dropout_prob", "dropout on hidden states"),
    _recbole("attn_dropout_prob", "dropout on attention weights"),
    _recbole("hidden_act", "feed-forward activation"),
    _recbole("layer_norm_eps", "LayerNorm epsilon"),
    _recbole("initializer_range", "standard deviation of the initial weights"),
    _recbole("MAX_ITEM_LIST_LENGTH", "items of a history the model reads (the last ones)"),
    _recbole("load_col", "the atomic-file columns loaded (ordering by time needs `timestamp`)"),
    _recbole("train_neg_sample_args", "RecBole's negative sampling; PerPEFT samples its own negatives (`~`)"),
    _recbole("reg_weight", "weight of the ID embeddings' norm in the loss"),
    _recbole("learner", "optimiser"),
    _recbole("weight_decay", "optimiser weight decay (an explicit value wins over `weight_decay_by_peft`)"),
    Key("weight_decay_by_peft", "weight decay by `peft_type` (the reference's tuned values for the paper's "
        "datasets); used unless `weight_decay` is given"),
    _recbole("stopping_step", "validations without improvement before training stops", shapes_run=False),
    # every model: the evaluation protocol and the run (properties/overall.yaml)
    _recbole("eval_args", "leave-one-out by time (last item test, second-to-last validation), full ranking",
             shapes_data=True),
    _recbole("repeatable", "evaluation rows keep their order (sequential recommendation)"),
    _recbole("metrics", "metrics reported", shapes_run=False),
    _recbole("topk", "cut-offs of the top-k metrics", shapes_run=False),
    _recbole("valid_metric", "the metric model selection follows"),
    Key("exclude_history", "sequential models: a user's past items are not ranked (the paper's protocol)"),
    _recbole("use_gpu", "CUDA when available, else CPU", shapes_run=False),
    _recbole("show_progress", "progress bars", shapes_run=False),
    _recbole("checkpoint_dir", "checkpoints and resume files", shapes_run=False),
    Key("plots", "PNGs beside the results (`<result>_plots/`, else `<checkpoint>_plots/`)", shapes_run=False),
    _recbole("world_size", "processes over all machines (-1: `nproc`)", shapes_run=False),
    _recbole("ip", "address of the first machine (multi-machine DDP)", shapes_run=False),
    _recbole("port", "port of the first machine (multi-machine DDP)", shapes_run=False),
    _recbole("offset", "rank of this machine's first process (multi-machine DDP)", shapes_run=False),
    # RecBole's keys the plugin treats specially: run identity and dataset sharing
    _recbole("dataset", "the dataset's name", shapes_data=True),
    _recbole("data_path", "the folder holding `NAME/` dataset folders", shapes_run=False, shapes_data=True),
    _recbole("seed", "random seed", shapes_data=True),
    _recbole("state", "logging level", shapes_run=False),
    _recbole("gpu_id", "CUDA devices", shapes_run=False),
    _recbole("device", "the device (set from `use_gpu` and `gpu_id`)", shapes_run=False),
    _recbole("worker", "data-loading worker processes", shapes_run=False),
    _recbole("local_rank", "this process's rank on its machine (set by the launcher)", shapes_run=False),
    _recbole("log_wandb", "log to Weights & Biases", shapes_run=False),
    _recbole("wandb_project", "the Weights & Biases project", shapes_run=False),
    _recbole("save_dataset", "save the processed dataset", shapes_run=False),
    _recbole("dataset_save_path", "where a saved dataset goes", shapes_run=False),
    _recbole("save_dataloaders", "save the split data loaders", shapes_run=False),
    _recbole("dataloaders_save_path", "where saved data loaders go", shapes_run=False),
    _recbole("metric_decimal_place", "decimals of logged metrics", shapes_run=False),
    _recbole("enable_amp", "RecBole's own mixed precision (the plugin's trainers use `mixed_precision`)",
             shapes_run=False),
)

#: The schema by key name.
KEYS: dict[str, Key] = {key.name: key for key in SCHEMA}
#: Settings that change neither the model nor the data it learns from (not in the run's identity).
NOT_SHAPING: frozenset[str] = frozenset(key.name for key in SCHEMA if not key.shapes_run)
#: Keys whose change alters the processed dataset, besides RecBole's dataset arguments and the
#: keys of dataset property files.
DATASET_KEYS: frozenset[str] = frozenset(key.name for key in SCHEMA if key.shapes_data)

__all__ = [
    "BATCH_MODES", "DATASET_KEYS", "GROUPING_SEQUENCES", "KEYS", "LOSS_TYPES", "MODEL_SELECTION_MODES",
    "NOT_SHAPING", "PEFT_TYPES", "PRECISIONS", "SCHEMA", "TRAIN_UNITS", "TRAIN_UNIT_CHOICES", "Key", "Kind",
]
