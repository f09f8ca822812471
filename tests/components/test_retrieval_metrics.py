"""Recall@K both ways with several captions per image (positive = same image id)."""

from __future__ import annotations

import pytest
import torch

from clapkit.metrics_retrieval import (best_positive_rank, retrieval_recall,
                                       similarity_in_chunks)


def _brute_force(sim, img_ids, txt_ids, k):
    """Sort every row and look for the first positive (what the protocol says, in loops)."""
    i2t = t2i = 0
    for i in range(sim.shape[0]):
        order = sorted(range(sim.shape[1]), key=lambda j: (-float(sim[i, j]),
                                                           txt_ids[j] == img_ids[i]))
        i2t += any(txt_ids[j] == img_ids[i] for j in order[:k])
    for j in range(sim.shape[1]):
        order = sorted(range(sim.shape[0]), key=lambda i: (-float(sim[i, j]),
                                                           img_ids[i] == txt_ids[j]))
        t2i += any(img_ids[i] == txt_ids[j] for i in order[:k])
    return i2t / sim.shape[0], t2i / sim.shape[1]


def test_hand_made_ranking():
    # 3 images (ids a, b, c), 5 captions: a has 2, b has 2, c has 1
    img = ["a", "b", "c"]
    txt = ["a", "a", "b", "b", "c"]
    sim = torch.tensor([[0.1, 0.9, 0.8, 0.0, 0.2],    # a: own caption first -> rank 0
                        [0.9, 0.1, 0.2, 0.3, 0.0],    # b: best own (0.3) behind 0.9 -> rank 1
                        [0.5, 0.6, 0.7, 0.8, 0.1]])   # c: own caption last -> rank 4
    r = retrieval_recall(sim, img, txt, ks=(1, 2, 5))
    assert r["i2t_r1"] == pytest.approx(1 / 3)
    assert r["i2t_r2"] == pytest.approx(2 / 3)
    assert r["i2t_r5"] == pytest.approx(1.0)
    # text -> image, column by column: a0 (0.1) behind b 0.9 and c 0.5 -> rank 2;
    # a1 (0.9) first -> 0; b2 (0.2) behind a 0.8, c 0.7 -> 2; b3 (0.3) behind c 0.8 -> 1;
    # c4 (0.1) behind a 0.2 -> 1
    assert r["t2i_r1"] == pytest.approx(1 / 5)
    assert r["t2i_r2"] == pytest.approx(3 / 5)
    assert r["t2i_r5"] == pytest.approx(1.0)
    assert r["r_mean"] == pytest.approx(sum(v for k, v in r.items() if k != "r_mean") / 6)


def test_matches_a_brute_force_sort_with_duplicate_ids():
    g = torch.Generator().manual_seed(0)
    img = [f"i{n}" for n in range(12)]
    txt = [f"i{n % 12}" for n in range(40)]          # 3-4 captions per image
    sim = torch.randn(12, 40, generator=g)
    r = retrieval_recall(sim, img, txt, ks=(1, 5, 10))
    for k in (1, 5, 10):
        i2t, t2i = _brute_force(sim, img, txt, k)
        assert r[f"i2t_r{k}"] == pytest.approx(i2t) and r[f"t2i_r{k}"] == pytest.approx(t2i)


def test_ties_count_against_the_query():
    r = retrieval_recall(torch.zeros(4, 8), list("abcd"), list("aabbccdd"), ks=(1,))
    assert r["i2t_r1"] == 0.0 and r["t2i_r1"] == 0.0


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="names no image"):
        retrieval_recall(torch.zeros(2, 2), ["a", "b"], ["a", "z"])
    with pytest.raises(ValueError, match=r"expected \(2, 3\)"):
        retrieval_recall(torch.zeros(2, 2), ["a", "b"], ["a", "b", "b"])
    with pytest.raises(ValueError, match="no positive"):
        best_positive_rank(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.bool))


def test_chunked_similarity_equals_the_full_matrix():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(7, 5, generator=g), torch.randn(9, 5, generator=g)
    full = torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T
    assert torch.allclose(similarity_in_chunks(a, b, chunk=3), full, atol=1e-6)


def test_rerank_top_k_rescored_candidates_and_keeps_the_rest_below():
    from clapkit.metrics_retrieval import rerank_top_k

    sim = torch.tensor([[0.9, 0.8, 0.1, 0.5],
                        [0.2, 0.3, 0.4, 0.1]])
    # the matcher prefers column 1 for row 0 and column 0 for row 1
    pref = torch.tensor([[0.0, 5.0, 9.0, 0.0], [3.0, 0.0, 0.0, 9.0]])
    calls = []

    def score(rows, cols):
        calls.append((rows.tolist(), cols.tolist()))
        return pref[rows, cols]

    out = rerank_top_k(sim, 2, score)
    assert calls == [([0, 0, 1, 1], [0, 1, 2, 1])]            # only the top-2 are scored
    assert out[0].argsort(descending=True).tolist() == [1, 0, 3, 2]
    assert out[1].argsort(descending=True).tolist() == [2, 1, 0, 3]   # col 0 not a candidate
    assert torch.allclose(out[0, 1], torch.tensor(5.8)) and torch.allclose(out[0, 0],
                                                                          torch.tensor(0.9))
    # the matcher's choice comes first where the plain similarity ranked another first
    assert int(sim[0].argmax()) == 0 and int(out[0].argmax()) == 1
