"""Caption generation from a next-token model: greedy and beam search (BLIP's / CoCa's
settings: max length, min length, repetition penalty, length-normalised beam scores).

The model is a callable ``step_logits(tokens [N,t], rows [N]) -> [N,V]``: the next-token
logits of ``N`` partial captions (all starting with the start token), ``rows[n]`` the image
each one belongs to (so the caller picks that image's tokens). Vectorised over the batch
and the beams: a finished beam stays in the search with its score frozen and only the
padding token as continuation, so every step is one call on ``B * beams`` rows.

* ``min_length``: the end token is forbidden before that many tokens were generated;
* ``repetition_penalty`` (CTRL, as Hugging Face applies it): the logit of a token already in
  the caption is divided by the penalty when positive, multiplied when negative;
* beam scores: sum of log-probabilities divided by ``length ** length_penalty`` (the end
  token counts) when the final caption of each image is chosen.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

StepLogits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def penalise_repeats(logits: torch.Tensor, tokens: torch.Tensor, penalty: float
                     ) -> torch.Tensor:
    """``logits [N,V]`` with every token present in ``tokens [N,t]`` penalised."""
    if penalty == 1.0:
        return logits
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, tokens, True)
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, scaled, logits)


@torch.no_grad()
def generate(step_logits: StepLogits, batch: int, sot: int, eot: int, pad: int = 0,
             max_length: int = 20, min_length: int = 0, beams: int = 1,
             repetition_penalty: float = 1.0, length_penalty: float = 1.0,
             device: torch.device | str = "cpu") -> list[list[int]]:
    """Generated token ids per image (start token dropped, cut before the end token)."""
    if beams < 1 or max_length < 1 or not 0 <= min_length <= max_length:
        raise ValueError(f"need beams >= 1, max_length >= 1 and 0 <= min_length <= "
                         f"max_length; got beams={beams}, max_length={max_length}, "
                         f"min_length={min_length}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
    n = batch * beams
    rows = torch.arange(batch, device=device).repeat_interleave(beams)
    tokens = torch.full((n, 1), sot, dtype=torch.long, device=device)
    scores = torch.zeros(batch, beams, device=device)
    scores[:, 1:] = float("-inf")                      # the beams start as one hypothesis
    scores = scores.view(-1)
    ended = torch.zeros(n, dtype=torch.bool, device=device)
    lengths = torch.zeros(n, device=device)
    for step in range(max_length):
        logits = step_logits(tokens, rows).float()
        logits = penalise_repeats(logits, tokens, repetition_penalty)
        if step < min_length:
            logits[:, eot] = float("-inf")
        logp = torch.log_softmax(logits, dim=-1)
        vocab = logp.shape[1]
        frozen = torch.full_like(logp, float("-inf"))
        frozen[:, pad] = 0.0
        logp = torch.where(ended[:, None], frozen, logp)
        cand = (scores[:, None] + logp).view(batch, beams * vocab)
        best, flat = cand.topk(beams, dim=1)                          # [B, K]
        parent = (flat // vocab + torch.arange(batch, device=device)[:, None] * beams).view(-1)
        token = (flat % vocab).view(-1)
        tokens = torch.cat([tokens[parent], token[:, None]], 1)
        was_ended = ended[parent]
        lengths = lengths[parent] + (~was_ended).float()
        ended = was_ended | (token == eot)
        scores = best.view(-1)
        if bool(ended.all()):
            break
    final = (scores / lengths.clamp_min(1) ** length_penalty).view(batch, beams)
    pick = final.argmax(1) + torch.arange(batch, device=device) * beams
    out = []
    for seq in tokens[pick, 1:].tolist():
        out.append(seq[: seq.index(eot)] if eot in seq else seq)
    return out
