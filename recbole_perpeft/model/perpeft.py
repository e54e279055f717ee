"""PerPEFT: personalised parameter-efficient fine-tuning for sequential recommendation."""

from __future__ import annotations

import math
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder
from recbole.utils import InputType
from torch import nn

from recbole_perpeft.data.dataset import MultimodalSequentialDataset
from recbole_perpeft.errors import ConfigError
from recbole_perpeft.item_encoder import build_item_encoder
from recbole_perpeft.model.group_modules import GroupItemRepresentation
from recbole_perpeft.model.group_negatives import GroupNegativeSampler
from recbole_perpeft.model.grouping import Grouping
from recbole_perpeft.model.protocol import GroupedRecommender
from recbole_perpeft.peft_backends.base import GroupedItemEncoder
from recbole_perpeft.precision import autocast, check_mixed_precision, resolve_mixed_precision

# The parts of the model every group shares while training (the rest is per group).
BACKBONE_PARTS = ("item_embedding", "position_embedding", "layer_norm", "trm_encoder")


class PerPEFT(SequentialRecommender, GroupedRecommender):
    r"""PerPEFT (Personalized PEFT, WWW 2026; arXiv 2602.09445).

    Items are encoded by a multimodal foundation model (CLIP: image + title) adapted with PEFT
    (LoRA, (IA)3, any ``peft`` method, or IISAN). Users are grouped by interest; every group
    gets its own PEFT module and projector (initialised from the global stage), the SASRec
    backbone and the ID embeddings are shared, and in the personalised stage each group trains
    on negatives drawn from its own items. With ``n_groups: 1`` this *is* the global-PEFT
    baseline. The stage schedule (warm-up, grouping, regrouping) is run by
    :class:`recbole_perpeft.trainer.PerPEFTTrainer`.

    State beyond the weights (the user -> group table, centroids, the stage) is kept in buffers,
    so a checkpoint restores the grouping with the model.
    """

    input_type = InputType.POINTWISE
    dataset_class = MultimodalSequentialDataset

    def __init__(self, config, dataset, item_encoder: GroupedItemEncoder | None = None):
        """``item_encoder``: the foundation model with its PEFT backend and content (``n_groups``
        adapters), built outside the model (:mod:`recbole_perpeft.item_encoder`); when not given,
        the one ``config["item_encoder"]`` names is built for it there."""
        super().__init__(config, dataset)
        self.hidden_size = config["hidden_size"]
        self.n_groups = config["n_groups"]
        self.loss_type = config["loss_type"]
        self.train_unit = config["train_unit"]
        self.reg_weight = config["reg_weight"]
        self.group_negatives = config["group_negatives"]
        self.encode_batch_size = config["encode_batch_size"]
        self.num_negatives = config["num_negatives"]
        # The reference scales item inputs by sqrt(h) before adding positions (SASRec's paper).
        self.input_scale = math.sqrt(self.hidden_size) if config["scale_item_inputs"] else 1.0
        self.n_users = dataset.user_num
        # Training autocast is the trainer's; evaluation tables are encoded here, in the same dtype
        # (resolved on the device the model is on then: the model reads no device setting).
        self.mixed_precision = check_mixed_precision(config["mixed_precision"])
        if self.n_groups > self.n_users - 1:  # each group holds its own modules: refuse before building them
            raise ConfigError(
                f"n_groups={self.n_groups} is more than the {self.n_users - 1} users of dataset "
                f"'{config['dataset']}'; choose n_groups between 1 (global PEFT) and {self.n_users - 1}"
            )

        # The shared SASRec backbone.
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.trm_encoder = TransformerEncoder(
            n_layers=config["n_layers"],
            n_heads=config["n_heads"],
            hidden_size=self.hidden_size,
            inner_size=config["inner_size"],
            hidden_dropout_prob=config["hidden_dropout_prob"],
            attn_dropout_prob=config["attn_dropout_prob"],
            hidden_act=config["hidden_act"],
            layer_norm_eps=config["layer_norm_eps"],
        )
        self.layer_norm = nn.LayerNorm(self.hidden_size, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        self._init_backbone(config["initializer_range"])

        # Per-group PEFT modules and projectors over the foundation model.
        if item_encoder is None:
            item_encoder = build_item_encoder(config, dataset, self.n_groups)
        self.items = GroupItemRepresentation(
            item_encoder,
            self.item_embedding,
            self.hidden_size,
            config["content_weight"],
            bool(config["learn_content_weight"]),
        )

        # Grouping state (model state: saved and loaded with the weights).
        self.register_buffer("group_of_user", torch.zeros(self.n_users, dtype=torch.long))
        self.register_buffer("centroids", torch.zeros(self.n_groups, self.hidden_size))
        self.register_buffer("groups_formed", torch.tensor(1))
        self.register_buffer("personalised", torch.tensor(False))

        self.negatives = GroupNegativeSampler(dataset.history, self.n_items)
        self._tables: dict[int, torch.Tensor] = {}

        # Per-group model selection serves each group with the backbone of the epoch kept for
        # it (recbole_perpeft.trainer.selection): one frozen copy per group, filled after training.
        self.model_selection = config["model_selection"]
        self.served: nn.ModuleList | None = None
        if self.model_selection == "group" and self.n_groups > 1:
            self.served = nn.ModuleList(self._backbone_copy() for _ in range(self.n_groups))
        self.register_buffer("serving_per_group", torch.tensor(False))

    def _init_backbone(self, initializer_range: float) -> None:
        for module in (self.item_embedding, self.position_embedding):
            module.weight.data.normal_(mean=0.0, std=initializer_range)
        self.item_embedding.weight.data[0].zero_()
        for module in self.trm_encoder.modules():
            if isinstance(module, nn.Linear):
                module.weight.data.normal_(mean=0.0, std=initializer_range)
                module.bias.data.zero_()

    def _backbone_copy(self) -> nn.Module:
        copy = nn.Module()
        for part in BACKBONE_PARTS:
            setattr(copy, part, deepcopy(getattr(self, part)))
        return copy.requires_grad_(False)

    def backbone_of(self, group: int) -> nn.Module:
        """What serves ``group``: the shared backbone, or the group's own copy once per-group
        model selection has assembled the final model (``serve_group``)."""
        if self.served is not None and bool(self.serving_per_group):
            return self.served[group]
        return self

    def backbone_state(self) -> dict[str, torch.Tensor]:
        """A detached copy of the shared parts (ID and position embeddings, transformer)."""
        return {
            f"{part}.{name}": value.detach().clone()
            for part in BACKBONE_PARTS
            for name, value in getattr(self, part).state_dict().items()
        }

    def serve_group(self, group: int, backbone: dict[str, torch.Tensor],
                    modules: list[torch.Tensor]) -> None:
        """Serve ``group`` with a kept state: ``backbone`` (``backbone_state()``) and the group's
        PEFT module and projector parameters (``items.group_parameters`` order)."""
        if self.served is None:
            raise RuntimeError("per-group serving needs model_selection: group and n_groups > 1")
        self.served[group].load_state_dict(backbone)
        with torch.no_grad():
            for parameter, value in zip(self.items.group_parameters(group), modules, strict=True):
                parameter.copy_(value)
        self.serving_per_group.fill_(True)
        self._tables.clear()

    # ------------------------------------------------------------------ groups
    def set_grouping(self, grouping: Grouping) -> None:
        """Install a grouping: every user's group, the centroids, the group item pools."""
        formed = grouping.n_groups
        if formed > self.n_groups:
            raise ValueError(f"grouping has {formed} groups, the model holds {self.n_groups}")
        group_of_user = torch.zeros(self.n_users, dtype=torch.long)
        group_of_user[grouping.users] = grouping.group_of_user
        # Users without a representation (no training sequence) go to the largest group.
        self.group_of_user.copy_(group_of_user)
        self.centroids.zero_()
        self.centroids[:formed] = grouping.centroids.to(self.centroids)
        self.groups_formed.fill_(formed)
        self.personalised.fill_(True)
        self._tables.clear()
        if self.group_negatives:
            self.negatives.set_groups(self.group_of_user, formed)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._tables.clear()
        if bool(self.personalised) and self.group_negatives:
            self.negatives.set_groups(self.group_of_user, int(self.groups_formed))
        return result

    def train(self, mode: bool = True):
        # Item tables cached for evaluation are stale once training resumes.
        if mode:
            self._tables.clear()
        return super().train(mode)

    def group_of(self, users: torch.Tensor) -> torch.Tensor:
        return self.group_of_user[users]

    def user_groups(self) -> torch.Tensor:
        return self.group_of_user

    def formed_groups(self) -> int:
        return int(self.groups_formed)

    def is_personalised(self) -> bool:
        return bool(self.personalised)

    def export_groups(self, dataset, folder: Path) -> dict[str, Any]:
        from recbole_perpeft.model.serving import export_groups

        return export_groups(self, dataset, folder)

    @torch.no_grad()
    def route_new_users(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """Groups for users unseen at grouping time: each group encodes the history with its own
        modules (and backbone), and the group whose centroid is nearest to its own view wins
        (ties: the lower, larger group). Group 0 before personalisation."""
        if not bool(self.personalised):
            return torch.zeros(len(item_seq), dtype=torch.long, device=item_seq.device)
        distances = torch.stack([
            (self.sequence_output(item_seq, item_seq_len, group) - self.centroids[group]).norm(dim=-1)
            for group in range(int(self.groups_formed))
        ], dim=1)
        return distances.argmin(dim=1)

    # --------------------------------------------------------------- backbone
    def encode_sequence(self, item_seq: torch.Tensor, item_reps: torch.Tensor,
                        backbone: nn.Module | None = None) -> torch.Tensor:
        """SASRec over already-represented items: ``[B, L, h]`` hidden states."""
        backbone = self if backbone is None else backbone
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        hidden = item_reps * self.input_scale + backbone.position_embedding(positions)
        hidden = self.dropout(backbone.layer_norm(hidden))
        mask = self.get_attention_mask(item_seq)
        return backbone.trm_encoder(hidden, mask, output_all_encoded_layers=True)[-1]

    def user_representation(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor,
                            groups: torch.Tensor) -> torch.Tensor:
        """The last hidden state over each user's sequence (the grouping's user vector)."""
        reps = self.items.of_rows(item_seq, groups)
        hidden = self.encode_sequence(item_seq, reps)
        return self.gather_indexes(hidden, item_seq_len - 1)

    # ------------------------------------------------------------------- loss
    def _positions(self, interaction):
        """Inputs and next-item targets at every position (``train_unit: user|window``) or at the last."""
        item_seq = interaction[self.ITEM_SEQ]
        length = interaction[self.ITEM_SEQ_LEN]
        target = interaction[self.POS_ITEM_ID]
        rows = torch.arange(len(item_seq), device=item_seq.device)
        if self.train_unit != "prefix":
            full = torch.cat([item_seq, item_seq.new_zeros(len(item_seq), 1)], dim=1)
            full[rows, length] = target
            return full[:, :-1], full[:, 1:]
        targets = torch.zeros_like(item_seq)
        targets[rows, length - 1] = target
        return item_seq, targets

    def calculate_loss(self, interaction):
        users = interaction[self.USER_ID]
        inputs, targets = self._positions(interaction)
        mask = targets != 0
        groups = self.group_of(users)
        self.last_batch_groups = torch.unique(groups).tolist()  # named if the loss diverges
        use_pools = bool(self.personalised) and self.group_negatives
        if self.loss_type == "BCE":
            negatives = self.negatives.sample(
                users, tuple(targets.shape), groups=groups if use_pools else None
            ).to(targets.device)
            reps = self.items.of_rows(torch.stack([inputs, targets, negatives], dim=1), groups)
            input_reps, target_reps, negative_reps = reps.unbind(dim=1)
            hidden = self.encode_sequence(inputs, input_reps)
            positive_logits = (hidden * target_reps).sum(-1)[mask]
            negative_logits = (hidden * negative_reps).sum(-1)[mask]
            loss = F.binary_cross_entropy_with_logits(
                positive_logits, torch.ones_like(positive_logits)
            ) + F.binary_cross_entropy_with_logits(
                negative_logits, torch.zeros_like(negative_logits)
            )
        elif self.loss_type == "sampled_softmax":
            loss = self._sampled_softmax_loss(inputs, targets, mask, groups, use_pools)
        else:
            loss = self._ce_loss(inputs, targets, mask, groups)
        return loss + self.reg_weight * self.item_embedding.weight.norm()

    def _sampled_softmax_loss(self, inputs, targets, mask, groups, use_pools: bool):
        """Softmax over every item the step encodes: the batch's items plus shared negatives.

        Per group in the batch, the candidates are the distinct items of its rows (inputs and
        targets: in-batch negatives) and ``num_negatives`` items drawn once for the whole
        group, from the group's own item pool in the personalised stage (PerPEFT's group
        negatives carried into the softmax). Each distinct item is encoded once per step.
        """
        loss = inputs.new_zeros((), dtype=torch.float)
        for group in torch.unique(groups).tolist():
            rows = (groups == group).nonzero().squeeze(1)
            row_inputs, row_targets, row_mask = inputs[rows], targets[rows], mask[rows]
            negatives = self.negatives.shared(self.num_negatives, group if use_pools else None)
            candidates = torch.cat([row_inputs.flatten(), row_targets[row_mask], negatives.to(inputs.device)])
            distinct, inverse = torch.unique(candidates, return_inverse=True)
            reps = self.items.of_items(distinct, group)
            n_inputs = row_inputs.numel()
            hidden = self.encode_sequence(row_inputs, reps[inverse[:n_inputs]].view(*row_inputs.shape, -1))
            logits = hidden[row_mask] @ reps.T
            logits[:, distinct == 0] = -torch.inf  # padding is never a candidate
            labels = inverse[n_inputs : n_inputs + int(row_mask.sum())]
            loss = loss + F.cross_entropy(logits, labels, reduction="sum")
        return loss / mask.sum().clamp(min=1)

    def _ce_loss(self, inputs, targets, mask, groups):
        # Softmax over the whole catalogue: every item is encoded each step (costly).
        loss = inputs.new_zeros((), dtype=torch.float)
        all_items = torch.arange(self.n_items, device=inputs.device)
        for group in torch.unique(groups).tolist():
            rows = (groups == group).nonzero().squeeze(1)
            table = self.items.of_items(all_items, group)
            hidden = self.encode_sequence(inputs[rows], table[inputs[rows]])
            logits = hidden[mask[rows]] @ table.T
            loss = loss + F.cross_entropy(logits, targets[rows][mask[rows]], reduction="sum")
        return loss / mask.sum().clamp(min=1)

    # ------------------------------------------------------------- prediction
    def group_table(self, group: int) -> torch.Tensor:
        """The catalogue as ``group`` sees it, computed once per evaluation."""
        if group not in self._tables:
            device = self.item_embedding.weight.device
            with autocast(device, resolve_mixed_precision(self.mixed_precision, device)):
                table = self.items.table(
                    group, self.n_items, self.encode_batch_size, self.backbone_of(group).item_embedding
                )
            self._tables[group] = table.float()  # scores stay float32: no ties from rounding
        return self._tables[group]

    def sequence_output(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, group: int) -> torch.Tensor:
        """``[B, h]``: the last hidden state of sequences read by ``group``'s model."""
        table = self.group_table(group)
        hidden = self.encode_sequence(item_seq, table[item_seq], self.backbone_of(group))
        return self.gather_indexes(hidden, item_seq_len - 1)

    def score(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, groups: torch.Tensor,
              items: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of each row under its group's model: ``[B, n_items]``, or ``[B]`` for one
        candidate item per row (``items``). The one scoring entry of predict,
        full_sort_predict, the trainer's evaluation and recommend."""
        shape = (len(item_seq),) if items is not None else (len(item_seq), self.n_items)
        scores = torch.empty(shape, device=item_seq.device)
        for group in torch.unique(groups).tolist():
            rows = (groups == group).nonzero().squeeze(1)
            table = self.group_table(group)
            hidden = self.sequence_output(item_seq[rows], item_seq_len[rows], group)
            scores[rows] = (hidden * table[items[rows]]).sum(-1) if items is not None else hidden @ table.T
        return scores

    def predict(self, interaction):
        groups = self.group_of(interaction[self.USER_ID])
        return self.score(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], groups,
                          interaction[self.ITEM_ID])

    def full_sort_predict(self, interaction):
        groups = self.group_of(interaction[self.USER_ID])
        return self.score(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], groups)

    # ----------------------------------------------------------------- report
    def report(self) -> dict[str, Any]:
        """Groups and parameter overhead, for the result file."""
        encoder = self.items.encoder
        peft_per_group = sum(p.numel() for p in encoder.group_parameters(0))
        projector_per_group = sum(p.numel() for p in self.items.projectors[0].parameters())
        foundation = encoder.foundation_parameter_count()
        formed = int(self.groups_formed)
        # The ID embedding is shared with ``items`` and counted once, under the backbone.
        backbone = sum(
            p.numel() for name, p in self.named_parameters() if not name.startswith(("items.", "served."))
        )
        return {
            "groups": {
                "n_groups": self.n_groups,
                "formed": formed,
                "personalised": bool(self.personalised),
                "sizes": torch.bincount(self.group_of_user[1:], minlength=formed).tolist(),
            },
            "params_breakdown": {
                "foundation": foundation,
                "peft_per_group": peft_per_group,
                "projector_per_group": projector_per_group,
                "backbone_and_id_embeddings": backbone,
                "groups_peft_share_of_foundation": formed * peft_per_group / max(foundation, 1),
                "added_by_personalisation": (formed - 1) * (peft_per_group + projector_per_group),
            },
        }

