"""CoOp with ``position = "middle"`` / ``"front"`` against KaiyangZhou/CoOp's
``PromptLearner`` rebuilt from its formula: the prompt string ``"X .. X <name>."`` is
tokenised by open_clip's tokenizer, ``name_len`` is the token count of the name tokenised
alone, and the class tokens are ``suffix[:name_len]`` of that string's token embeddings.

A name ending in punctuation (``"jeep (car)"``) merges its ``)`` with the full stop into one
BPE token; the reference then moves that merged token with the name."""

from __future__ import annotations

import pytest
import torch

from clapkit_plugins.prompts.coop import CoOpConfig, build, layout_index
from prompt_fixtures import MODELS, backbone, context, ref_encode

CLASSES = ["jeep (car)", "solid circle", "mr. t", "car)"]
N_CTX = 4


def ref_prompts(bb, ctx: torch.Tensor, names: list[str], position: str) -> torch.Tensor:
    """The reference ``PromptLearner.forward`` (shared context ``[n,W]``)."""
    prompts = [" ".join(["X"] * N_CTX) + " " + n + "." for n in names]
    tokens = bb.tokenize(prompts)
    with torch.no_grad():
        emb = bb.token_embedding(tokens).float()
    prefix, suffix = emb[:, :1], emb[:, 1 + N_CTX:]
    rows = []
    for i, name in enumerate(names):
        t = bb.tokenize([name])[0]
        name_len = int(t.argmax()) - 1                       # len(_tokenizer.encode(name))
        cls_i, suf_i = suffix[i, :name_len], suffix[i, name_len:]
        if position == "middle":
            h = N_CTX // 2
            rows.append(torch.cat([prefix[i], ctx[:h], cls_i, ctx[h:], suf_i]))
        else:
            rows.append(torch.cat([prefix[i], cls_i, ctx, suf_i]))
    return torch.stack(rows), tokens


def test_the_reference_merges_the_closing_bracket_with_the_full_stop():
    bb = backbone(MODELS[0])
    full = bb.tokenize(["X X X X jeep (car)."])[0]
    alone = bb.tokenize(["jeep (car)"])[0]
    # SOT, 4 X, jeep ( car )., EOT: one token fewer than X*4 + name + "."
    assert int(full.argmax()) - 1 == N_CTX + int(alone.argmax()) - 1


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("position", ["middle", "front"])
def test_middle_and_front_equal_the_reference_with_punctuation(model, position):
    bb = backbone(model)
    p = build(CoOpConfig(n_ctx=N_CTX, position=position), context(model, CLASSES))
    with torch.no_grad():
        p.ctx.normal_(generator=torch.Generator().manual_seed(3))
        want_emb, tokens = ref_prompts(bb, p.ctx, CLASSES, position)
        got_emb = p.prompt_embeddings()
        assert torch.equal(p.tokens, tokens)
        torch.testing.assert_close(got_emb, want_emb, rtol=0, atol=0)
        got = p().text
        want = ref_encode(bb, want_emb, tokens)
    assert (got - want).abs().max().item() < 1e-5
    # the older layout (name = every token before a separate full stop) differs on
    # "jeep (car)": the check above can fail
    old = layout_index(p.tokens.argmax(-1), N_CTX, p.tokens.shape[1], position)
    assert not torch.equal(old[0], p.index[0])
    assert torch.equal(old[1], p.index[1])                 # "solid circle." unaffected


def test_end_position_is_unaffected():
    bb = backbone(MODELS[0])
    p = build(CoOpConfig(n_ctx=N_CTX, position="end"), context(MODELS[0], CLASSES))
    with torch.no_grad():
        emb = p.prompt_embeddings()
        tok = bb.tokenize([" ".join(["X"] * N_CTX) + f" {c}." for c in CLASSES])
        want = bb.token_embedding(tok).float()
        want[:, 1:1 + N_CTX] = p.ctx
    torch.testing.assert_close(emb, want, rtol=0, atol=0)
