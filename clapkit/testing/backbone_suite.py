"""The backbone suite: pooled encoders, preprocessing, fingerprint, and every declared
capability (token states, caption decoder, prompts inside the towers).

A capability the backbone declares is checked against the pooled encoders (pooled token
outputs equal ``encode_image`` / ``encode_text``; the prompt hooks without prompts equal
them too); one it does not declare must be refused with a :class:`ClapkitError` naming the
backbone, so a component that needs it fails at build, not at its first step.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from ..errors import ClapkitError
from ..interfaces import BACKBONE_CAPABILITIES, Backbone, TokenStates
from .base import ModuleContract, expect_close, expect_shape, who

#: the int attributes a backbone must give, always or with a capability
_SIZES: dict[str | None, tuple[str, ...]] = {
    None: ("embed_dim", "image_size"),
    "text_embedded": ("text_width", "text_layers"),
    "deep_prompts": ("vision_width", "vision_layers"),
    "image_tokens": ("image_token_width",),
    "text_tokens": ("text_token_width",),
    "text_decoder": ("vocab_size",),
}


def _images(m: Backbone, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, m.image_size, m.image_size,
                       generator=torch.Generator().manual_seed(seed))


def _texts(m: Backbone) -> torch.Tensor:
    return m.tokenize(["a photo of a small cat", "ox"])


class BackboneContract(ModuleContract):
    kind = "backbone"
    base = Backbone

    def inputs(self, m, ctx, g):
        x = torch.randn(2, 3, m.image_size, m.image_size, generator=g)
        return x, m.tokenize(["a cat", "a dog"])

    def call(self, m, args, step):
        """The pooled encoders, then each declared token output (so the shared checks --
        determinism, dtypes, devices, state -- cover them too)."""
        x, tokens = args
        out: dict[str, Any] = {"image": m.encode_image(x), "text": m.encode_text(tokens),
                               "scale": m.logit_scale}
        if "image_tokens" in m.capabilities:
            out["image_tokens"] = m.encode_image_tokens(x).tokens
        if "text_tokens" in m.capabilities:
            out["text_tokens"] = m.encode_text_tokens(tokens).tokens
        if "text_decoder" in m.capabilities and {"image_tokens", "text_tokens"} \
                <= m.capabilities:
            out["caption_logits"] = m.decode_text(out["image_tokens"], out["text_tokens"])
        return out

    def check_output(self, entry, m, out, ctx, step):
        expect_shape(entry, "encode_image output", out["image"], (2, m.embed_dim))
        expect_shape(entry, "encode_text output", out["text"], (2, m.embed_dim))
        scale = out["scale"]
        assert scale.numel() == 1 and float(scale.detach()) > 0, \
            f"{who(entry)}: logit_scale {scale}"

    # -- basics ------------------------------------------------------------------------------

    def test_transforms_make_model_input(self, entry, contract_ctx):
        from PIL import Image
        m = self.make(entry, contract_ctx)
        im = Image.new("RGB", (50, 37), (120, 30, 200))
        for train in (True, False):
            expect_shape(entry, f"transform({train}) output", m.transform(train)(im),
                         (3, m.image_size, m.image_size))

    def test_fingerprint_is_stable(self, entry, contract_ctx):
        torch.manual_seed(0)
        a = self.make(entry, contract_ctx)
        b = copy.deepcopy(a)
        assert isinstance(a.fingerprint(), str) and a.fingerprint() == b.fingerprint(), \
            f"{who(entry)}: fingerprint() is not a stable string"

    def test_tokenize(self, entry, contract_ctx):
        tok = self.make(entry, contract_ctx).tokenize(["a", "b c", "d"])
        assert tok.dtype == torch.long and tok.dim() == 2 and tok.shape[0] == 3, \
            f"{who(entry)}: tokenize gave {tok.dtype} {tuple(tok.shape)}, expected long [3,L]"

    # -- capabilities ------------------------------------------------------------------------

    def test_capabilities_are_known_names(self, entry, contract_ctx):
        caps = self.make(entry, contract_ctx).capabilities
        assert isinstance(caps, frozenset) and all(isinstance(c, str) for c in caps), \
            f"{who(entry)}: capabilities must be a frozenset of names, got {caps!r}"
        unknown = sorted(caps - set(BACKBONE_CAPABILITIES))
        assert not unknown, (f"{who(entry)}: unknown capability {unknown[0]!r} (known: "
                             f"{', '.join(sorted(BACKBONE_CAPABILITIES))})")
        assert "deep_prompts" not in caps or "text_embedded" in caps, \
            f"{who(entry)}: 'deep_prompts' is declared without 'text_embedded'"

    def test_widths_and_depths(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx)
        for cap, attrs_ in _SIZES.items():
            if cap is not None and cap not in m.capabilities:
                continue
            for attr in attrs_:
                v = getattr(m, attr, None)
                assert isinstance(v, int) and not isinstance(v, bool) and v > 0, \
                    f"{who(entry)}: {attr} must be a positive int, got {v!r}"
        if "text_embedded" in m.capabilities:
            tokens = m.tokenize(["a cat"])
            expect_shape(entry, "token_embedding output", m.token_embedding(tokens),
                         (1, tokens.shape[1], m.text_width))

    def test_missing_capabilities_are_refused_naming_the_backbone(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx).eval()
        x, t = _images(m), _texts(m)
        calls: dict[str, Any] = {
            "image_tokens": lambda: m.encode_image_tokens(x),
            "text_tokens": lambda: m.encode_text_tokens(t),
            "text_embedded": lambda: m.token_embedding(t),
            "deep_prompts": lambda: m.encode_image_prompted(x, [torch.zeros(1, 4)]),
            "text_decoder": lambda: m.decode_text(torch.zeros(2, 3, 4), torch.zeros(2, 5, 4)),
        }
        for cap, call in calls.items():
            if cap in m.capabilities:
                continue
            try:
                with torch.no_grad():
                    call()
            except ClapkitError as exc:
                msg = str(exc)
            else:
                pytest.fail(f"{who(entry)}: '{cap}' is not in capabilities but its method "
                            "works: declare it in capabilities (or refuse with "
                            "Backbone.require)")
            assert cap in msg and m.describe() in msg, (
                f"{who(entry)}: without capability '{cap}' the refusal must name it and the "
                f"backbone ({m.describe()}): {msg}")
        missing = sorted(set(BACKBONE_CAPABILITIES) - m.capabilities)
        if missing:
            with pytest.raises(ClapkitError) as exc:
                m.require(*missing, who="a test component")
            msg = str(exc.value)
            assert m.describe() in msg and all(c in msg for c in missing), \
                f"{who(entry)}: require() must name the backbone and what it lacks: {msg}"

    def test_image_tokens_pool_to_encode_image(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx).eval()
        if "image_tokens" not in m.capabilities:
            return
        x = _images(m)
        with torch.no_grad():
            want = m.encode_image(x)
            out = m.encode_image_tokens(x)
            alone = m.encode_image_tokens(x[1:])
        assert isinstance(out, TokenStates), \
            f"{who(entry)}: encode_image_tokens returned {type(out).__name__}, not TokenStates"
        expect_close(entry, "encode_image_tokens(x).pooled vs encode_image(x)", out.pooled, want)
        n = out.tokens.shape[1] if out.tokens.dim() == 3 else -1
        expect_shape(entry, "image token states", out.tokens, (2, n, m.image_token_width))
        expect_shape(entry, "image token mask", out.mask, (2, n))
        assert out.mask.dtype == torch.bool, f"{who(entry)}: the image token mask is not bool"
        expect_close(entry, "image tokens of one image alone vs in a batch", alone.tokens,
                     out.tokens[1:])
        assert not torch.allclose(out.tokens[0], out.tokens[1]), \
            f"{who(entry)}: two different images give the same token states"

    def test_text_tokens_pool_to_encode_text(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx).eval()
        if "text_tokens" not in m.capabilities:
            return
        t = _texts(m)
        with torch.no_grad():
            want = m.encode_text(t)
            out = m.encode_text_tokens(t)
            alone = m.encode_text_tokens(t[1:])
        assert isinstance(out, TokenStates), \
            f"{who(entry)}: encode_text_tokens returned {type(out).__name__}, not TokenStates"
        expect_close(entry, "encode_text_tokens(t).pooled vs encode_text(t)", out.pooled, want)
        n = out.tokens.shape[1] if out.tokens.dim() == 3 else -1
        expect_shape(entry, "text token states", out.tokens, (2, n, m.text_token_width))
        expect_shape(entry, "text padding mask", out.mask, (2, n))
        mask = out.mask
        assert mask.dtype == torch.bool, f"{who(entry)}: the text padding mask is not bool"
        real = mask.sum(-1)
        assert bool(mask[:, 0].all()) and torch.equal(
            mask, torch.arange(n)[None, :] < real[:, None]), \
            f"{who(entry)}: the text padding mask must be True from position 0 up to the end"
        assert int(real[1]) < int(real[0]) <= n, (
            f"{who(entry)}: the padding mask does not follow the text (real tokens "
            f"{real.tolist()} of {n} for a 6-word and a 1-word text)")
        keep = mask[1]
        expect_close(entry, "real text token states alone vs batched with a longer text",
                     alone.tokens[0][keep], out.tokens[1][keep])

    def test_text_decoder_is_causal_and_reads_the_image(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx).eval()
        if "text_decoder" not in m.capabilities:
            return
        x = _images(m)
        with torch.no_grad():
            img = m.encode_image_tokens(x).tokens
            txt = m.encode_text_tokens(_texts(m)).tokens
            logits = m.decode_text(img, txt)
            k = 2
            changed = txt.clone()
            changed[:, k] += 1.0
            later = m.decode_text(img, changed)
            other = m.decode_text(img.flip(0), txt)
        expect_shape(entry, "decode_text logits", logits, (2, txt.shape[1], m.vocab_size))
        expect_close(entry, "decoder logits before a changed text position", later[:, :k],
                     logits[:, :k])
        assert not torch.allclose(later[:, k], logits[:, k]), \
            f"{who(entry)}: the decoder's logits at a position ignore that position's text"
        assert not torch.allclose(other, logits), \
            f"{who(entry)}: the decoder's logits do not depend on the image tokens"

    # -- prompts inside the towers -----------------------------------------------------------

    def test_text_embedded_equals_encode_text(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx).eval()
        if "text_embedded" not in m.capabilities:
            return
        t = m.tokenize(["a photo of a cat", "a dog"])
        with torch.no_grad():
            want = m.encode_text(t)
            got = m.encode_text_embedded(m.token_embedding(t), t)
            none = m.encode_text_embedded(m.token_embedding(t), t, [None] * m.text_layers)
        expect_close(entry, "encode_text_embedded(token_embedding(t), t) vs encode_text(t)",
                     got, want)
        expect_close(entry, "encode_text_embedded with only None deep prompts", none, want)

    def test_image_prompted_without_prompts_equals_encode_image(self, entry, contract_ctx):
        m = self.make(entry, contract_ctx).eval()
        if "deep_prompts" not in m.capabilities:
            return
        x = _images(m)
        with torch.no_grad():
            want = m.encode_image(x)
            got = m.encode_image_prompted(x, [])
            prompt = torch.randn(2, m.vision_width, generator=torch.Generator().manual_seed(1))
            one = m.encode_image_prompted(x, [prompt])
            passed = m.encode_image_prompted(x, [prompt, None])
        expect_close(entry, "encode_image_prompted(x, []) vs encode_image(x)", got, want)
        expect_shape(entry, "encode_image_prompted output", one, (2, m.embed_dim))
        assert not torch.allclose(one, want), \
            f"{who(entry)}: a vision prompt at block 0 does not change the image features"
        expect_close(entry, "a None deep prompt (previous prompt passes through)", passed, one)
