"""Image-text training step benchmark (issue 15): ITC + ITM + LM on the tiny CLIP.

One step = the image tower once (pooled + patch tokens) and the text tower once (pooled +
token states) on a batch of B image-caption pairs, then

* ITC with BLIP's momentum model (an EMA copy of the whole CLIP, m = 0.995, encoding the
  batch again without gradient), a feature queue (``--queue``) and soft targets (alpha 0.4),
* ITM over the image-grounded text encoder with one hard negative caption per image and one
  hard negative image per caption, drawn from the softmax of the ITC similarities with
  same-image pairs masked out (the batch holds ``--dup`` captions per image),
* caption LM through the grounded decoder (label smoothing 0.1),

backward and an AdamW step. Rows: the hard negatives drawn in one vectorised
``torch.multinomial`` call vs BLIP's per-row loop (``sample_hard_negatives_naive``), for the
whole step and for the sampling alone (where the loop's cost shows: it grows with B). Times
are medians over ``--steps`` timed steps after ``--warmup``; the last column is naive /
vectorised. ``--json FILE`` writes the rows.

This covers the tiny-model part of the issue's benchmark; the ``coca_ViT-B-32`` rows next to
open_clip's own CoCa forward + ``CoCaLoss`` need the token-level backbone (core issue 14).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__":       # see benchmarks/clap4clip_step.py: idle OpenMP threads sleep
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import open_clip  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clapkit_plugins.losses._grounded_text import GroundedTextTransformer  # noqa: E402
from clapkit_plugins.losses.caption_lm import CaptionLmObjective  # noqa: E402
from clapkit_plugins.losses.itc import ItcObjective, MomentumCopy, ramped_alpha  # noqa: E402
from clapkit_plugins.losses.itm import (ItmObjective, sample_hard_negatives,  # noqa: E402
                                        sample_hard_negatives_naive)


def _tiny_config() -> None:
    open_clip.add_model_config(str(ROOT / "plugins" / "backbones" / "clapkit-tiny.json"))


def tiny_clip() -> nn.Module:
    _tiny_config()
    torch.manual_seed(0)
    model = open_clip.create_model("clapkit-tiny")
    model.visual.output_tokens = True
    return model


class Towers(nn.Module):
    """The CLIP towers returning what the three objectives read."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        c = self.clip
        pooled_img, img_tokens = c.visual(images)
        x = c.token_embedding(tokens) + c.positional_embedding[: tokens.shape[1]]
        n = tokens.shape[1]
        x = c.transformer(x, attn_mask=c.attn_mask[:n, :n])
        states = c.ln_final(x)                                         # [B,L,Wt]
        pooled_txt = states[torch.arange(len(tokens)), tokens.argmax(-1)] @ c.text_projection
        return pooled_img, img_tokens, pooled_txt, states


class ImageTextStep(nn.Module):
    def __init__(self, queue: int, naive: bool) -> None:
        super().__init__()
        clip = tiny_clip()
        self.towers = Towers(clip)
        self.momentum = MomentumCopy(self.towers, 0.995)
        wt, wv = clip.transformer.width, clip.visual.transformer.width
        shared = GroundedTextTransformer(wt, 2, 2, wv, share_self_attention=False)
        self.itc = ItcObjective(clip.text_projection.shape[1], queue)
        self.itm = ItmObjective(shared, sample_hard_negatives_naive if naive else None)
        self.lm = CaptionLmObjective(shared, clip.vocab_size, 0, 0.1)

    def forward(self, images, tokens, ids) -> torch.Tensor:
        v, img_tok, t, states = self.towers(images, tokens)
        self.momentum.update()
        vm, _, tm, _ = self.momentum(images, tokens)
        scale = self.towers.clip.logit_scale.exp()
        itc = self.itc(v, t, ids, scale, vm, tm, ramped_alpha(0.4, 1, 1.0))
        with torch.no_grad():
            sim = scale * nn.functional.normalize(v, dim=-1) @ nn.functional.normalize(
                t, dim=-1).T
        pad = tokens == 0
        pad[:, 0] = False
        itm = self.itm(states, pad, img_tok, sim, ids)
        lm = self.lm(states, tokens, img_tok)
        return itc + itm + lm


def batch(b: int, dup: int, length: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    _tiny_config()
    tok = open_clip.get_tokenizer("clapkit-tiny")
    words = ["red", "green", "blue", "striped", "dotted", "circle", "square", "star", "small"]
    caps = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (6,), generator=g))
            for _ in range(b)]
    tokens = tok(caps)[:, :length]
    ids = torch.arange(b) // dup                   # dup captions per image id
    return torch.randn(b, 3, 64, 64, generator=g), tokens, ids


def median_time(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_row(b: int, args) -> dict:
    out = {"batch": b}
    images, tokens, ids = batch(b, args.dup, args.length)
    for name, naive in (("vectorised", False), ("naive", True)):
        torch.manual_seed(0)
        model = ImageTextStep(args.queue, naive).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step():
            loss = model(images, tokens, ids)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        out[f"{name}_step_s"] = median_time(step, args.steps, args.warmup)
    out["step_ratio"] = out["naive_step_s"] / out["vectorised_step_s"]
    return out


def sampling_row(b: int, args) -> dict:
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(b, b, generator=g) * 5
    ids = torch.arange(b) // args.dup
    fast = median_time(lambda: (sample_hard_negatives(sim, ids, ids, g),
                                sample_hard_negatives(sim.T, ids, ids, g)), args.steps, 2)
    slow = median_time(lambda: (sample_hard_negatives_naive(sim, ids, ids, g),
                                sample_hard_negatives_naive(sim.T, ids, ids, g)),
                       args.steps, 2)
    return {"batch": b, "vectorised_sampling_s": fast, "naive_sampling_s": slow,
            "sampling_ratio": slow / fast}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[16, 32])
    p.add_argument("--sampling-batch", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--dup", type=int, default=2, help="captions per image id in a batch")
    p.add_argument("--length", type=int, default=32, help="caption tokens (of 77)")
    p.add_argument("--queue", type=int, default=1024)
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'B':>5} {'vectorised step s':>18} {'naive step s':>13} {'ratio':>6}")
    for b in args.batch:
        r = step_row(b, args)
        rows.append(r)
        print(f"{b:>5} {r['vectorised_step_s']:>18.4f} {r['naive_step_s']:>13.4f} "
              f"{r['step_ratio']:>6.2f}")
    print(f"{'B':>5} {'vectorised draw s':>18} {'naive draw s':>13} {'ratio':>6}")
    for b in args.sampling_batch:
        r = sampling_row(b, args)
        rows.append(r)
        print(f"{b:>5} {r['vectorised_sampling_s']:>18.6f} {r['naive_sampling_s']:>13.6f} "
              f"{r['sampling_ratio']:>6.1f}")
    if args.json:
        args.json.write_text("\n".join(json.dumps({**r, "threads": args.threads})
                                       for r in rows) + "\n")
    return rows


if __name__ == "__main__":
    main()
