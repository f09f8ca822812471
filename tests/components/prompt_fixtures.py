"""Shared helpers of the prompt-style tests (test_prompt_*.py): the two tiny open_clip models,
a small slice of the generated shape demo, and a few-step training loop.

The learning tests train a prompt style alone on frozen features of 4 demo classes (the cosine
head of the recipes, CLIP's logit scale), as the `prompts` stage of the recipes does.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from clapkit.interfaces import BuildContext, ImageInputs, StepContext
from clapkit_plugins.backbones.open_clip import (TINY_MODEL, TINY_TEXTWIDE_MODEL,
                                                OpenClipBackbone, OpenClipConfig)

MODELS = (TINY_MODEL, TINY_TEXTWIDE_MODEL)
DEMO_CLASSES = ["solid circle", "striped square", "dotted triangle", "checkered star"]


@lru_cache(maxsize=None)
def backbone(model: str) -> OpenClipBackbone:
    return OpenClipBackbone(OpenClipConfig(model=model)).eval()


def context(model: str, classes: list[str] | None = None) -> BuildContext:
    return BuildContext(backbone=backbone(model), class_names=list(classes or DEMO_CLASSES))


@lru_cache(maxsize=None)
def demo_images(model: str, root: str, per_class: int = 12
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [N,3,H,W], labels [N])`` of ``DEMO_CLASSES`` from a generated demo set."""
    from clapkit_plugins.datasets.demo_incremental import make_incremental_demo
    out = Path(root)
    if not (out / "cifar-100-python" / "train").is_file():
        make_incremental_demo(out, seed=0, train_per_class=per_class, test_per_class=1)
    folder = out / "cifar-100-python"
    with open(folder / "train", "rb") as fh:
        d = pickle.load(fh, encoding="bytes")
    with open(folder / "meta", "rb") as fh:
        names = [n.decode() for n in pickle.load(fh, encoding="bytes")[b"fine_label_names"]]
    keep = [names.index(c) for c in DEMO_CLASSES]
    rows = d[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    tf = backbone(model).transform(False)
    imgs, labels = [], []
    for row, lab in zip(rows, d[b"fine_labels"]):
        if lab in keep:
            imgs.append(tf(Image.fromarray(row)))
            labels.append(keep.index(lab))
    return torch.stack(imgs), torch.tensor(labels)


def standardise(f: torch.Tensor) -> torch.Tensor:
    """What the recipes' feature_norm adapter does once its statistics have settled."""
    return (f - f.mean(0)) / f.std(0).clamp_min(1e-6)


def train_steps(prompt: torch.nn.Module, bb: OpenClipBackbone, images: torch.Tensor,
                labels: torch.Tensor, steps: int = 30, lr: float = 0.02,
                extra: Callable[[dict], torch.Tensor] | None = None
                ) -> tuple[list[float], float]:
    """Full-batch AdamW steps on the prompt's parameters; returns the CE loss per step and
    the final training accuracy. Pixels go through the tower when the prompt changes it."""
    torch.manual_seed(0)
    opt = torch.optim.AdamW([p for p in prompt.parameters() if p.requires_grad], lr=lr)
    scale = float(bb.logit_scale)
    with torch.no_grad():
        frozen = bb.encode_image(images)
    step = StepContext(training=True, label=labels)
    losses = []
    acc = 0.0
    for _ in range(steps + 1):
        if prompt.changes_image_encoder:
            raw = bb.encode_image_prompted(images, prompt.vision_prompts())
        else:
            raw = frozen
        z = standardise(raw)
        image = ImageInputs(z=z, raw={"image": raw}) if prompt.needs_image_features else None
        out = prompt(image, step)
        text = F.normalize(out.text, dim=-1)
        zn = F.normalize(z, dim=-1)
        logits = scale * (zn @ text.t() if text.dim() == 2 else
                          torch.einsum("bd,bcd->bc", zn, text))
        ce = F.cross_entropy(logits, labels)
        losses.append(float(ce.detach()))
        acc = float((logits.argmax(1) == labels).float().mean())
        total = ce + (extra(out.aux) if extra is not None else 0.0)
        opt.zero_grad()
        total.backward()
        opt.step()
    return losses, acc


def ref_encode(bb, emb: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The reference prompt learners' ``TextEncoder.forward`` (CoOp, AttriCLIP):
    positions, blocks, ln_final, the EOT row, projection."""
    m = bb.model
    x = emb + m.positional_embedding
    for blk in m.transformer.resblocks:
        x = blk(x, attn_mask=m.attn_mask)
    x = m.ln_final(x)
    return x[torch.arange(len(tokens)), tokens.argmax(-1)] @ m.text_projection
