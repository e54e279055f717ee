"""PEFT backends with one adapter per group: gradient routing, equality with peft, IISAN cache."""

from __future__ import annotations

import pytest
import torch
from helpers_encoders import toy_content

from recbole_perpeft.encoders import build_foundation_encoder
from recbole_perpeft.peft_backends import build_grouped_encoder


def _encoder(peft_type, tmp_path, n_groups=2, peft_config=None):
    foundation = build_foundation_encoder("tiny-clip", seed=3)
    content = toy_content(foundation)
    return build_grouped_encoder(foundation, peft_type, n_groups, content, "toy", peft_config=peft_config,
                                 cache_dir=tmp_path, show_progress=False, seed=3)


@pytest.mark.parametrize("peft_type", ["lora", "ia3", "iisan"])
def test_one_step_over_two_groups_trains_both_and_never_the_base(peft_type, tmp_path):
    encoder = _encoder(peft_type, tmp_path)
    base = {n: p.detach().clone() for n, p in encoder.named_parameters() if not p.requires_grad}
    items = torch.tensor([1, 2, 3, 4, 5])
    with torch.no_grad():  # zero-initialised up-projections (LoRA B, IISAN adapters) would hide gradients
        for group in (0, 1):
            for p in encoder.group_parameters(group):
                p.add_(0.01 * torch.randn_like(p))
    loss = encoder.encode(items, 0).pow(2).sum() + encoder.encode(items, 1).sin().sum()
    loss.backward()
    for group in (0, 1):
        grads = [p.grad for p in encoder.group_parameters(group)]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), group
    for name, parameter in encoder.named_parameters():
        if name in base:
            assert parameter.grad is None and torch.equal(parameter, base[name])


def test_lora_group_output_equals_peft_single_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    encoder = _encoder("lora", tmp_path)
    with torch.no_grad():
        for p in encoder.group_parameters(1):
            p.add_(0.05 * torch.randn_like(p))
    items = torch.tensor([1, 4, 6])

    # The same weights in a plain one-adapter peft model over a fresh copy of the base model.
    reference = build_foundation_encoder("tiny-clip", seed=3)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    reference.model = get_peft_model(reference.model, config)
    group_state = {n.replace("group_1", "default"): p for n, p in encoder.named_parameters() if "group_1" in n}
    loaded = 0
    for name, parameter in reference.model.named_parameters():
        for ours_name, value in group_state.items():
            if ours_name.endswith(name.split("base_model.model.", 1)[-1]):
                parameter.data.copy_(value)
                loaded += 1
    assert loaded == len(group_state) > 0
    reference.model.eval()
    encoder.eval()
    content = toy_content(reference)
    batch = {k: v[items] for k, v in content.items()}
    assert torch.allclose(reference.encode(batch), encoder.encode(items, 1), atol=1e-5)


def test_copy_group_makes_outputs_identical(tmp_path):
    encoder = _encoder("ia3", tmp_path, n_groups=3)
    with torch.no_grad():
        for p in encoder.group_parameters(2):
            p.mul_(1.5)
    items = torch.arange(1, 8)
    assert not torch.allclose(encoder.encode(items, 2), encoder.encode(items, 0))
    encoder.copy_group(0, 2)
    assert torch.equal(encoder.encode(items, 2), encoder.encode(items, 0))


def test_generic_peft_config_dora(tmp_path):
    encoder = _encoder("peft", tmp_path, peft_config={
        "peft_type": "LORA", "r": 2, "lora_alpha": 4, "use_dora": True, "target_modules": ["q_proj", "v_proj"]})
    assert encoder.trainable_parameters_per_group() > 0
    out = encoder.encode(torch.tensor([1, 2]), 1)
    out.sum().backward()
    assert any(p.grad is not None for p in encoder.group_parameters(1))


def test_iisan_states_cached_once_and_rebuilt_when_damaged(tmp_path):
    _encoder("iisan", tmp_path)
    files = sorted(p for p in tmp_path.rglob("*.npy"))
    assert files
    stamps = {p: p.stat().st_mtime_ns for p in files}
    _encoder("iisan", tmp_path)  # reused: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    files[0].write_bytes(files[0].read_bytes()[:64])  # truncate one
    with pytest.warns(UserWarning):
        _encoder("iisan", tmp_path)
    assert files[0].stat().st_size > 64
