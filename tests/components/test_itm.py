"""ITM: hard-negative sampling (never a pair of the same image id, harder more often), the
grounded encoder/decoder, and the 3B-pair matching loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clapkit_plugins.losses._grounded_text import GroundedTextTransformer
from clapkit_plugins.losses.itm import (ItmObjective, negative_weights, sample_hard_negatives,
                                        sample_hard_negatives_naive)


def test_never_samples_a_pair_of_the_same_image_id():
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])            # duplicates in the batch
    sim = torch.randn(8, 8, generator=g) * 5
    sim[ids[:, None] == ids[None]] += 50.0                   # positives by far the most similar
    for _ in range(200):
        idx, valid = sample_hard_negatives(sim, ids, ids, g)
        assert valid.all() and not bool((ids[idx] == ids).any())


def test_prefers_hard_negatives_in_proportion_to_the_softmax():
    g = torch.Generator().manual_seed(1)
    ids = torch.arange(4)
    sim = torch.tensor([[9.0, 3.0, 1.0, 0.0]]).repeat(4, 1)  # row 0: cols 1 > 2 > 3
    want = torch.softmax(torch.tensor([3.0, 1.0, 0.0]), 0)
    counts = torch.zeros(4)
    for _ in range(4000):
        idx, _ = sample_hard_negatives(sim, ids, ids, g)
        counts[idx[0]] += 1
    freq = counts[1:] / counts.sum()
    assert counts[0] == 0
    assert freq[0] > freq[1] > freq[2]
    assert torch.allclose(freq, want, atol=0.03)


def test_vectorised_and_naive_sampling_draw_from_the_same_distribution():
    g = torch.Generator().manual_seed(2)
    ids = torch.tensor([0, 1, 1, 2, 3])
    sim = torch.randn(5, 5, generator=g) * 2
    w, valid = negative_weights(sim, ids, ids)
    fast, slow = torch.zeros(5, 5), torch.zeros(5, 5)
    rows = torch.arange(5)
    for _ in range(3000):
        fast[rows, sample_hard_negatives(sim, ids, ids, g)[0]] += 1
        slow[rows, sample_hard_negatives_naive(sim, ids, ids, g)[0]] += 1
    assert valid.all()
    assert torch.allclose(fast / 3000, w, atol=0.04) and torch.allclose(slow / 3000, w, atol=0.04)


def test_a_row_with_no_negative_is_left_out():
    ids = torch.tensor([4, 4, 4])
    idx, valid = sample_hard_negatives(torch.zeros(3, 3), ids, ids)
    assert not valid.any()
    ids = torch.tensor([4, 4, 5])
    _, valid = sample_hard_negatives(torch.zeros(3, 3), ids, ids)
    assert valid.tolist() == [True, True, True]


def _encoder(share=False, seed=0):
    torch.manual_seed(seed)
    return GroundedTextTransformer(width=16, layers=2, heads=2, image_width=24,
                                   share_self_attention=share, seed=seed)


def test_decoder_is_causal_and_encoder_bidirectional():
    enc = _encoder().eval()
    g = torch.Generator().manual_seed(3)
    text, image = torch.randn(2, 6, 16, generator=g), torch.randn(2, 5, 24, generator=g)
    changed = text.clone()
    changed[:, 4:] = torch.randn(2, 2, 16, generator=g)   # not a constant shift (LN removes it)
    a, b = enc.decode(text, None, image), enc.decode(changed, None, image)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)      # earlier positions see no future
    assert not torch.allclose(a[:, 4:], b[:, 4:], atol=1e-3)
    assert not torch.allclose(enc.encode(text, None, image), enc.encode(changed, None, image),
                              atol=1e-4)                      # [Encode] sees every token
    other = image.flip(0)                                     # and the image
    assert not torch.allclose(enc.encode(text, None, image), enc.encode(text, None, other),
                              atol=1e-4)


def test_padding_is_masked_in_the_encoder():
    enc = _encoder().eval()
    g = torch.Generator().manual_seed(4)
    text, image = torch.randn(1, 5, 16, generator=g), torch.randn(1, 3, 24, generator=g)
    pad = torch.tensor([[False, False, False, True, True]])
    junk = text.clone()
    junk[:, 3:] = 100.0
    assert torch.allclose(enc.encode(text, pad, image), enc.encode(junk, pad, image), atol=1e-5)


def test_encoder_and_decoder_share_all_but_self_attention():
    sep, shared = _encoder(False), _encoder(True)
    n_sep = sum(p.numel() for p in sep.parameters())
    n_shared = sum(p.numel() for p in shared.parameters())
    one_sa = sum(p.numel() for p in sep.blocks[0].self_attn.parameters())
    assert n_sep - n_shared == 2 * one_sa                    # one extra self-attention per block
    assert sep.blocks[0].self_attn_decode is not None and shared.blocks[0].self_attn_decode is None


def test_shapes_are_checked_with_a_clear_message():
    with pytest.raises(ValueError, match=r"expected \[B, L, 16\]"):
        _encoder().encode(torch.zeros(1, 3, 8), None, torch.zeros(1, 2, 24))


def test_itm_loss_over_positives_and_hard_negatives():
    torch.manual_seed(0)
    obj = ItmObjective(_encoder())
    g = torch.Generator().manual_seed(5)
    text = torch.randn(4, 6, 16, generator=g, requires_grad=True)
    image = torch.randn(4, 5, 24, generator=g, requires_grad=True)
    ids = torch.tensor([0, 0, 1, 2])
    sim = torch.randn(4, 4, generator=g)
    loss = obj(text, None, image, sim, ids, torch.Generator().manual_seed(0))

    # rebuilt: the same draws, the 3B pairs, labels 1 then 0
    g2 = torch.Generator().manual_seed(0)
    nt, _ = sample_hard_negatives(sim, ids, ids, g2)
    ni, _ = sample_hard_negatives(sim.T, ids, ids, g2)
    r = torch.arange(4)
    ti, ii = torch.cat([r, nt, r]), torch.cat([r, r, ni])
    logits = obj.match_logits(text[ti], None, image[ii])
    want = F.cross_entropy(logits, torch.tensor([1] * 4 + [0] * 8))
    assert torch.allclose(loss, want, atol=1e-6)
    loss.backward()
    assert text.grad.abs().sum() > 0 and image.grad.abs().sum() > 0
    assert obj.head.weight.grad.abs().sum() > 0


def test_image_text_benchmark_runs_and_reports_ratios(tmp_path):
    mod = _image_text_benchmark()
    rows = mod.main(["--batch", "4", "--sampling-batch", "8", "--steps", "1", "--warmup", "0",
                     "--length", "12", "--queue", "16", "--json", str(tmp_path / "r.jsonl")])
    assert rows[0]["step_ratio"] > 0 and rows[1]["sampling_ratio"] > 0
    assert rows[0]["vectorised_peak_mb"] is not None and rows[0]["naive_peak_mb"] is not None
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2


def _image_text_benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "image_text_step.py"
    spec = importlib.util.spec_from_file_location("image_text_step", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_image_text_benchmark_coca_rows_report_clapkit_next_to_open_clip(tmp_path):
    """The CoCa rows on the tiny CoCa: clapkit's ITC + LM step and open_clip's CoCa forward +
    CoCaLoss, on identical weights and batch, with step time, peak memory and the ratios."""
    import json

    import torch

    mod = _image_text_benchmark()
    out = tmp_path / "coca.jsonl"
    rows = mod.main(["--model", "clapkit-tiny-coca", "--batch", "2", "--warmup", "1",
                     "--steps", "1", "--words", "4", "--one-image-pass", "--json", str(out)])
    saved = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(saved) == 1
    row = saved[0]
    assert row["model"] == "clapkit-tiny-coca" and row["batch"] == 2
    for key in ("clapkit_step_s", "open_clip_step_s", "step_ratio", "clapkit_peak_mb",
                "open_clip_peak_mb", "memory_ratio", "memory", "within_1_15x",
                "clapkit_one_pass_step_s", "one_pass_ratio"):
        assert key in row, key
    assert row["clapkit_step_s"] > 0 and row["open_clip_step_s"] > 0
    assert row["step_ratio"] == row["clapkit_step_s"] / row["open_clip_step_s"]
    assert "getrusage" in row["memory"]
    # both sides start from the same weights and compute the same loss on the same batch
    pair = mod.CocaPair("clapkit-tiny-coca", torch.device("cpu"), 1.0, 2.0)
    pair.set_batch(*mod.coca_batch(3, 5, pair.backbone.image_size))
    with torch.no_grad():
        want = pair.open_clip_loss()
        torch.testing.assert_close(pair.clapkit_loss(), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pair.clapkit_one_image_pass_loss(), want, rtol=1e-5,
                                   atol=1e-5)
