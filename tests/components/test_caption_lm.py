"""Caption LM: equals the caption term of open_clip's CoCaLoss without smoothing, the
smoothing formula, padding ignored, and a decoder that learns a caption."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import CoCaLoss

from clapkit_plugins.losses._grounded_text import GroundedTextTransformer
from clapkit_plugins.losses.caption_lm import (CaptionLmObjective, caption_lm_loss,
                                               next_token_split)


def _batch(seed=0, b=3, length=7, vocab=11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, length, vocab, generator=g)
    labels = torch.randint(1, vocab, (b, length), generator=g)
    labels[0, 5:] = 0                                    # padding after the end token
    labels[2, 3:] = 0
    return logits, labels


def test_equals_open_clip_coca_caption_loss_without_smoothing():
    logits, labels = _batch()
    coca = CoCaLoss(caption_loss_weight=1.0, clip_loss_weight=0.0, pad_id=0)
    feats = torch.randn(3, 4)
    _, want = coca(feats, feats, logits, labels, torch.tensor(1.0))
    assert torch.allclose(caption_lm_loss(logits, labels, 0, smoothing=0.0), want, atol=1e-6)


def test_label_smoothing_formula_over_the_real_tokens():
    logits, labels = _batch(1)
    eps = 0.1
    logp = logits.log_softmax(-1)
    real = labels != 0
    nll = -logp.gather(-1, labels[..., None]).squeeze(-1)
    uniform = -logp.mean(-1)
    want = ((1 - eps) * nll + eps * uniform)[real].mean()
    assert torch.allclose(caption_lm_loss(logits, labels, 0, smoothing=eps), want, atol=1e-6)


def test_padding_positions_do_not_count():
    logits, labels = _batch(2)
    other = logits.clone()
    other[labels == 0] = torch.randn_like(other[labels == 0]) * 50
    assert torch.allclose(caption_lm_loss(logits, labels), caption_lm_loss(other, labels))
    with pytest.raises(ValueError, match="every label is padding"):
        caption_lm_loss(logits, torch.zeros_like(labels))


def test_next_token_split():
    x, y = next_token_split(torch.tensor([[5, 6, 7, 0]]))
    assert x.tolist() == [[5, 6, 7]] and y.tolist() == [[6, 7, 0]]


def test_decoder_learns_to_caption_two_images():
    torch.manual_seed(0)
    vocab, width = 12, 16
    dec = GroundedTextTransformer(width, 2, 2, image_width=8, seed=0)
    obj = CaptionLmObjective(dec, vocab, pad_id=0, smoothing=0.0)
    embed = torch.nn.Embedding(vocab, width)
    tokens = torch.tensor([[1, 3, 4, 5, 11, 0], [1, 6, 7, 8, 9, 11]])   # SOT .. EOT (11), pad 0
    images = torch.randn(2, 3, 8)
    opt = torch.optim.Adam([*obj.parameters(), *embed.parameters()], lr=3e-3)
    first = None
    for _ in range(150):
        loss = obj(embed(tokens), tokens, images)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05 * first
    logits = obj.token_logits(embed(tokens[:, :-1]), None, images)
    pred = logits.argmax(-1)
    real = tokens[:, 1:] != 0
    assert torch.equal(pred[real], tokens[:, 1:][real])


def test_objective_equals_the_loss_over_full_logits():
    torch.manual_seed(1)
    dec = GroundedTextTransformer(16, 1, 2, image_width=8, seed=1)
    obj = CaptionLmObjective(dec, 12, pad_id=0, smoothing=0.1)
    tokens = torch.tensor([[1, 3, 4, 11, 0, 0], [1, 6, 7, 8, 9, 11]])
    text, images = torch.randn(2, 6, 16), torch.randn(2, 3, 8)
    pad = tokens[:, :-1] == 0
    full = obj.token_logits(text[:, :-1], pad, images)          # every position
    want = caption_lm_loss(full, tokens[:, 1:], 0, 0.1)
    assert torch.allclose(obj(text, tokens, images), want, atol=1e-6)


# --- generation ------------------------------------------------------------------------------

from clapkit_plugins.losses._caption_decoding import generate, penalise_repeats  # noqa: E402

PAD, SOT, EOT, A, B_ = 0, 1, 2, 3, 4


def _markov(table):
    """Next-token log-probabilities from the last token only (rows: last token)."""
    logp = torch.full((5, 5), -1e9)
    for last, nxt in table.items():
        for tok, p in nxt.items():
            logp[last, tok] = torch.log(torch.tensor(p))

    def step(tokens, rows):
        return logp[tokens[:, -1]]
    return step


def test_beam_search_finds_the_likelier_caption_greedy_misses():
    # sot -> a 0.6 | b 0.4; a -> eot/a/b 1/3 each; b -> eot 0.9
    step = _markov({SOT: {A: 0.6, B_: 0.4}, A: {EOT: 1 / 3 + 1e-3, A: 1 / 3, B_: 1 / 3 - 1e-3},
                    B_: {EOT: 0.9, A: 0.05, B_: 0.05}})
    assert generate(step, 1, SOT, EOT, max_length=2, beams=1) == [[A]]        # p = 0.2
    assert generate(step, 1, SOT, EOT, max_length=2, beams=2) == [[B_]]       # p = 0.36


def test_greedy_is_the_argmax_chain_per_image():
    table = torch.tensor([[0, 0, 0, 5., 1.], [0, 0, 0, 1., 5.]])           # image 0 likes a

    def step(tokens, rows):
        logits = torch.full((len(rows), 5), -5.0)
        logits[:, 3:] = table[rows, 3:]
        if tokens.shape[1] >= 3:                 # sot + 2 tokens: end
            logits[:, EOT] = 10.0
        return logits
    assert generate(step, 2, SOT, EOT, max_length=6) == [[A, A], [B_, B_]]


def test_min_length_forbids_an_early_end():
    step = _markov({SOT: {EOT: 0.9, A: 0.1}, A: {EOT: 0.9, A: 0.1}})
    assert generate(step, 1, SOT, EOT, max_length=5) == [[]]
    assert generate(step, 1, SOT, EOT, max_length=5, min_length=3) == [[A, A, A]]
    assert generate(step, 1, SOT, EOT, max_length=5, min_length=3, beams=3) == [[A, A, A]]


def test_repetition_penalty_steers_away_from_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    got = penalise_repeats(logits, torch.tensor([[0, 1]]), 2.0)
    assert torch.allclose(got, torch.tensor([[1.0, -2.0, 0.5]]))
    step = _markov({SOT: {A: 0.5, B_: 0.3, EOT: 0.2}, A: {A: 0.45, B_: 0.35, EOT: 0.2},
                    B_: {A: 0.35, B_: 0.45, EOT: 0.2}})
    assert generate(step, 1, SOT, EOT, max_length=3) == [[A, A, A]]
    # log-probs are negative: a seen token's logit is multiplied by 3 -> the other one wins
    assert generate(step, 1, SOT, EOT, max_length=2, repetition_penalty=3.0) == [[A, B_]]


def test_bad_generation_options_are_refused():
    with pytest.raises(ValueError, match="min_length"):
        generate(lambda t, r: torch.zeros(len(r), 5), 1, SOT, EOT, max_length=2, min_length=3)
