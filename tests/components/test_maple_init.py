"""MaPLe's initialisation against muzairkhattak/multimodal-prompt-learning
(``trainers/maple.py``, ``MultiModalPromptLearner``), rebuilt from its formula: the first
layer's text->vision projection ``proj`` is its own ``nn.Linear``; the deeper ones are
``_get_clones(single_layer, depth - 1)``, deep copies of one initialised layer, so they start
identical and train apart. And the ``n_ctx`` / ``ctx_init`` rules: the phrase starts the
first text prompt; the reference ignores it for ``n_ctx > 4`` (random start, ``"X"``
placeholders), clapkit raises where the phrase is too short and says how to get that."""

from __future__ import annotations

import pytest
import torch

from clapkit.errors import ClapkitError
from clapkit_plugins.prompts.maple import MapleConfig, build
from prompt_fixtures import DEMO_CLASSES, MODELS, backbone, context


class Deeper:
    """The tiny backbone, reporting 4 blocks per tower (MaplePrompt's construction reads
    only widths, depths and the tokenizer; nothing is encoded)."""

    text_layers = vision_layers = 4

    def __init__(self, bb):
        self._bb = bb

    def __getattr__(self, name):
        return getattr(self._bb, name)


def _deep(model: str, depth: int, **options):
    bb = backbone(model)
    ctx = context(model)
    ctx = type(ctx)(backbone=Deeper(bb), class_names=ctx.class_names)
    return build(MapleConfig(depth=depth, **options), ctx)


def _same(a: torch.nn.Linear, b: torch.nn.Linear) -> bool:
    return torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


@pytest.mark.parametrize("model", MODELS)
def test_deep_projections_start_as_clones_of_one_layer(model):
    torch.manual_seed(0)
    p = _deep(model, depth=4)
    first, *deep = p.proj
    assert len(deep) == 3
    assert all(_same(deep[0], d) for d in deep[1:])          # clones of one layer
    assert not _same(first, deep[0])                           # the first layer is its own
    # clones, not shared: each layer has its own tensors and trains apart
    assert len({id(d.weight) for d in deep}) == 3
    assert all(d.weight.data_ptr() != deep[0].weight.data_ptr() for d in deep[1:])
    # the reference's visual deep prompts: one layer applied to every deeper text prompt
    single = deep[0]
    with torch.no_grad():
        got = p.vision_prompts()
        want = [first(p.ctx)] + [single(t) for t in p.deep_text]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    loss = sum(v.sum() for v in p.vision_prompts()[1:]) + p.proj[2](p.deep_text[1]).sum()
    loss.backward()
    torch.optim.SGD(p.parameters(), lr=0.1).step()
    assert not _same(deep[0], deep[1])                         # independent after a step


def test_independent_option_draws_every_layer():
    torch.manual_seed(0)
    p = _deep(MODELS[0], depth=4, deep_proj_init="independent")
    deep = list(p.proj)[1:]
    assert not any(_same(deep[0], d) for d in deep[1:])
    with pytest.raises(ValueError):
        MapleConfig(deep_proj_init="shared")


def test_two_layer_model_is_unchanged_in_shape():
    p = build(MapleConfig(depth=2), context(MODELS[0]))
    assert len(p.proj) == 2 and p.proj[0].weight.shape == (128, 32)


@pytest.mark.parametrize("n_ctx", [5, 6])
def test_n_ctx_above_the_phrase_raises_and_names_the_reference_fallback(n_ctx):
    with pytest.raises(ClapkitError, match='ctx_init = ""') as exc:
        build(MapleConfig(n_ctx=n_ctx, depth=1, ctx_init="a photo of a"), context(MODELS[0]))
    assert "n_ctx > 4" in str(exc.value)


def test_random_start_is_the_reference_fallback_prompt():
    """``ctx_init = ""`` with n_ctx = 6: the reference's ``n_ctx > 4`` branch, prompt
    ``"X X X X X X <name>."`` and N(0, 0.02^2) vectors."""
    bb = backbone(MODELS[0])
    torch.manual_seed(0)
    p = build(MapleConfig(n_ctx=6, depth=1, ctx_init=""), context(MODELS[0]))
    want = bb.tokenize([" ".join(["X"] * 6) + f" {c}." for c in DEMO_CLASSES])
    assert torch.equal(p.tokens, want)
    assert p.ctx.shape == (6, bb.text_width) and 0.01 < float(p.ctx.detach().std()) < 0.03


def test_long_phrase_with_n_ctx_above_4_keeps_the_phrase():
    """Where the reference would drop the phrase (n_ctx > 4), clapkit starts from its first
    n_ctx tokens (a documented difference, docs/fidelity.md)."""
    bb = backbone(MODELS[0])
    phrase = "a blurry photo of the big"
    p = build(MapleConfig(n_ctx=5, depth=1, ctx_init=phrase), context(MODELS[0]))
    tok = bb.tokenize([phrase])
    with torch.no_grad():
        want = bb.token_embedding(tok)[0, 1:6].float()
    torch.testing.assert_close(p.ctx.detach(), want)
