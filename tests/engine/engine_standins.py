"""Small stand-in components for the engine tests (loaded via a recipe's ``plugins = [...]``).

The engine tests exercise the trainer, not the components, so these are minimal but real:
an in-memory dataset whose classes differ by colour (learnable in a few steps), a learnable
prompt, a per-frame linear adapter, a mean fusion, a mixup-aware CE loss, an L2 regulariser
(to observe loss schedules) and a first-k class-balanced selector. Also ``clapkit-tiny``
from the real open_clip backbone plugin is used as backbone.
"""

from __future__ import annotations

import random
import zlib

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from clapkit import hookimpl
from clapkit.data.base import DatasetSource, ItemRef
from clapkit.functional import mixup_mean
from clapkit.interfaces import (Adapter, BuildContext, Loss, Prompt, PromptOutput, Selector,
                                class_quota)

PALETTE = [(220, 40, 40), (40, 200, 40), (40, 60, 220), (230, 220, 40), (200, 40, 200),
           (40, 210, 210), (250, 140, 20), (120, 120, 120)]


# --- dataset ---------------------------------------------------------------------------------

@attrs.frozen
class ColorsConfig:
    num_classes: int = 4
    train_counts: list[int] = attrs.field(factory=lambda: [6, 6, 6, 6])
    valid_counts: list[int] = attrs.field(factory=lambda: [3, 3, 3, 3])
    splits: list[str] = attrs.field(factory=lambda: ["train", "valid"])
    streams: list[str] = attrs.field(factory=lambda: ["image"])
    num_frames: int = 2
    size: int = 64
    noise: float = 30.0


class ColorsSource(DatasetSource):
    """Frames of a class colour plus noise; train/valid/test splits by name."""

    def __init__(self, cfg: ColorsConfig) -> None:
        self.cfg = cfg
        self.classes = [f"class{c}" for c in range(cfg.num_classes)]
        self.streams = tuple(cfg.streams)
        self.num_frames = cfg.num_frames
        self._refs: dict[str, list[ItemRef]] = {}
        for split in cfg.splits:
            counts = cfg.valid_counts if split != "train" else cfg.train_counts
            self._refs[split] = [ItemRef(id=f"{split}/{c}/{i}", label=c, path=f"{split}-{c}-{i}")
                                 for c in range(cfg.num_classes) for i in range(counts[c])]

    def splits(self) -> list[str]:
        return list(self.cfg.splits)

    def refs(self, split: str) -> list[ItemRef]:
        return list(self._refs[split])

    def load(self, ref: ItemRef, train: bool, rng: random.Random) -> dict[str, list[Image.Image]]:
        base = np.asarray(PALETTE[ref.label % len(PALETTE)], dtype=np.float32)
        g = np.random.default_rng(zlib.crc32(ref.id.encode()) + (rng.randrange(1000) if train else 0))
        out = {}
        for k, s in enumerate(self.streams):
            frames = []
            for _ in range(self.num_frames):
                px = base * (0.8 + 0.2 * k) + g.normal(0, self.cfg.noise,
                                                       (self.cfg.size, self.cfg.size, 3))
                frames.append(Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)))
            out[s] = frames
        return out


# --- prompt, adapters, losses, selector ----------------------------------------------------

@attrs.frozen
class NoCfg:
    pass


class ResidualPrompt(Prompt):
    """Frozen class-name text features plus a learnable residual ``[C,D]``."""

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__()
        bb = ctx.backbone
        with torch.no_grad():
            base = bb.encode_text(bb.tokenize([f"a photo of {n}" for n in ctx.class_names]))
        self.register_buffer("base", F.normalize(base.float(), dim=-1))
        self.residual = nn.Parameter(torch.zeros_like(self.base))

    def forward(self, image=None, step=None) -> PromptOutput:
        return PromptOutput(text=self.base + self.residual)


@attrs.frozen
class FrameLinearConfig:
    dropout: float = 0.0


class FrameLinear(Adapter):
    place = "image"

    def __init__(self, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        nn.init.eye_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(x))


class MeanFusion(Adapter):
    place = "fusion"

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, zs: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(zs.values())).mean(0) * self.scale


class CE(Loss):
    needs = ("logits",)

    def forward(self, outputs, batch):
        logits = outputs["logits"]
        return mixup_mean(lambda y: F.cross_entropy(logits.float(), y, reduction="none"), batch)


class TextL2(Loss):
    """||text||^2 mean: a second term whose schedule weight the tests read back."""

    needs = ("text",)

    def forward(self, outputs, batch):
        return outputs["text"].float().pow(2).mean()


class FirstK(Selector):
    def select(self, inputs, budget):
        labels = inputs.labels
        quota = class_quota(labels, budget)
        out = []
        for c, k in quota.items():
            out += torch.nonzero(labels == c).flatten()[:k].tolist()
        return torch.as_tensor(sorted(out), dtype=torch.long)


class GrowingPrompt(Prompt):
    """Grows per task: ``deltas.<t>`` (a trainable ``[C,D]`` residual, the older ones frozen)
    and the buffer ``anchors.<t>`` created at task start, filled at task end with the mean
    ``z`` of the task's view. ``calls`` records the lifecycle for the tests."""

    calls: list[tuple] = []

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__()
        bb = ctx.backbone
        with torch.no_grad():
            base = bb.encode_text(bb.tokenize([f"a photo of {n}" for n in ctx.class_names]))
        self.register_buffer("base", F.normalize(base.float(), dim=-1))
        self.deltas = nn.ParameterDict()
        self.anchors = nn.Module()

    def on_task_start(self, task, seen_classes):
        GrowingPrompt.calls.append(("start", task, seen_classes))
        for p in self.deltas.values():
            p.requires_grad_(False)
        self.deltas[str(task)] = nn.Parameter(torch.zeros_like(self.base))
        self.anchors.register_buffer(str(task), torch.zeros(self.base.shape[1]))

    def on_task_end(self, task, view):
        GrowingPrompt.calls.append(("end", task, list(view.classes),
                                    sorted(set(view.labels.tolist())), tuple(view.z.shape),
                                    sorted(view.image)))
        getattr(self.anchors, str(task)).copy_(view.z.mean(0))

    def forward(self, image=None, step=None) -> PromptOutput:
        text = self.base
        for p in self.deltas.values():
            text = text + p
        return PromptOutput(text=text)


class DeepPrompt(Prompt):
    """Changes the image encoder: one learnable vision prompt token before block 0."""

    changes_image_encoder = True

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__()
        bb = ctx.backbone
        with torch.no_grad():
            base = bb.encode_text(bb.tokenize([f"a photo of {n}" for n in ctx.class_names]))
        self.register_buffer("base", F.normalize(base.float(), dim=-1))
        self.vision = nn.Parameter(torch.zeros(1, bb.vision_width))

    def vision_prompts(self):
        return [self.vision]

    def forward(self, image=None, step=None) -> PromptOutput:
        return PromptOutput(text=self.base)


class NegCE(Loss):
    """-CE: training with it makes the model worse (to separate best from last epochs)."""

    needs = ("logits",)

    def forward(self, outputs, batch):
        return -F.cross_entropy(outputs["logits"].float(), batch["label"])


@hookimpl
def clapkit_register(registrar):
    registrar.add("dataset", "t_colors", lambda cfg, ctx: ColorsSource(cfg), config=ColorsConfig)
    registrar.add("prompt", "t_growing", lambda cfg, ctx: GrowingPrompt(ctx), config=NoCfg)
    registrar.add("prompt", "t_deep", lambda cfg, ctx: DeepPrompt(ctx), config=NoCfg)
    registrar.add("loss", "t_neg_ce", lambda cfg, ctx: NegCE(), config=NoCfg)
    registrar.add("prompt", "t_residual", lambda cfg, ctx: ResidualPrompt(ctx), config=NoCfg)
    registrar.add("adapter", "t_frame_linear",
                  lambda cfg, ctx: FrameLinear(ctx.embed_dim, cfg.dropout),
                  config=FrameLinearConfig, place="image")
    registrar.add("adapter", "t_mean_fusion", lambda cfg, ctx: MeanFusion(ctx.embed_dim),
                  config=NoCfg, place="fusion")
    registrar.add("loss", "t_ce", lambda cfg, ctx: CE(), config=NoCfg)
    registrar.add("loss", "t_text_l2", lambda cfg, ctx: TextL2(), config=NoCfg)
    registrar.add("selector", "t_first", lambda cfg, ctx: FirstK(), config=NoCfg)


BASE_RECIPE = '''
plugins = ["engine_standins"]

[run]
name = "t"
seed = 0
progress = false

[data]
plugin = "t_colors"
batch_size = 4

[backbone]
plugin = "open_clip"
model = "clapkit-tiny"

[prompts.text]
plugin = "t_residual"

[adapters.frame]
plugin = "t_frame_linear"

[head]
plugin = "cosine"
temperature = 0.05

[losses.ce]
plugin = "t_ce"

[[stages]]
name = "prompt"
train = ["prompts.*"]
epochs = 2
lr = 0.05

[[stages]]
name = "adapter"
train = ["adapters.*"]
epochs = 2
lr = 0.01
'''


def write_recipe(tmp_path, text: str = BASE_RECIPE, name: str = "recipe.toml"):
    """The recipe file in ``tmp_path`` (cache and outputs stay under ``tmp_path`` too)."""
    path = tmp_path / name
    path.write_text(text)
    return path


def base_overrides(tmp_path) -> list[str]:
    return [f'cache.dir="{tmp_path / "cache"}"']


def ddp_worker(rank: int, world_size: int, port: int, path: str, overrides: list[str],
               out_dir: str, extra_env: dict[str, str] | None = None) -> None:
    """One rank of a gloo process group running ``run_recipe`` (for ``mp.spawn``);
    ``extra_env`` is set in the rank's environment first."""
    import os

    import torch.distributed as dist

    from clapkit.engine.runner import run_recipe
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), **(extra_env or {}))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        run_recipe(path, overrides=overrides, out_dir=out_dir)
    finally:
        dist.destroy_process_group()


# -- interruptions (resume tests) ----------------------------------------------------------

class Crash(Exception):
    pass


class CrashAfter:
    """Raises right after the n-th ``last.pt`` is written (a kill between epochs)."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    @hookimpl
    def clapkit_checkpoint_saved(self, run, path):
        if path.endswith("last.pt"):
            self.seen += 1
            if self.seen == self.n:
                raise Crash(path)
