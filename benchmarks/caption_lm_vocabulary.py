"""Step time of the ``caption_lm`` loss with the tokenizer's vocabulary against
``vocabulary = "train_captions"`` (the head over the training captions' token ids).

Both sides are the loss plugin built through the plugin host on the tiny CLIP, sharing the
``itm`` grounded transformer as ``recipes/demo_pretrain.toml`` does, one training step each
(the loss's forward, backward, fused AdamW over the loss's own parameters, frozen encoders),
on the same batch of generated demo captions, alternated so machine noise hits both alike.

    python benchmarks/caption_lm_vocabulary.py [--batch 32] [--steps 20] [--image-tokens features]

Prints the median step time of each side and their ratio.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from clapkit.config import structure
from clapkit.interfaces import BuildContext
from clapkit.pipeline import Pipeline
from clapkit.plugins import get_plugin_host
from clapkit.sections import LossKeys
from clapkit_plugins.datasets.demo_captions import captions_for, draw_free_item, draw_item
from clapkit_plugins.datasets.demo_incremental import INCREMENTAL_CLASSES


def _build(host, kind: str, name: str, ctx: BuildContext, **options):
    entry = host.registries[kind].get(name)
    return entry.factory(structure(entry.config_cls, options, file="<bench>",
                                   key=f"{kind}.{name}"), ctx)


def demo_captions(n: int, seed: int = 0) -> list[str]:
    """Captions of ``n`` generated demo images (nine in ten free, as the caption demo)."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        cls = rng.choice(INCREMENTAL_CLASSES)
        _, attrs = (draw_free_item if k % 10 else draw_item)(rng, cls)
        out.append(rng.choice(captions_for(attrs)))
    return out


def side(host, backbone, vocabulary: str, image_tokens: str, train: list[str]):
    ctx = BuildContext(backbone=backbone, class_names=["a"], task_of_class=[0],
                       streams=("image",), num_frames=1, seed=0, train_texts=train)
    losses = {"itm": _build(host, "loss", "itm", ctx, image_tokens=image_tokens),
              "lm": _build(host, "loss", "caption_lm", ctx, share_with="itm",
                           vocabulary=vocabulary)}
    prompts = {"text": _build(host, "prompt", "handcrafted", ctx)}
    pipe = Pipeline(backbone=backbone, prompts=prompts, adapters={}, adapter_places={},
                    head=None, head_view="text", losses=losses, loss_keys={n: LossKeys() for n in losses},
                    streams=("image",), task_of_class=[0])
    for loss in losses.values():
        loss.bind(pipe)
    params = [p for loss in losses.values() for p in loss.parameters()]
    return pipe, torch.optim.AdamW(params, lr=1e-3, fused=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--image-tokens", default="features", choices=("features", "patches"))
    args = ap.parse_args()
    torch.manual_seed(0)
    host = get_plugin_host(autoload_third_party=False)
    entry = host.registries["backbone"].get("open_clip")
    backbone = entry.factory(structure(entry.config_cls, entry.test_options(None),
                                       file="<bench>", key="backbone"), BuildContext()).eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    train = demo_captions(2000)
    caps = demo_captions(args.batch, seed=1)
    size = backbone.image_size
    batch = {"streams": {"image": torch.randn(args.batch, 1, 3, size, size)},
             "label": torch.zeros(args.batch, dtype=torch.long),
             "texts": [[c] for c in caps], "group": [str(i) for i in range(args.batch)],
             "index": torch.arange(args.batch), "epoch": 0}
    sides = {v: side(host, backbone, v, args.image_tokens, train)
             for v in ("tokenizer", "train_captions")}
    with torch.no_grad():
        outputs = sides["tokenizer"][0](dict(batch))          # frozen encoders: one pass
    times: dict[str, list[float]] = {v: [] for v in sides}
    for step in range(args.warmup + args.steps):
        for name, (pipe, opt) in sides.items():
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = pipe.losses["lm"](outputs, dict(batch))
            loss.backward()
            opt.step()
            if step >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    heads = {k: p.losses["lm"].lm_head.out_features for k, (p, _) in sides.items()}
    for k in sides:
        print(f"{k:<15} head {heads[k]:>6} ids  step {1000 * med[k]:7.1f} ms")
    print(f"tokenizer / train_captions: {med['tokenizer'] / med['train_captions']:.2f}x "
          f"(batch {args.batch}, image_tokens {args.image_tokens}, "
          f"{torch.get_num_threads()} thread(s))")


if __name__ == "__main__":
    main()
