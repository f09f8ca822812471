"""CoCa behind the Backbone contract: the tiny CoCa config passes the whole backbone suite,
its token outputs and caption decoder are CoCa's own, and prompts work inside its towers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clapkit.testing import BackboneContract
from clapkit.testing import context as C
from clapkit_plugins.backbones.open_clip import TINY_COCA_MODEL, OpenClipBackbone, OpenClipConfig


class TestTinyCocaBackbone(BackboneContract):
    """The whole backbone suite on ``clapkit-tiny-coca`` (the registered test options build
    the tiny CLIP; this runs the same rules on the CoCa variant)."""

    components = ["open_clip"]

    def make(self, entry, ctx, grow=True, **changes):
        return C.build(entry, ctx, options={"model": TINY_COCA_MODEL}, **changes)


@pytest.fixture(scope="module")
def coca() -> OpenClipBackbone:
    return OpenClipBackbone(OpenClipConfig(model=TINY_COCA_MODEL))


def _images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_tiny_coca_is_a_coca_with_every_capability(coca):
    assert type(coca.model).__name__ == "CoCa"
    assert coca.capabilities == {"image_tokens", "text_tokens", "text_embedded",
                                 "deep_prompts", "text_decoder"}
    assert (coca.embed_dim, coca.text_width, coca.vision_width, coca.image_size) == \
        (32, 32, 64, 32)
    assert coca.vocab_size == 49408 and coca.image_token_width == 32
    assert sum(p.numel() for p in coca.parameters()) < 4_000_000


def test_encoders_are_unnormalised_and_tokens_are_cocas_own(coca):
    """CoCa normalises by default; the contract wants raw features. Token states are what
    CoCa's own ``_encode_image`` / ``_encode_text`` return, pooled equal to the encoders."""
    x, t = _images(), coca.tokenize(["a photo of a cat", "a dog"])
    with torch.no_grad():
        img, txt = coca.encode_image(x), coca.encode_text(t)
        ref_img, ref_img_tok = coca.model._encode_image(x, normalize=False)
        ref_txt, ref_txt_tok = coca.model._encode_text(t, normalize=False)
        it, tt = coca.encode_image_tokens(x), coca.encode_text_tokens(t)
    assert not torch.allclose(img.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(img, ref_img)
    torch.testing.assert_close(txt, ref_txt)
    torch.testing.assert_close(it.pooled, img)
    torch.testing.assert_close(tt.pooled, txt)
    torch.testing.assert_close(it.tokens, ref_img_tok)
    torch.testing.assert_close(tt.tokens, ref_txt_tok)
    assert t.shape[1] == 76 and tt.tokens.shape[1] == 76
    # padding mask: SOT + words + EOT
    assert tt.mask.sum(-1).tolist() == [int(t[0].argmax()) + 1, int(t[1].argmax()) + 1]


def test_decoder_gives_cocas_caption_logits(coca):
    """decode_text over the token states equals CoCa's teacher-forced forward."""
    x, t = _images(), coca.tokenize(["a photo of a cat", "a dog"])
    with torch.no_grad():
        ref = coca.model(x, t)["logits"]                         # text[:, :-1] -> [B,75,V]
        it, tt = coca.encode_image_tokens(x), coca.encode_text_tokens(t)
        got = coca.decode_text(it.tokens, tt.tokens[:, :-1])
    assert got.shape == (2, 75, 49408)
    torch.testing.assert_close(got, ref)


def _reference_coca_text(bb, emb, tokens, deep):
    """CoCa's text tower written out: CLS appended, causal + padding mask (the tower's own
    mask builder), deep[j] replacing positions 1..n as the input of block j, the CLS
    position pooled after ln_final."""
    t = bb.model.text
    x = emb.clone()
    x[:, 1:1 + deep[0].shape[0]] = deep[0]
    x = torch.cat([x, t.cls_emb.expand(x.shape[0], 1, -1)], 1)
    seq = x.shape[1]
    x = x + t.positional_embedding[:seq]
    mask = t.attn_mask[:seq, :seq].unsqueeze(0) + t._build_additive_mask(tokens, seq, x.dtype)
    for j, blk in enumerate(t.transformer.resblocks):
        if j >= 1 and deep[j] is not None:
            x = x.clone()
            x[:, 1:1 + deep[j].shape[0]] = deep[j]
        x = blk(x, attn_mask=mask)
    return t.ln_final(x[:, -1]) @ t.text_projection


def test_deep_prompts_inside_cocas_towers(coca):
    tokens = coca.tokenize(["X X X cat", "X X X dog"])
    g = torch.Generator().manual_seed(3)
    deep = [torch.randn(3, coca.text_width, generator=g) for _ in range(coca.text_layers)]
    emb = coca.token_embedding(tokens)
    with torch.no_grad():
        got = coca.encode_text_embedded(emb, tokens, deep)
        ref = _reference_coca_text(coca, emb, tokens, deep)
        plain = coca.encode_text(tokens)
        vis = coca.encode_image_prompted(_images(), [torch.randn(2, coca.vision_width,
                                                                 generator=g)])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)
    assert vis.shape == (2, 32) and torch.isfinite(vis).all()


def test_tiny_coca_evaluates_zero_shot_through_the_cli(tmp_path, capsys):
    """The zero-shot recipe (hand-crafted prompts, cosine head, no stages) with a CoCa
    backbone: `recipe check` passes and `eval` writes accuracy figures."""
    from clapkit.cli import main
    recipe = tmp_path / "coca.toml"
    zero_shot = Path(__file__).resolve().parents[1] / "recipes" / "zero_shot.toml"
    recipe.write_text(f'extends = "{zero_shot}"\n[backbone]\nplugin = "open_clip"\n'
                      f'model = "{TINY_COCA_MODEL}"\npretrained = ""\n')
    sets = ["--set", f'data.root="{tmp_path / "demo"}"', "--set",
            f'cache.dir="{tmp_path / "cache"}"']
    for argv in (["recipe", "check", str(recipe), *sets],
                 ["eval", str(recipe), "--split", "test", "--out", str(tmp_path / "ev"),
                  *sets]):
        with pytest.raises(SystemExit) as code:
            main(argv)
        assert code.value.code == 0, capsys.readouterr()
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert result["num_items"] > 0 and 0.0 <= result["top1"] <= 1.0
    assert sum(map(sum, result["confusion"])) == result["num_items"]
