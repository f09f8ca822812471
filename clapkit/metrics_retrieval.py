"""Image-text retrieval metrics on the Karpathy protocol: recall@K both ways.

Several captions describe one image, so a positive is "same image id", not "same row":

* **image -> text**: an image is a hit at K when *any* of its captions is among the K texts
  most similar to it (the rank of its best-ranked caption, as BLIP and ALBEF count it);
* **text -> image**: a caption is a hit at K when its image is among the K most similar
  images.

Ties count against the query (a negative scoring *equal to* the best positive ranks above
it), so a model whose similarities are all equal scores 0, never 1. Values are fractions in
[0, 1] (loggers print percentages); keys are ``i2t_r{K}``, ``t2i_r{K}`` and ``r_mean`` (mean
of all of them, the usual model-selection number).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch

__all__ = ["group_codes", "best_positive_rank", "retrieval_recall", "similarity_in_chunks",
           "rerank_top_k"]


def group_codes(image_ids: Sequence[Hashable], text_ids: Sequence[Hashable]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes of the image ids and the caption ids (one code per distinct id, shared
    by both sides); a caption whose id names no image is an error."""
    table: dict[Hashable, int] = {}
    img = [table.setdefault(i, len(table)) for i in image_ids]
    missing = [t for t in text_ids if t not in table]
    if missing:
        raise ValueError(f"caption id {missing[0]!r} names no image ({len(missing)} captions "
                         f"without an image among {len(table)} images)")
    return torch.tensor(img, dtype=torch.long), torch.tensor([table[t] for t in text_ids],
                                                             dtype=torch.long)


def best_positive_rank(sim: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's best positive column: how many negatives score at least as
    high as it (``[Q,N]`` scores, ``[Q,N]`` bool positives -> ``[Q]``). A row without
    positives is an error (a query nothing can answer has no recall)."""
    if sim.shape != positive.shape:
        raise ValueError(f"scores {tuple(sim.shape)} and positives {tuple(positive.shape)} "
                         "differ in shape")
    empty = ~positive.any(1)
    if bool(empty.any()):
        raise ValueError(f"query {int(empty.nonzero()[0])} has no positive among the "
                         f"{sim.shape[1]} candidates")
    sim = sim.float()
    best = sim.masked_fill(~positive, float("-inf")).max(1, keepdim=True).values   # [Q,1]
    return ((sim >= best) & ~positive).sum(1)


def retrieval_recall(sim: torch.Tensor, image_ids: Sequence[Hashable],
                     text_ids: Sequence[Hashable], ks: Sequence[int] = (1, 5, 10)
                     ) -> dict[str, float]:
    """Recall@K both ways from ``sim [N_images, N_texts]`` (image rows, caption columns) and
    the image id of every row and every caption."""
    if sim.dim() != 2 or sim.shape != (len(image_ids), len(text_ids)):
        raise ValueError(f"similarity of shape {tuple(sim.shape)} for {len(image_ids)} images "
                         f"and {len(text_ids)} captions, expected "
                         f"({len(image_ids)}, {len(text_ids)})")
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"recall cut-offs must be >= 1, got {list(ks)}")
    img, txt = group_codes(image_ids, text_ids)
    positive = img[:, None] == txt[None, :]                       # [N_img, N_txt]
    sim = sim.detach().cpu()
    i2t = best_positive_rank(sim, positive)
    t2i = best_positive_rank(sim.t(), positive.t())
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_r{int(k)}"] = float((i2t < k).float().mean())
    for k in ks:
        out[f"t2i_r{int(k)}"] = float((t2i < k).float().mean())
    out["r_mean"] = sum(out.values()) / len(out)
    return out


def similarity_in_chunks(image_features: torch.Tensor, text_features: torch.Tensor,
                         chunk: int = 1024) -> torch.Tensor:
    """Cosine similarities ``[N_img, N_txt]`` computed in row chunks (the 5k x 25k COCO test
    matrix without a 5k x 25k x D intermediate), on the features' device, returned on CPU."""
    a = torch.nn.functional.normalize(image_features.float(), dim=-1)
    b = torch.nn.functional.normalize(text_features.float(), dim=-1)
    return torch.cat([(a[i:i + chunk] @ b.t()).cpu() for i in range(0, a.shape[0], chunk)])


def rerank_top_k(sim: torch.Tensor, k: int,
                 score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                 ) -> torch.Tensor:
    """BLIP's re-ranking: the top-``k`` candidates of every row of ``sim [Q,N]`` rescored by
    ``score(rows [M], cols [M]) -> [M]`` (e.g. the ITM match logit of each pair) plus their
    similarity, all of them placed above the other candidates, whose order is kept.
    Use it once per direction (pass ``sim.t()`` and a swapped ``score`` for text -> image)."""
    if k < 1:
        raise ValueError(f"re-ranking needs k >= 1, got {k}")
    k = min(k, sim.shape[1])
    top_sim, top = sim.topk(k, dim=1)                                   # [Q,k]
    rows = torch.arange(sim.shape[0], device=sim.device)[:, None].expand_as(top)
    new = score(rows.reshape(-1), top.reshape(-1)).reshape(top.shape).to(sim.dtype) + top_sim
    # below every re-ranked score: the rest keeps its order under the candidates
    floor = new.min() - 1.0 - (sim.max() - sim.min())
    out = sim - sim.max() + floor
    return out.scatter(1, top, new)
