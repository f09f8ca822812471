"""Cost of the prompt styles per training step, and what the feature cache saves CoOp.

    python benchmarks/prompts.py                        # tiny and ViT-B-16 (random init)
    python benchmarks/prompts.py --models clapkit-tiny --steps 3

For each model (random init: the cost does not depend on the weights) and each style
(coop, cocoop, maple, attriclip) at ``--classes`` classes (default 100, ImageNet class names)
and batch ``--batch`` (32), one training step = prompt forward -> text features, image
features (cached features stand in a tensor for coop/cocoop/attriclip; maple runs the
prompted vision tower on pixels), cosine logits, cross-entropy, backward. Printed per style:
the rows the text tower encodes per step (coop/maple: C; cocoop: B x C; attriclip: distinct
selections x C) and the mean forward+backward seconds per step after ``--warmup`` steps.

Then one CoOp epoch of ``--epoch-images`` images: uncached (the frozen image encoder runs on
every batch) against cached (features read from memory, what the HDF5 cache gives a frozen
encoder).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from clapkit.interfaces import BuildContext, ImageInputs, StepContext
from clapkit_plugins.backbones.open_clip import TINY_MODEL, OpenClipBackbone, OpenClipConfig
from clapkit_plugins.prompts import attriclip, cocoop, coop, maple

STYLES: dict[str, Callable[[BuildContext], torch.nn.Module]] = {
    "coop": lambda ctx: coop.build(coop.CoOpConfig(n_ctx=16), ctx),
    "cocoop": lambda ctx: cocoop.build(cocoop.CoCoOpConfig(), ctx),
    "maple": lambda ctx: maple.build(maple.MapleConfig(
        depth=min(9, ctx.backbone.text_layers, ctx.backbone.vision_layers)), ctx),
    "attriclip": lambda ctx: attriclip.build(attriclip.AttriClipConfig(), ctx),
}


def text_rows(style: str, prompt: torch.nn.Module, batch: int) -> int:
    if style == "coop":
        return int(prompt.tokens.shape[0])
    return int(prompt.text_rows(batch))


def step(prompt: torch.nn.Module, bb: OpenClipBackbone, images: torch.Tensor,
         feats: torch.Tensor, labels: torch.Tensor) -> None:
    """One forward+backward of the prompt-learning objective."""
    if prompt.changes_image_encoder:
        z = bb.encode_image_prompted(images, prompt.vision_prompts())
    else:
        z = feats
    image = ImageInputs(z=z, raw={"image": z}) if prompt.needs_image_features else None
    text = F.normalize(prompt(image, StepContext(training=True)).text, dim=-1)
    zn = F.normalize(z, dim=-1)
    logits = bb.logit_scale * (zn @ text.t() if text.dim() == 2
                               else torch.einsum("bd,bcd->bc", zn, text))
    loss = F.cross_entropy(logits, labels)
    prompt.zero_grad(set_to_none=True)
    loss.backward()


def text_activation_gb(bb: OpenClipBackbone, prompt: torch.nn.Module, rows: int) -> float:
    """Rough float32 activations kept for backward by ``rows`` prompts in the text tower
    (~18 width-sized tensors per token and block, the MLP's 4x expansion included)."""
    tokens = int(prompt.tokens.argmax(-1).max()) + 1
    return rows * tokens * bb.text_width * bb.text_layers * 18 * 4 / 2 ** 30


def time_steps(fn: Callable[[], None], warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def bench_model(model: str, args: argparse.Namespace) -> None:
    bb = OpenClipBackbone(OpenClipConfig(model=model))
    names = list(IMAGENET_CLASSNAMES[:args.classes])
    ctx = BuildContext(backbone=bb, class_names=names)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, bb.image_size, bb.image_size, generator=g)
    with torch.no_grad():
        feats = bb.encode_image(images)
    labels = torch.randint(0, len(names), (args.batch,), generator=g)
    print(f"\n{model} (random init): text {bb.text_width}x{bb.text_layers}, vision "
          f"{bb.vision_width}x{bb.vision_layers}, image {bb.image_size}px, "
          f"{len(names)} classes, batch {args.batch}")
    print(f"  {'style':<10} {'text rows/step':>15} {'fwd+bwd s/step':>15}")
    for style in args.styles:
        torch.manual_seed(0)
        prompt = STYLES[style](ctx)
        b, note = args.batch, ""
        if style == "cocoop":
            # B x C text rows keep their activations for backward: on a large text tower
            # that exceeds a small machine's memory, so measure a batch that fits
            need = text_activation_gb(bb, prompt, b * len(names))
            while b > 1 and text_activation_gb(bb, prompt, b * len(names)) > args.max_gb:
                b //= 2
            if b != args.batch:
                note = (f"  (measured at batch {b}: batch {args.batch} keeps ~{need:.0f} GB of "
                        f"text activations, over --max-gb {args.max_gb:g})")
        sec = time_steps(lambda: step(prompt, bb, images[:b], feats[:b], labels[:b]),
                         args.warmup, args.steps)
        rows = text_rows(style, prompt, args.batch)
        print(f"  {style:<10} {rows:>15d} {sec:>15.3f}{note}", flush=True)
    if args.epoch_images:
        coop_epoch(bb, ctx, args)


def coop_epoch(bb: OpenClipBackbone, ctx: BuildContext, args: argparse.Namespace) -> None:
    """One CoOp epoch: the frozen encoder on every batch vs features read from memory."""
    n, b = args.epoch_images, args.batch
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, bb.image_size, bb.image_size, generator=g)
    labels = torch.randint(0, len(ctx.class_names), (n,), generator=g)
    prompt = STYLES["coop"](ctx)
    t0 = time.perf_counter()
    cached = []
    with torch.no_grad():
        for i in range(0, n, b):
            cached.append(bb.encode_image(images[i:i + b]))
    build_s = time.perf_counter() - t0

    def epoch(use_cache: bool) -> float:
        t = time.perf_counter()
        for k, i in enumerate(range(0, n, b)):
            if use_cache:
                f = cached[k]
            else:
                with torch.no_grad():
                    f = bb.encode_image(images[i:i + b])
            step(prompt, bb, images[i:i + b], f, labels[i:i + b])
        return time.perf_counter() - t

    unc, cac = epoch(False), epoch(True)
    print(f"  coop epoch of {n} images: uncached {unc:.2f} s, cached {cac:.2f} s "
          f"({unc / max(cac, 1e-9):.1f}x; building the features once took {build_s:.2f} s)",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=[TINY_MODEL, "ViT-B-16"])
    ap.add_argument("--styles", nargs="+", default=list(STYLES), choices=list(STYLES))
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--max-gb", type=float, default=4.0,
                    help="cocoop: halve the measured batch until its text activations fit")
    ap.add_argument("--epoch-images", type=int, default=256,
                    help="images in the cached-vs-uncached CoOp epoch (0 = skip)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    for m in args.models:
        bench_model(m, args)


if __name__ == "__main__":
    main()
