"""The `open_clip` backbone: contract shapes, loading paths, fingerprints, tower access."""

from __future__ import annotations

import attrs
import open_clip
import pytest
import torch
from PIL import Image

from clapkit.errors import ClapkitError
from clapkit.interfaces import Backbone, BuildContext
from clapkit.plugins import get_plugin_host
from clapkit_plugins.backbones.open_clip import (TINY_MODEL, TINY_TEXTWIDE_MODEL,
                                                OpenClipBackbone, OpenClipConfig, build,
                                                open_clip_module)


@pytest.fixture(scope="module")
def tiny() -> OpenClipBackbone:
    return OpenClipBackbone(OpenClipConfig(model=TINY_MODEL))


def images(n: int = 3, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_registered_with_tiny_test_options():
    host = get_plugin_host()
    entry = host.registries.backbone.get("open_clip")
    assert entry.test_options(None) == {"model": TINY_MODEL}
    m = entry.factory(entry.config_cls(**entry.test_options(None)), BuildContext(host=host))
    assert isinstance(m, Backbone)


def test_tiny_config_is_small_and_offline(tiny):
    assert TINY_MODEL in open_clip.list_models()
    n_params = sum(p.numel() for p in tiny.parameters())
    vocab = tiny.model.token_embedding.weight.shape[0]
    assert vocab == 49408                      # the BPE tokenizer emits ids up to 49407
    assert n_params - vocab * tiny.text_width < 600_000   # everything but the token table
    assert tiny.embed_dim == 128 and tiny.image_size == 64


def test_shapes_dtypes_and_frozen(tiny):
    tokens = tiny.tokenize(["a photo of a cat", "a dog", "an owl in the night"])
    assert tokens.shape == (3, 77) and tokens.dtype == torch.long
    assert int(tokens.max()) == 49407                       # EOT
    with torch.no_grad():
        img, txt = tiny.encode_image(images()), tiny.encode_text(tokens)
    assert img.shape == (3, 128) and txt.shape == (3, 128)
    assert img.dtype == txt.dtype == torch.float32
    assert not any(p.requires_grad for p in tiny.parameters())
    assert tiny.logit_scale.shape == () and tiny.logit_scale.item() == pytest.approx(1 / 0.07,
                                                                                    rel=1e-4)
    x = tiny.transform(False)(Image.new("RGB", (80, 50), (200, 30, 10)))
    assert x.shape == (3, 64, 64)
    assert tiny.transform(True) is not tiny.transform(False)


def test_random_init_is_deterministic_under_seed_option():
    a = OpenClipBackbone(OpenClipConfig(model=TINY_MODEL, seed=5))
    torch.manual_seed(123)                       # the global RNG does not matter
    b = OpenClipBackbone(OpenClipConfig(model=TINY_MODEL, seed=5))
    c = OpenClipBackbone(OpenClipConfig(model=TINY_MODEL, seed=6))
    x = images()
    with torch.no_grad():
        assert torch.equal(a.encode_image(x), b.encode_image(x))
        assert not torch.allclose(a.encode_image(x), c.encode_image(x))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_local_checkpoint_round_trip_and_fingerprints(tiny, tmp_path):
    ckpt = tmp_path / "mine.pt"
    torch.save(tiny.model.state_dict(), ckpt)
    loaded = build(OpenClipConfig(model=TINY_MODEL, pretrained=str(ckpt), seed=99),
                   BuildContext())
    tokens = tiny.tokenize(["a cat", "a dog"])
    x = images()
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x), tiny.encode_image(x))
        assert torch.equal(loaded.encode_text(tokens), tiny.encode_text(tokens))
    fp = loaded.fingerprint()
    assert fp != tiny.fingerprint()                          # file identity vs random marker
    # the same bytes at another path share the fingerprint; other weights never do
    copy = tmp_path / "copy.pt"
    copy.write_bytes(ckpt.read_bytes())
    assert build(OpenClipConfig(model=TINY_MODEL, pretrained=str(copy)),
                 BuildContext()).fingerprint() == fp
    other = OpenClipBackbone(OpenClipConfig(model=TINY_MODEL, seed=1))
    ckpt2 = tmp_path / "other.pt"
    torch.save({"state_dict": other.model.state_dict()}, ckpt2)   # wrapped form works too
    b2 = build(OpenClipConfig(model=TINY_MODEL, pretrained=str(ckpt2)), BuildContext())
    assert b2.fingerprint() != fp
    with torch.no_grad():
        assert torch.equal(b2.encode_image(x), other.encode_image(x))


def test_fingerprint_follows_weights_and_preprocessing(tiny):
    fp = tiny.fingerprint()
    assert fp == tiny.fingerprint() and len(fp) == 24
    twin = OpenClipBackbone(OpenClipConfig(model=TINY_MODEL))
    # loading identical weights keeps the fingerprint (a resumed frozen backbone keeps its cache)
    twin.load_state_dict(tiny.state_dict())
    assert twin.fingerprint() == fp
    # loading different weights changes it
    changed = {k: v.clone() for k, v in tiny.state_dict().items()}
    changed["model.visual.proj"] += 0.01
    twin.load_state_dict(changed)
    assert twin.fingerprint() != fp
    fp16 = OpenClipBackbone(OpenClipConfig(model=TINY_MODEL, precision="bf16"))
    assert fp16.fingerprint() != fp
    with torch.no_grad():
        assert fp16.encode_image(images()).dtype == torch.float32


def test_bad_names_are_clear_errors(tmp_path):
    with pytest.raises(ClapkitError, match=r"unknown open_clip model 'ViT-B-3'.*ViT-B-32"):
        OpenClipBackbone(OpenClipConfig(model="ViT-B-3"))
    with pytest.raises(ClapkitError, match=r"unknown open_clip model 'clapkit-tin'.*clapkit-tiny"):
        OpenClipBackbone(OpenClipConfig(model="clapkit-tin"))
    missing = tmp_path / "nope" / "weights.pt"
    with pytest.raises(ClapkitError, match=f"checkpoint file not found: {missing}"):
        OpenClipBackbone(OpenClipConfig(model=TINY_MODEL, pretrained=str(missing)))
    with pytest.raises(ClapkitError, match="neither a tag"):
        OpenClipBackbone(OpenClipConfig(model=TINY_MODEL, pretrained="openai"))
    bad = tmp_path / "bad.pt"
    torch.save({"nothing": torch.zeros(1)}, bad)
    with pytest.raises(ClapkitError, match=str(bad)):
        OpenClipBackbone(OpenClipConfig(model=TINY_MODEL, pretrained=str(bad)))
    with pytest.raises(ValueError):
        OpenClipConfig(model=TINY_MODEL, precision="fp8")


def test_manual_towers_equal_encoders_without_prompts(tiny):
    tokens = tiny.tokenize(["a photo of a cat", "x", "a much longer sentence about owls"])
    x = images()
    with torch.no_grad():
        t_ref, i_ref = tiny.encode_text(tokens), tiny.encode_image(x)
        t = tiny.encode_text_embedded(tiny.token_embedding(tokens), tokens)
        i = tiny.encode_image_prompted(x, None)
        i_empty = tiny.encode_image_prompted(x, [])
    assert tiny.token_embedding(tokens).shape == (3, 77, tiny.text_width)
    # the manual text pass skips the padding after the last EOT (causal mask): same maths,
    # float round-off only
    assert (t - t_ref).abs().max().item() < 1e-5
    assert (i - i_ref).abs().max().item() == 0.0
    assert (i_empty - i_ref).abs().max().item() == 0.0


def _reference_text_with_deep_prompts(bb, emb, tokens, deep):
    """MaPLe's text loop written out block by block: deep[j] is the input of block j."""
    m = bb.model
    x = emb.clone()
    if deep and deep[0] is not None:
        x[:, 1:1 + deep[0].shape[0]] = deep[0]
    x = x + m.positional_embedding
    for j, blk in enumerate(m.transformer.resblocks):
        if 1 <= j < len(deep) and deep[j] is not None:
            x = x.clone()
            x[:, 1:1 + deep[j].shape[0]] = deep[j]
        x = blk(x, attn_mask=m.attn_mask)
    x = m.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(-1)]
    return x @ m.text_projection


def _reference_vision_with_deep_prompts(bb, imgs, deep):
    v = bb.model.visual
    x = v.conv1(imgs).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], 1) + v.positional_embedding
    n = deep[0].shape[0]
    x = v.ln_pre(torch.cat([x, deep[0].expand(x.shape[0], -1, -1)], 1))
    for j, blk in enumerate(v.transformer.resblocks):
        if 1 <= j < len(deep) and deep[j] is not None:
            x = x.clone()
            x[:, -n:] = deep[j]
        x = blk(x)
    return v.ln_post(x[:, 0]) @ v.proj


@pytest.fixture(scope="module", params=[TINY_MODEL, TINY_TEXTWIDE_MODEL])
def any_tiny(request) -> OpenClipBackbone:
    return OpenClipBackbone(OpenClipConfig(model=request.param))


def test_second_tiny_config_has_other_widths_and_depths(any_tiny):
    bb = any_tiny
    assert bb.text_width == bb.model.token_embedding.weight.shape[1]
    assert bb.vision_width == bb.model.visual.class_embedding.shape[-1]
    assert bb.text_layers == len(bb.model.transformer.resblocks)
    assert bb.vision_layers == len(bb.model.visual.transformer.resblocks)
    if bb.cfg.model == TINY_TEXTWIDE_MODEL:
        assert (bb.text_width, bb.vision_width, bb.text_layers, bb.vision_layers,
                bb.embed_dim) == (64, 48, 2, 3, 96)
    else:
        assert (bb.text_width, bb.vision_width) == (32, 128)


def test_deep_prompts_follow_the_one_convention_and_carry_gradients(any_tiny):
    tiny = any_tiny
    tokens = tiny.tokenize(["X X X X cat", "X X X X dog"])
    gen = torch.Generator().manual_seed(1)
    tdeep = [torch.randn(4, tiny.text_width, generator=gen, requires_grad=True)
             for _ in range(tiny.text_layers)]
    vdeep = [torch.randn(3, tiny.vision_width, generator=gen, requires_grad=True)
             for _ in range(tiny.vision_layers)]
    emb = tiny.token_embedding(tokens)
    out_t = tiny.encode_text_embedded(emb, tokens, tdeep)
    out_v = tiny.encode_image_prompted(images(2), vdeep)
    with torch.no_grad():
        ref_t = _reference_text_with_deep_prompts(tiny, emb, tokens, tdeep)
        ref_v = _reference_vision_with_deep_prompts(tiny, images(2), vdeep)
        plain_t = tiny.encode_text(tokens)
    torch.testing.assert_close(out_t, ref_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_v, ref_v, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out_t, plain_t, atol=1e-3)
    (out_t.sum() + out_v.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tdeep + vdeep)
    assert all(p.grad is None for p in tiny.parameters())
    with torch.no_grad():
        # per-class text prompts [C,n,W] and per-image vision prompts [B,n,W] are accepted
        per_class = [p.detach().expand(2, -1, -1) for p in tdeep]
        torch.testing.assert_close(tiny.encode_text_embedded(emb, tokens, per_class),
                                   out_t.detach())
        # entry 0 replaces the tokens after SOT: giving the embeddings already holding it
        # is the same as giving it as deep_prompts[0]
        emb0 = emb.clone()
        emb0[:, 1:5] = tdeep[0]
        torch.testing.assert_close(
            tiny.encode_text_embedded(emb0, tokens, [None] + [p.detach() for p in tdeep[1:]]),
            out_t.detach())
        # a None entry lets the previous block's prompt outputs pass through
        skip = [p.detach() for p in vdeep]
        skip[1] = None
        torch.testing.assert_close(tiny.encode_image_prompted(images(2), skip),
                                   _reference_vision_with_deep_prompts(tiny, images(2), skip),
                                   rtol=1e-5, atol=1e-5)


def test_deep_prompt_errors_are_clear(tiny):
    tokens = tiny.tokenize(["X X cat"])
    emb = tiny.token_embedding(tokens)
    too_many = [torch.zeros(2, tiny.text_width)] * (tiny.text_layers + 1)
    with pytest.raises(ClapkitError, match=r"3 deep prompts for the text tower, which has 2"):
        tiny.encode_text_embedded(emb, tokens, too_many)
    with pytest.raises(ClapkitError, match=r"vision tower, which has 2 blocks"):
        tiny.encode_image_prompted(images(1), [torch.zeros(2, tiny.vision_width)] * 3)
    with pytest.raises(ClapkitError, match=r"deep_prompts\[0\] is None"):
        tiny.encode_image_prompted(images(1), [None, torch.zeros(2, tiny.vision_width)])


def test_custom_text_clip_towers(tmp_path):
    open_clip_module()                           # registers the repository's tiny configs
    cfg = open_clip.get_model_config(TINY_MODEL)
    cfg["custom_text"] = True
    path = tmp_path / "clapkit-tiny-custom.json"
    import json
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    bb = OpenClipBackbone(OpenClipConfig(model="clapkit-tiny-custom"))
    assert type(bb.model).__name__ == "CustomTextCLIP"
    tokens = bb.tokenize(["a cat", "a dog"])
    with torch.no_grad():
        ref = bb.encode_text(tokens)
        out = bb.encode_text_embedded(bb.token_embedding(tokens), tokens)
    assert (out - ref).abs().max().item() < 1e-5
    assert bb.text_width == 32


def test_config_is_frozen_attrs():
    cfg = OpenClipConfig(model=TINY_MODEL)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.model = "ViT-B-32"  # type: ignore[misc]
