"""Image-text training step benchmark (issue 15): ITC + ITM + LM on the tiny CLIP; ITC + LM on
a CoCa next to open_clip's own CoCa step.

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
are medians over ``--steps`` timed steps after ``--warmup`` (the two variants measured
alternately, as below); the ratio column is naive / vectorised, the peak columns as below.
``--json FILE`` writes the rows.

CoCa rows (``--model coca_ViT-B-32``, or the tiny ``clapkit-tiny-coca`` for tests; random
init, nothing downloaded): one random-init CoCa and one batch of B images with one caption
each, two steps on the same weights (the open_clip side trains a deep copy of the model the
clapkit backbone wraps, so both start from identical weights and keep their own AdamW state):

* **clapkit**: the ``open_clip`` backbone plugin and the ``itc`` and ``caption_lm`` loss
  plugins (``decoder = "auto"``: CoCa's own multimodal decoder), built through the plugin
  host; the image features the pipeline hands the losses (``z`` and ``features``, from
  ``backbone.encode_image`` as ``Pipeline.encode_frames`` does without adapters), then
  ``clip_weight * itc + caption_weight * caption_lm`` (smoothing 0, as ``CoCaLoss``);
* **open_clip**: ``model(image, text)`` of the CoCa model and ``open_clip.loss.CoCaLoss``
  with the same two weights (default: open_clip's CoCa pre-training, caption 2, clip 1);

each then backward and an AdamW step (fresh gradients). The two are measured alternately
(A B B A ...) so a change in machine load hits both alike. Columns: median step seconds,
peak memory of a step above what was held before it (CUDA: ``torch.cuda.max_memory_allocated``;
CPU: the process's max RSS from ``resource.getrusage``, its high-water mark reset before each
step through ``/proc/self/clear_refs`` after ``malloc_trim`` returned the heap's free memory;
tracemalloc does not see torch's tensors; the "memory" field names which), and the ratio
clapkit / open_clip (issue 15: the step within 1.15x). ``--profile N`` prints the N costliest
operators of one step of each side (``torch.profiler``).

Where the two steps differed (the profile showed it): clapkit ran CoCa's vision tower twice
with gradients -- ``encode_image`` for the pooled ``z`` and ``encode_image_tokens`` for the
patch tokens ``caption_lm`` decodes from -- while open_clip's forward takes both from one pass.
The pipeline now keeps the token output of its own pass when a loss reads ``image_tokens``
(``Pipeline.wants_image_tokens``), so the tower runs once. clapkit still decodes, projects to
the 49408-word vocabulary and log-softmaxes only the positions up to the batch's longest
caption, open_clip all 75. ``--one-image-pass`` times clapkit's losses with the tokens handed
in directly (now the same path).

Measured (2-core shared CPU, 1 thread, B = 4, ``--warmup 1 --steps 3``; seconds are +-10% from
run to run on that machine):

    coca_ViT-B-32 (253.6M)   clapkit s  open_clip s  ratio
    before: 10 words (12 tokens)   5.00   5.47   0.92  (other runs 0.88, 1.03)
    before: 70 words (72 tokens)   7.02   5.55   1.26  (other runs 1.15, 1.22)
    one pass: 70 words (72 tokens) 6.75   6.59   1.03
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__":       # see benchmarks/clap4clip_step.py: idle OpenMP threads sleep
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import attrs  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clapkit.config import structure  # noqa: E402
from clapkit.interfaces import BuildContext  # noqa: E402
from clapkit.plugins import get_plugin_host  # noqa: E402

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


# --- peak memory of one step ------------------------------------------------------------------

def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmRSS in /proc/self/status")


def _release_free_heap() -> None:
    """Hand the allocator's free memory back to the OS (glibc ``malloc_trim``), so the RSS
    before a step is what is live, not what an earlier step freed and the heap kept."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_rss_peak() -> bool:
    """Reset the process's RSS high-water mark (Linux: ``/proc/self/clear_refs`` "5"), which
    ``getrusage``'s ``ru_maxrss`` reports; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda max_memory_allocated above the allocation before the step"
    return "cpu max RSS (resource.getrusage ru_maxrss, reset per step) above the RSS before it"


def timed_step(fn, device: torch.device) -> tuple[float, int | None]:
    """``(seconds, peak bytes above what was held before)`` of one call of ``fn``; the peak
    is None on a CPU where the RSS high-water mark cannot be reset."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        return dt, torch.cuda.max_memory_allocated(device) - base
    _release_free_heap()
    base = _rss_bytes()
    resettable = _reset_rss_peak()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024     # Linux: KiB
    return dt, (max(0, peak - base) if resettable else None)


def interleaved(fns: dict[str, object], steps: int, warmup: int, device: torch.device
                ) -> dict[str, tuple[float, int | None]]:
    """Median seconds and largest peak of each function over ``steps`` timed rounds after
    ``warmup``, the order alternating from round to round (A B, B A, A B, ...)."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, list[int | None]] = {n: [] for n in names}
    for i in range(warmup + steps):
        for n in (names if i % 2 == 0 else names[::-1]):
            dt, peak = timed_step(fns[n], device)
            if i >= warmup:
                times[n].append(dt)
                peaks[n].append(peak)
    return {n: (statistics.median(times[n]),
                None if None in peaks[n] else max(peaks[n])) for n in names}


def step_row(b: int, args) -> dict:
    out = {"batch": b, "memory": memory_kind(torch.device("cpu"))}
    images, tokens, ids = batch(b, args.dup, args.length)
    steps = {}
    for name, naive in (("vectorised", False), ("naive", True)):
        torch.manual_seed(0)
        model = ImageTextStep(args.queue, naive).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(model=model, opt=opt):
            loss = model(images, tokens, ids)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps[name] = step
    for name, (sec, peak) in interleaved(steps, args.steps, args.warmup,
                                         torch.device("cpu")).items():
        out[f"{name}_step_s"], out[f"{name}_peak_mb"] = sec, _mb(peak)
    out["step_ratio"] = out["naive_step_s"] / out["vectorised_step_s"]
    return out


def _mb(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / 2 ** 20


# --- CoCa: clapkit's ITC + LM step next to open_clip's CoCa forward + CoCaLoss ----------------

COCA_WORDS = ["a", "man", "woman", "dog", "cat", "red", "small", "sitting", "on", "the",
              "bench", "street", "holding", "umbrella", "next", "to", "table", "with"]


def coca_batch(b: int, words: int, size: int, seed: int = 0):
    """B images ``[B,3,size,size]`` and one caption of ``words`` words each."""
    g = torch.Generator().manual_seed(seed)
    caps = [" ".join(COCA_WORDS[int(i)] for i in torch.randint(0, len(COCA_WORDS), (words,),
                                                               generator=g))
            for _ in range(b)]
    return torch.randn(b, 3, size, size, generator=g), caps


class CocaPair:
    """One random-init CoCa twice with identical weights: the clapkit backbone plugin with the
    ``itc`` and ``caption_lm`` loss plugins (built through the plugin host), and open_clip's
    CoCa model (a deep copy of the wrapped one) with ``CoCaLoss``."""

    def __init__(self, model: str, device: torch.device, clip_weight: float,
                 caption_weight: float, lr: float = 1e-5) -> None:
        host = get_plugin_host()
        entry = host.registries["backbone"].get("open_clip")
        cfg = structure(entry.config_cls, {"model": model, "pretrained": ""},
                        file="<benchmark>", key="backbone")
        self.backbone = entry.factory(cfg, BuildContext(host=host, section="backbone"))
        if "text_decoder" not in self.backbone.capabilities:
            raise SystemExit(f"--model {model}: not a CoCa model (no caption decoder)")
        self.reference = copy.deepcopy(self.backbone.model)       # the same random weights
        for m in (self.backbone, self.reference):
            m.to(device).train()
            m.requires_grad_(True)                                  # the towers train
        ctx = BuildContext(host=host, backbone=self.backbone, class_names=["image"],
                           device=device)
        losses = host.registries["loss"]
        self.itc = self._loss(losses.get("itc"), ctx, "itc", {})
        self.lm = self._loss(losses.get("caption_lm"), ctx, "lm",
                             {"decoder": "auto", "smoothing": 0.0})
        if self.lm.kind != "coca":
            raise SystemExit(f"caption_lm resolved decoder {self.lm.kind!r}, not CoCa's own")
        self.coca_loss = open_clip.loss.CoCaLoss(caption_loss_weight=caption_weight,
                                                 clip_loss_weight=clip_weight)
        self.clip_weight, self.caption_weight = clip_weight, caption_weight
        self.device = device
        hyper = {"lr": lr, "weight_decay": 0.1}                     # the same for both
        self.opt_clapkit = torch.optim.AdamW(self.backbone.model.parameters(), **hyper)
        self.opt_open_clip = torch.optim.AdamW(self.reference.parameters(), **hyper)

    @staticmethod
    def _loss(entry, ctx: BuildContext, name: str, options: dict):
        cfg = structure(entry.config_cls, options, file="<benchmark>", key=f"losses.{name}")
        return entry.factory(cfg, attrs.evolve(ctx, section=f"losses.{name}")).train()

    def set_batch(self, images: torch.Tensor, captions: list[str]) -> None:
        self.images = images.to(self.device)
        self.captions = captions
        self.tokens = self.backbone.tokenize(captions).to(self.device)
        self.labels = torch.zeros(len(captions), dtype=torch.long, device=self.device)
        self.index = torch.arange(len(captions))

    def clapkit_loss(self) -> torch.Tensor:
        """What a clapkit training step computes: the pipeline's image features (no adapters:
        ``z`` = the frame mean of ``encode_image``), then the two loss plugins."""
        feats = self.backbone.encode_image(self.images)[:, None]           # [B,T=1,D]
        outputs = {"z": feats.mean(1), "features": {"image": feats}}
        batch = {"streams": {"image": self.images[:, None]}, "label": self.labels,
                 "texts": [[c] for c in self.captions], "group": self.index.tolist(),
                 "index": self.index, "epoch": 0}
        return (self.clip_weight * self.itc(outputs, batch)
                + self.caption_weight * self.lm(outputs, batch))

    def clapkit_one_image_pass_loss(self) -> torch.Tensor:
        """The same losses with the vision tower run once: ``encode_image_tokens`` gives both
        the pooled features (``z``; equal to ``encode_image``) and the tokens ``caption_lm``
        reads, left where the losses look for a step's patch tokens (what a pipeline that
        shares the pass would do; ``--one-image-pass``, a diagnostic, not clapkit's path)."""
        from clapkit_plugins.losses._image_text_batch import MEMO
        out = self.backbone.encode_image_tokens(self.images)
        feats = out.pooled[:, None]
        outputs = {"z": feats.mean(1), "features": {"image": feats}}
        batch = {"streams": {"image": self.images[:, None]}, "label": self.labels,
                 "texts": [[c] for c in self.captions], "group": self.index.tolist(),
                 "index": self.index, "epoch": 0, MEMO: {"patches": out.tokens}}
        return (self.clip_weight * self.itc(outputs, batch)
                + self.caption_weight * self.lm(outputs, batch))

    def clapkit_one_image_pass_step(self) -> None:
        _train(self.clapkit_one_image_pass_loss, self.opt_clapkit)

    def open_clip_loss(self) -> torch.Tensor:
        out = self.reference(self.images, self.tokens)
        clip, caption = self.coca_loss(out["image_features"], out["text_features"],
                                       out["logits"], out["labels"], out["logit_scale"])
        return clip + caption

    def clapkit_step(self) -> None:
        _train(self.clapkit_loss, self.opt_clapkit)

    def open_clip_step(self) -> None:
        _train(self.open_clip_loss, self.opt_open_clip)


def _train(loss_fn, opt) -> None:
    loss = loss_fn()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def profile_steps(pair: CocaPair, top: int) -> None:
    """The ``top`` operators by self CPU time (and CUDA time where there is one) of one step
    of each side."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                     if pair.device.type == "cuda" else [])
    key = "self_cuda_time_total" if pair.device.type == "cuda" else "self_cpu_time_total"
    for name, fn in (("clapkit", pair.clapkit_step), ("open_clip", pair.open_clip_step)):
        with profile(activities=acts, record_shapes=True) as prof:
            fn()
        print(f"--- profile: {name} step")
        print(prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=top))


def coca_row(pair: CocaPair, b: int, args) -> dict:
    images, caps = coca_batch(b, args.words, pair.backbone.image_size)
    pair.set_batch(images, caps)
    fns = {"clapkit": pair.clapkit_step, "open_clip": pair.open_clip_step}
    if args.one_image_pass:
        fns["clapkit_one_pass"] = pair.clapkit_one_image_pass_step
    res = interleaved(fns, args.steps, args.warmup, pair.device)
    out = {"model": args.model, "batch": b, "device": str(pair.device),
           "memory": memory_kind(pair.device),
           "caption_tokens": int(pair.backbone.text_mask(pair.tokens).sum(1).max()),
           "clip_weight": pair.clip_weight, "caption_weight": pair.caption_weight}
    for name, (sec, peak) in res.items():
        out[f"{name}_step_s"], out[f"{name}_peak_mb"] = sec, _mb(peak)
    out["step_ratio"] = out["clapkit_step_s"] / out["open_clip_step_s"]
    a, o = out["clapkit_peak_mb"], out["open_clip_peak_mb"]
    out["memory_ratio"] = a / o if a is not None and o else None
    out["within_1_15x"] = out["step_ratio"] <= 1.15
    if args.one_image_pass:
        out["one_pass_ratio"] = out["clapkit_one_pass_step_s"] / out["open_clip_step_s"]
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


def _fmt_mb(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="clapkit-tiny",
                   help="clapkit-tiny: the ITC + ITM + LM rows; a CoCa model (coca_ViT-B-32, "
                        "clapkit-tiny-coca): clapkit's ITC + LM step next to open_clip's")
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="batch sizes (default 16 32 on the tiny CLIP, 4 on a CoCa)")
    p.add_argument("--sampling-batch", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--dup", type=int, default=2, help="captions per image id in a batch")
    p.add_argument("--length", type=int, default=32, help="caption tokens (of 77)")
    p.add_argument("--queue", type=int, default=1024)
    p.add_argument("--words", type=int, default=10, help="CoCa rows: words per caption")
    p.add_argument("--clip-weight", type=float, default=1.0,
                   help="CoCa rows: ITC / CoCaLoss clip_loss_weight (open_clip default 1)")
    p.add_argument("--caption-weight", type=float, default=2.0,
                   help="CoCa rows: caption_lm / CoCaLoss caption_loss_weight (default 2)")
    p.add_argument("--device", default="cpu", help="CoCa rows: cpu or cuda")
    p.add_argument("--one-image-pass", action="store_true",
                   help="CoCa rows: also time clapkit's losses with the vision tower run once "
                        "(encode_image_tokens feeding z and the caption tokens; diagnostic)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="CoCa rows: print the N costliest operators of one step of each")
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    if args.model == "clapkit-tiny":
        print(f"{'B':>5} {'vectorised step s':>18} {'naive step s':>13} {'ratio':>6} "
              f"{'vec peak MB':>12} {'naive peak MB':>14}")
        for b in args.batch or [16, 32]:
            r = step_row(b, args)
            rows.append(r)
            print(f"{b:>5} {r['vectorised_step_s']:>18.4f} {r['naive_step_s']:>13.4f} "
                  f"{r['step_ratio']:>6.2f} {_fmt_mb(r['vectorised_peak_mb']):>12} "
                  f"{_fmt_mb(r['naive_peak_mb']):>14}")
        print(f"{'B':>5} {'vectorised draw s':>18} {'naive draw s':>13} {'ratio':>6}")
        for b in args.sampling_batch:
            r = sampling_row(b, args)
            rows.append(r)
            print(f"{b:>5} {r['vectorised_sampling_s']:>18.6f} "
                  f"{r['naive_sampling_s']:>13.6f} {r['sampling_ratio']:>6.1f}")
        print(f"peak memory: {memory_kind(torch.device('cpu'))}")
    else:
        device = torch.device(args.device)
        pair = CocaPair(args.model, device, args.clip_weight, args.caption_weight)
        n = sum(q.numel() for q in pair.reference.parameters())
        print(f"{args.model}: {n / 1e6:.1f}M parameters, random init, {device}, "
              f"{args.threads} thread(s); loss = {args.clip_weight:g} ITC + "
              f"{args.caption_weight:g} caption LM")
        print(f"{'B':>5} {'clapkit step s':>15} {'open_clip step s':>17} {'ratio':>6} "
              f"{'clapkit peak MB':>16} {'open_clip peak MB':>18} {'mem ratio':>10}")
        for b in args.batch or [4]:
            r = coca_row(pair, b, args)
            rows.append(r)
            mr = "n/a" if r["memory_ratio"] is None else f"{r['memory_ratio']:.2f}"
            print(f"{b:>5} {r['clapkit_step_s']:>15.4f} {r['open_clip_step_s']:>17.4f} "
                  f"{r['step_ratio']:>6.2f} {_fmt_mb(r['clapkit_peak_mb']):>16} "
                  f"{_fmt_mb(r['open_clip_peak_mb']):>18} {mr:>10}")
            if args.one_image_pass:
                print(f"{'':>5} {'one image pass':>15} {r['clapkit_one_pass_step_s']:>17.4f} "
                      f"{r['one_pass_ratio']:>6.2f} "
                      f"{_fmt_mb(r['clapkit_one_pass_peak_mb']):>16}")
        print(f"peak memory: {memory_kind(device)}; ratio = clapkit / open_clip "
              f"(issue 15: within 1.15x)")
        if args.profile:
            profile_steps(pair, args.profile)
    if args.json:
        args.json.write_text("\n".join(json.dumps({**r, "threads": args.threads})
                                       for r in rows) + "\n")
    return rows

if __name__ == "__main__":
    main()
