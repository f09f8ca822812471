"""A run without a classifier (loaded via ``plugins = ["engine_standins",
"objective_standins"]``): an image-text alignment loss over ``z`` and the class text, and an
epoch evaluation that measures text retrieval -- so the core is exercised with no [head] and
a selection metric that is not a classification one."""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

from clapkit import hookimpl
from clapkit.data.base import ItemRef
from clapkit.interfaces import Loss
from engine_standins import PALETTE, ColorsConfig, ColorsSource

COLOUR_NAMES = ["red", "green", "blue", "yellow", "magenta", "cyan", "orange", "grey"]


class CaptionedColors(ColorsSource):
    """The colours set whose items carry two captions each, grouped by item."""

    def __init__(self, cfg: ColorsConfig) -> None:
        super().__init__(cfg)
        for split, refs in self._refs.items():
            self._refs[split] = [attrs.evolve(r, texts=(f"a {COLOUR_NAMES[r.label]} square",
                                                        f"{COLOUR_NAMES[r.label]} colour"),
                                              group=f"img:{r.id}") for r in refs]


#: every batch's texts the caption loss saw, as (cached?, texts, groups) -- for the tests
SEEN: list[tuple[bool, list, list]] = []


class CaptionAlign(Loss):
    """Symmetric InfoNCE between ``z`` and the first caption of each item, encoded by the
    backbone's text tower (what an image-text objective reads from a batch)."""

    needs = ("z",)

    def bind(self, pipeline):
        self._backbone = pipeline.backbone

    def forward(self, outputs, batch):
        SEEN.append(("features" in batch and batch.get("features") is not None,
                     batch["texts"], batch["group"]))
        bb = self._backbone
        tokens = bb.tokenize([t[0] for t in batch["texts"]]).to(outputs["z"].device)
        t = F.normalize(bb.encode_text(tokens).float(), dim=-1)
        z = F.normalize(outputs["z"], dim=-1)
        logits = 10 * z @ t.T
        same = torch.tensor([[a == b for b in batch["label"].tolist()]
                             for a in batch["label"].tolist()], dtype=torch.float32)
        target = same / same.sum(1, keepdim=True)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@attrs.frozen
class NoCfg:
    pass


class Align(Loss):
    """InfoNCE of each item's ``z`` against the class texts (the item's class is positive)."""

    needs = ("z", "views.text")

    def forward(self, outputs, batch):
        z = F.normalize(outputs["z"], dim=-1)
        t = F.normalize(outputs["views"]["text"], dim=-1)
        return F.cross_entropy(20 * z @ t.T, batch["label"])


@hookimpl
def clapkit_register(registrar):
    registrar.add("loss", "t_align", lambda cfg, ctx: Align(), config=NoCfg)
    registrar.add("loss", "t_caption_align", lambda cfg, ctx: CaptionAlign(), config=NoCfg)
    registrar.add("dataset", "t_captioned", lambda cfg, ctx: CaptionedColors(cfg),
                  config=ColorsConfig)


@hookimpl
def clapkit_epoch_evaluate(run, task, epoch, evaluation):
    """``valid/text_r1``: how often the nearest class text of an item is its own class."""
    hits, n = [0], [0]

    def count(batch, outputs):
        z = F.normalize(outputs["z"].float(), dim=-1)
        t = F.normalize(outputs["views"]["text"].float(), dim=-1)
        hits[0] += int(((z @ t.T).argmax(1) == batch["label"]).sum())
        n[0] += int(batch["label"].numel())

    evaluation.run(evaluation.splits["valid"], range(task + 1), count)
    return {"valid/text_r1": hits[0] / max(1, n[0])}
