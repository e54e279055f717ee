"""Throughput without changing a result: each distinct item through the encoder once per step and
group (every backend, every loss), length-sorted encoding equal to the unsorted path, mixed
precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_PERPEFT
from helpers_encoders import toy_content

from recbole_perpeft.data.mmdemo import generate_mmdemo
from recbole_perpeft.encoders import build_foundation_encoder
from recbole_perpeft.encoders.base import length_buckets, title_lengths
from recbole_perpeft.encoders.text import masked_mean
from recbole_perpeft.model.grouping import Grouping
from recbole_perpeft.peft_backends import build_grouped_encoder
from recbole_perpeft.peft_backends.common import ItemContentStore
from recbole_perpeft.peft_backends.iisan import _fill_states

FOUNDATIONS = ["tiny-clip", "all-MiniLM-L6-v2"]
LONG = "a much longer product title with many words in it to pad the batch out, and more"


def _content(foundation, n_items=14):
    """Toy content whose titles differ a lot in length (one long title among short ones)."""
    content = toy_content(foundation, n_items=n_items)
    ids, mask = foundation.processor.tokenize([LONG, LONG[:30]])
    content["input_ids"][[5, 9]] = torch.from_numpy(ids)
    content["attention_mask"][[5, 9]] = torch.from_numpy(mask)
    return content


@pytest.fixture(params=FOUNDATIONS)
def foundation(request):
    return build_foundation_encoder(request.param, seed=3)  # fresh: peft backends inject in place


def test_length_buckets_sort_stably_and_cover_every_row():
    lengths = torch.tensor([5, 1, 5, 3, 1, 9, 0])
    buckets = length_buckets(lengths, 3)
    assert [b.tolist() for b in buckets] == [[6, 1, 4], [3, 0, 2], [5]]
    # Merged while one pass costs at most 1 + slack times the padded tokens of separate ones.
    assert [b.tolist() for b in length_buckets(torch.tensor([4, 4, 5, 5, 20, 20]), 2, slack=0.25)] == \
        [[0, 1, 2, 3], [4, 5]]
    assert len(length_buckets(torch.tensor([9, 9, 9, 9]), 1, slack=0.25)) == 1
    with pytest.raises(ValueError, match="positive"):
        length_buckets(lengths, 0)


def test_bucketed_encoding_equals_one_pass_values_and_gradients(foundation, tmp_path):
    encoder = build_grouped_encoder(foundation, "lora", 1, _content(foundation), "toy", cache_dir=tmp_path,
                                    show_progress=False, seed=3)
    encoder.eval()  # no adapter dropout: both passes see the same function
    with torch.no_grad():
        for p in encoder.group_parameters(0):
            p.add_(0.05 * torch.randn_like(p))  # LoRA's B starts at zero; give the adapter a say
    items = torch.tensor([1, 5, 2, 9, 4, 7, 3, 11])
    results = []
    assert len(length_buckets(title_lengths(encoder.store.gather(items)), 3, slack=0.25)) > 1  # really split
    for bucket_size in (10_000, 3):
        encoder.bucket_size = bucket_size
        encoder.zero_grad()
        features = encoder.encode(items, 0)
        (features * torch.linspace(-1, 1, features.shape[1])).sum().backward()
        results.append((features.detach(), [p.grad.clone() for p in encoder.group_parameters(0)]))
    (one_pass, grads), (bucketed, bucket_grads) = results
    torch.testing.assert_close(bucketed, one_pass, atol=1e-6, rtol=1e-6)
    for a, b in zip(bucket_grads, grads, strict=True):  # sums over many rows: relative to the largest entry
        torch.testing.assert_close(a, b, atol=1e-5 * float(b.abs().max()), rtol=0)


def test_sorted_catalogue_encoding_equals_item_order(foundation, tmp_path):
    content = _content(foundation)
    encoder = build_grouped_encoder(foundation, "lora", 1, content, "toy", cache_dir=tmp_path,
                                    show_progress=False, seed=3)
    lengths = encoder.item_lengths()
    assert not torch.equal(torch.argsort(lengths, stable=True), torch.arange(len(lengths)))  # order differs
    sorted_table = encoder.encode_all(0, batch_size=4)
    encoder.eval()
    with torch.no_grad():  # the unsorted path: items in id order, one batch at a time
        unsorted = torch.cat([encoder.encode(rows, 0) for rows in torch.arange(encoder.n_items).split(4)])
    torch.testing.assert_close(sorted_table, unsorted, atol=1e-6, rtol=1e-6)


def _untrimmed_states(foundation, content, layers):
    """Per-layer summary states computed at the full cached width (77 tokens), in id order."""
    model = foundation.model.eval()
    ids, mask = content["input_ids"], content["attention_mask"]
    with torch.no_grad():
        if foundation.modalities == ("text",):
            hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            return torch.stack([masked_mean(hs[k], mask) for k in layers["text"]], dim=1)
        from recbole_perpeft.encoders.clip import eos_positions

        hs = model.text_model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        pos = eos_positions(ids, model.text_model.eos_token_id)
        rows = torch.arange(len(ids))
        return torch.stack([hs[k][rows, pos, :] for k in layers["text"]], dim=1)


def test_iisan_cache_sorted_and_trimmed_equals_untrimmed_states(foundation):
    content = _content(foundation)
    store = ItemContentStore(content, foundation)
    n_layers = foundation.num_hidden_layers()
    layers = {m: list(range(n + 1)) for m, n in n_layers.items()}
    widths = foundation.tower_widths()
    out = {m: np.zeros((store.n_items, len(layers[m]), widths[m]), dtype=np.float32) for m in widths}
    _fill_states(foundation, store, layers, out, batch_size=4, show_progress=False)
    expected = _untrimmed_states(foundation, content, layers)
    titled = content["has_title"]
    # The cache stores float16: compare at float16's resolution, row by row (the order is undone).
    torch.testing.assert_close(torch.from_numpy(out["text"])[titled], expected[titled].half().float(),
                               atol=2e-3, rtol=2e-3)
    assert not out["text"][~titled.numpy()].any()
    # Before rounding, one length-sorted, trimmed batch equals the untrimmed states to 1e-6.
    rows = store.sorted_batches(4)[0]
    trimmed = foundation.layer_states(store.gather(rows), layers)["text"]
    mask = titled[rows]
    torch.testing.assert_close(trimmed[mask], expected[rows][mask], atol=1e-6, rtol=1e-6)


def test_frozen_features_cache_equals_item_order(foundation, tmp_path):
    content = _content(foundation)
    encoder = build_grouped_encoder(foundation, "none", 1, content, "toy", cache_dir=tmp_path,
                                    show_progress=False)
    with torch.no_grad():
        expected = foundation.eval().encode(content)
    torch.testing.assert_close(encoder.features, expected, atol=1e-6, rtol=1e-6)
    assert title_lengths(content)[5] > title_lengths(content)[1]


# -- each distinct item through the encoder once per step and group --------------------------------


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_mmdemo(root / "mmsmall", n_users=300, n_items=200, seed=5)
    return str(root)


BACKENDS = {
    "lora": {},
    "ia3": {},
    "iisan": {},
    "none": {},
    "peft": {"peft_config": {"peft_type": "VERA", "r": 4}},
}


def _personalised_model(data_path, peft_type, loss_type, extra):
    from recbole.data import data_preparation

    from recbole_perpeft.model import PerPEFT
    from recbole_perpeft.run import build_config, create_dataset

    config = build_config("PerPEFT", "mmsmall", config_dict={
        **TINY_PERPEFT, "data_path": data_path, "peft_type": peft_type, "loss_type": loss_type,
        "num_negatives": 16, "n_groups": 2, "batch_mode": "mixed", **extra})
    train_data, _, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = PerPEFT(config, train_data._dataset)
    users = torch.arange(1, model.n_users)
    model.set_grouping(Grouping(users=users, group_of_user=users % 2, centroids=torch.zeros(2, model.hidden_size),
                                merged=0))
    return model, train_data


@pytest.mark.parametrize("loss_type", ["BCE", "sampled_softmax", "CE"])
@pytest.mark.parametrize("peft_type", list(BACKENDS))
def test_each_distinct_item_is_encoded_once_per_step_and_group(small_data, peft_type, loss_type):
    model, train_data = _personalised_model(small_data, peft_type, loss_type, BACKENDS[peft_type])
    encoder = model.items.encoder
    calls: list[tuple[int, torch.Tensor]] = []
    original = encoder.encode

    def spy(item_ids, group):
        calls.append((int(group), item_ids.detach().flatten().clone()))
        return original(item_ids, group)

    encoder.encode = spy
    # Rows reaching the foundation model itself (peft backends) or the side networks (IISAN).
    rows_in: list[int] = []
    if hasattr(encoder, "foundation"):
        inner = encoder.foundation.encode
        encoder.foundation.encode = lambda content: (rows_in.append(len(content["input_ids"])), inner(content))[1]
    elif peft_type == "iisan":
        for net in encoder.side_nets:
            net.register_forward_hook(lambda module, args, out: rows_in.append(len(out)))
    batch = train_data._dataset[torch.arange(48)]
    model.train()
    loss = model.calculate_loss(batch)
    loss.backward()
    groups = {g for g, _ in calls}
    assert groups == {0, 1}  # a mixed batch: both groups ran
    for group in groups:
        ids = torch.cat([ids for g, ids in calls if g == group])
        assert len(ids) == len(torch.unique(ids)), f"group {group} encoded an item twice"
    if rows_in:
        assert sum(rows_in) == sum(len(ids) for _, ids in calls)
    assert torch.isfinite(loss)


# -- mixed precision ----------------------------------------------------------------------------


def test_bad_mixed_precision_is_one_line_and_exit_2():
    from conftest import run_cli

    result = run_cli("--model=SASRec", "--dataset=ml-100k", "--mixed_precision=fp8")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "mixed_precision must be one of auto, bf16, fp16, no; got 'fp8'" in result.stderr


def test_auto_is_off_on_cpu_and_no_is_read_from_yaml_false():
    from recbole_perpeft.precision import resolve_mixed_precision

    assert resolve_mixed_precision("auto", "cpu") is None
    assert resolve_mixed_precision(False, "cpu") is None  # `--mixed_precision=no` arrives as False
    assert resolve_mixed_precision("BF16", "cpu") is torch.bfloat16


def _trainer(data_path, **overrides):
    from recbole.data import data_preparation

    from recbole_perpeft.model import PerPEFT
    from recbole_perpeft.run import build_config, create_dataset
    from recbole_perpeft.utils import get_trainer

    config = build_config("PerPEFT", "mmsmall", config_dict={
        **TINY_PERPEFT, "data_path": data_path, "n_groups": 1, "loss_type": "sampled_softmax",
        "num_negatives": 16, **overrides})
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = PerPEFT(config, train_data._dataset)
    return get_trainer(config["MODEL_TYPE"], config["model"])(config, model), train_data, valid_data


def test_bf16_trains_foundation_and_backbone_in_bf16_over_fp32_weights(small_data):
    trainer, train_data, valid_data = _trainer(small_data, mixed_precision="bf16")
    model = trainer.model
    seen: dict[str, set] = {"foundation": set(), "backbone": set()}
    foundation_linear = next(m for m in model.items.encoder.foundation.model.modules() if isinstance(m, torch.nn.Linear))
    backbone_linear = model.trm_encoder.layer[0].multi_head_attention.query
    foundation_linear.register_forward_hook(lambda m, a, out: seen["foundation"].add(out.dtype))
    backbone_linear.register_forward_hook(lambda m, a, out: seen["backbone"].add(out.dtype))
    before = [p.detach().clone() for p in model.items.group_parameters(0)]
    loss = trainer._train_epoch(train_data, 0)
    assert seen == {"foundation": {torch.bfloat16}, "backbone": {torch.bfloat16}}
    assert np.isfinite(loss)
    params = list(model.items.group_parameters(0))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    assert any(not torch.equal(a, b) for a, b in zip(before, params))
    seen["foundation"].clear()
    table = model.group_table(0)  # evaluation tables: encoded in bf16, scored in float32
    assert seen["foundation"] == {torch.bfloat16} and table.dtype == torch.float32


def test_fp16_scales_the_loss_unscales_before_clipping_and_resumes_the_scale(small_data, monkeypatch):
    import recbole_perpeft.trainer.epoch_loop as epoch_loop

    trainer, train_data, _ = _trainer(small_data, mixed_precision="fp16", clip_grad_norm={"max_norm": 1.0})
    assert trainer.scaler.is_enabled()
    norms = []
    original = epoch_loop.clip_grad_norm_

    def recording_clip(parameters, **kwargs):
        parameters = [p for p in parameters if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters]))))
        return original(parameters, **kwargs)

    monkeypatch.setattr(epoch_loop, "clip_grad_norm_", recording_clip)
    trainer._train_epoch(train_data, 0)
    scale = trainer.scaler.get_scale()
    assert norms and max(norms) < 1e3 < scale  # clipped gradients were unscaled (the scale is ~6.5e4)
    state = trainer.checkpoint_state(0)
    assert state["scaler"]["scale"] == scale
    again, _, _ = _trainer(small_data, mixed_precision="fp16")
    again.scaler.load_state_dict(state["scaler"])
    assert again.scaler.get_scale() == scale
