"""The pipeline's declared output schema, the step context it hands to components, ragged
Monte-Carlo samples, selection inputs, and the frozen backbone's mode."""

from __future__ import annotations

import math

import attrs
import pytest
import torch
from torch import nn

from clapkit.engine.distributed import DistInfo
from clapkit.engine.loop import StepConfig, evaluate, pad_samples, train_epoch
from clapkit.engine.memory import select_exemplars
from clapkit.engine.loop import Collected
from clapkit.errors import ClapkitError
from clapkit.interfaces import (Adapter, Backbone, Head, HeadOutput, ImageInputs, Loss, Prompt,
                                PromptOutput, Router, SelectionInputs, Selector, StepContext,
                                TextAdapterOutput)
from clapkit.pipeline import Pipeline, _check_loss_needs
from clapkit.sections import LossKeys

C, D, B, S = 4, 6, 3, 5
TASKS = [0, 0, 1, 1]


class Bb(Backbone):
    embed_dim, image_size = D, 8

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1), requires_grad=False)


class Double(Adapter):
    place = "image"

    def forward(self, x):
        return 2 * x


class RecPrompt(Prompt):
    needs_image_features = True
    aux_keys = ("norm",)

    def __init__(self, extra_aux: bool = False) -> None:
        super().__init__()
        self.t = nn.Parameter(torch.randn(C, D))
        self.extra_aux, self.seen = extra_aux, []

    def forward(self, image=None, step=None):
        self.seen.append((image, step))
        aux = {"norm": self.t.norm()}
        if self.extra_aux:
            aux["undeclared"] = self.t.sum()
        return PromptOutput(text=self.t, aux=aux)


class FixedRouter(Router):
    def __init__(self) -> None:
        super().__init__()
        self.steps = []

    def forward(self, z, step):
        self.steps.append(step)
        return torch.tensor([S, 2])                   # task 1 gets 2 of the S samples


class RaggedText(Adapter):
    """``[S,B,C,D]`` samples; classes of task t are real in the first ``allocation[t]``."""

    place = "text"

    def __init__(self) -> None:
        super().__init__()
        self.steps = []

    def forward(self, text, z, step):
        self.steps.append(step)
        s = int(step.allocation.max())
        samples = text.expand(s, z.shape[0], C, D) + torch.randn(s, z.shape[0], C, D)
        counts = step.allocation[step.task_of_class]               # [C]
        mask = torch.arange(s)[:, None] < counts[None, :]          # [S,C]
        return TextAdapterOutput(text=samples, sample_mask=mask,
                                 distribution=torch.distributions.Normal(text, 1.0))


class DotHead(Head):
    def forward(self, z, text, views=None):
        return HeadOutput.from_logits(torch.einsum("bd,sbcd->sbc", z, text))


class NeedsLoss(Loss):
    def __init__(self, needs):
        super().__init__()
        self.needs = needs

    def forward(self, outputs, batch):
        return outputs["logits"].sum()


def make_pipe(prompt=None, **kw) -> Pipeline:
    prompt = prompt or RecPrompt()
    return Pipeline(backbone=Bb(), prompts={"p": prompt},
                    adapters={"dbl": nn.ModuleDict({"image": Double()}), "ta": RaggedText()},
                    adapter_places={"dbl": "image", "ta": "text"}, head=DotHead(),
                    head_view="p", losses={}, loss_keys={}, streams=("image",),
                    task_of_class=TASKS, router=FixedRouter(), num_samples=S, **kw)


def test_available_outputs_come_from_the_declarations():
    pipe = make_pipe()
    avail = pipe.available_outputs()
    assert {"logits", "z", "views.p", "aux.p.norm", "distributions.ta", "sample_logits",
            "sample_mask", "raw"} <= avail
    assert "aux.p.undeclared" not in avail and "distributions.p" not in avail
    specs = {"x": attrs.make_class("Spec", {"file": attrs.field(default="r.toml"),
                                             "section": attrs.field(default="losses.x"),
                                             "plugin": attrs.field(default="needy")})()}
    _check_loss_needs(specs, {"x": NeedsLoss(("aux.p.norm", "distributions.ta"))}, avail)
    with pytest.raises(ClapkitError, match=r"r.toml: losses.x: .*'aux.p.kl'"):
        _check_loss_needs(specs, {"x": NeedsLoss(("aux.p.kl",))}, avail)


def test_forward_hands_the_step_image_inputs_and_router_allocation():
    torch.manual_seed(0)
    pipe = make_pipe()
    feats = {"image": torch.randn(B, 2, D)}
    step = StepContext(task=1, seen_classes=4, epoch=3, num_samples=S, training=True,
                       task_of_class=torch.tensor(TASKS), tasks_present=torch.tensor([1]),
                       label=torch.tensor([2, 3, 2]))
    out = pipe({"features": feats, "label": step.label, "step": step})
    image, got = pipe.prompts["p"].seen[-1]
    assert got is step
    assert isinstance(image, ImageInputs)
    torch.testing.assert_close(image.raw["image"], feats["image"].mean(1))   # before adapters
    torch.testing.assert_close(image.z, 2 * feats["image"].mean(1))          # adapted
    assert pipe.router.steps[-1] is step
    ta_step = pipe.adapters["ta"].steps[-1]
    assert ta_step.allocation.tolist() == [S, 2] and ta_step.epoch == 3 and ta_step.task == 1
    # outputs under their declared names
    assert "p.norm" in out["aux"]
    assert isinstance(out["distributions"]["ta"], torch.distributions.Normal)
    torch.testing.assert_close(out["views"]["p"], pipe.prompts["p"].t)
    # ragged samples: logits average only the real samples of each class
    sl, mask = out["sample_logits"], out["sample_mask"]
    assert sl.shape == (S, B, C) and mask.shape == (S, C)
    assert mask[:, :2].all() and mask[:2, 2:].all() and not mask[2:, 2:].any()
    torch.testing.assert_close(out["logits"][:, :2], sl[:, :, :2].mean(0))
    torch.testing.assert_close(out["logits"][:, 2:], sl[:2, :, 2:].mean(0))


def test_undeclared_aux_and_two_encoder_prompts_are_errors():
    pipe = make_pipe(RecPrompt(extra_aux=True))
    with pytest.raises(ClapkitError, match="p: RecPrompt returned aux output 'undeclared'"):
        pipe({"features": {"image": torch.randn(B, 1, D)}})

    class Deep(Prompt):
        changes_image_encoder = True

    with pytest.raises(ClapkitError, match="'a' and 'b' both change the image encoder"):
        Pipeline(backbone=Bb(), prompts={"a": Deep(), "b": Deep()}, adapters={},
                 adapter_places={}, head=DotHead(), head_view="a", losses={}, loss_keys={},
                 streams=("image",), task_of_class=TASKS)


def test_lifecycle_reaches_the_outermost_components_once():
    calls = []

    class Grows(Adapter):
        place = "image"

        def __init__(self, inner=None):
            super().__init__()
            self.inner = inner

        def on_task_start(self, task, seen):
            calls.append((type(self).__name__, id(self), task, seen))

        def forward(self, x):
            return x

    outer = Grows(inner=Grows())                 # the inner one is the outer one's business
    pipe = Pipeline(backbone=Bb(), prompts={"p": RecPrompt()},
                    adapters={"g": nn.ModuleDict({"face": outer, "body": Grows()})},
                    adapter_places={"g": "image"}, head=DotHead(), head_view="p", losses={},
                    loss_keys={}, streams=("face", "body"), task_of_class=TASKS)
    names = [n for n, _ in pipe.components()]
    assert names == ["prompts.p", "adapters.g.face", "adapters.g.body", "head"]
    pipe.on_task_start(1, 4)
    assert [(c[2], c[3]) for c in calls] == [(1, 4), (1, 4)]
    assert id(outer.inner) not in {c[1] for c in calls}


class VaryingS(nn.Module):
    """Sample count follows the batch: 2 samples for the first batch, 3 for the second."""

    def forward(self, batch):
        b = batch["label"].shape[0]
        s = 2 if int(batch["index"][0]) == 0 else 3
        sl = torch.arange(s * b * C, dtype=torch.float).reshape(s, b, C)
        return {"logits": sl.mean(0), "sample_logits": sl, "z": torch.zeros(b, D),
                "raw": {"image": torch.ones(b, D)}}


def _cfg(seen=None):
    return StepConfig(device=torch.device("cpu"), remap=torch.arange(C),
                      task_of_class=torch.tensor(TASKS), num_classes=C, seen=seen)


def test_evaluate_pads_ragged_sample_counts_with_a_mask():
    batches = [{"label": torch.tensor([0, 1]), "index": torch.tensor([0, 1])},
               {"label": torch.tensor([2, 3, 1]), "index": torch.tensor([2, 3, 4])}]
    _, col = evaluate(VaryingS(), batches, _cfg(), DistInfo(), collect=True)
    assert col.sample_logits.shape == (3, 5, C) and col.sample_mask.shape == (3, 5, C)
    assert col.sample_mask[:2].all() and not col.sample_mask[2, :2].any()
    assert col.sample_mask[2, 2:].all()
    assert (col.sample_logits[2, :2] == 0).all()                    # padding
    assert col.raw["image"].shape == (5, D)
    # same S everywhere: no mask at all
    sl, mask = pad_samples([torch.ones(2, 1, C), torch.ones(2, 3, C)], [None, None])
    assert sl.shape == (2, 4, C) and mask is None
    # a per-class [S,C] mask of a batch is kept per item
    sl, mask = pad_samples([torch.ones(2, 1, C), torch.ones(1, 2, C)],
                           [torch.tensor([[True] * C, [True, True, False, False]]), None])
    assert mask.shape == (2, 3, C) and mask[1, 0].tolist() == [True, True, False, False]
    assert not mask[1, 1:].any()


def test_selection_inputs_are_sliced_to_the_seen_classes_not_minus_inf():
    got: list[SelectionInputs] = []

    class Rec(Selector):
        def select(self, inputs, budget):
            got.append(inputs)
            return torch.tensor([1, 3])

    logits = torch.randn(4, C)
    logits[:, 2:] = -math.inf                        # what restrict_logits leaves
    sample = torch.randn(S, 4, C)
    sample[..., 2:] = -math.inf
    col = Collected(index=torch.tensor([10, 11, 12, 13]), label=torch.tensor([0, 1, 0, 1]),
                    z=torch.randn(4, D), logits=logits, sample_logits=sample,
                    sample_mask=torch.ones(S, 4, C, dtype=torch.bool))
    picked = select_exemplars(Rec(), col, budget=2, seen=2)
    assert picked == [11, 13]
    x = got[0]
    assert x.logits.shape == (4, 2) and torch.isfinite(x.logits).all()
    assert x.sample_logits.shape == (S, 4, 2) and torch.isfinite(x.sample_logits).all()
    assert x.sample_mask.shape == (S, 4, 2)
    p = x.logits.softmax(-1)
    assert torch.isfinite((p * p.log()).sum(-1)).all()          # entropy is defined
    assert torch.equal(x.index, col.index)


class StepTiny(nn.Module):
    """Records the step of every batch and the backbone's mode; optional refresh counter."""

    def __init__(self, backbone_trains: bool) -> None:
        super().__init__()
        self.backbone = nn.Linear(D, D)
        self.backbone.requires_grad_(backbone_trains)
        self.head = nn.Linear(D, C)
        self.steps, self.modes, self.refreshes = [], [], 0
        self.refresh_each_step = False

    def backbone_trainable(self):
        return any(p.requires_grad for p in self.backbone.parameters())

    def image_encoder_trainable(self):
        return True                                  # e.g. a deep vision prompt

    def refresh_prompts(self):
        self.refreshes += 1

    def forward(self, batch):
        self.steps.append(batch["step"])
        self.modes.append(self.backbone.training)
        return {"logits": self.head(self.backbone(batch["features"]["image"].mean(1)))}

    def compute_losses(self, outputs, batch, epoch):
        total = nn.functional.cross_entropy(outputs["logits"], batch["label"])
        return total, {"total": float(total.detach())}


@pytest.mark.parametrize("backbone_trains", [False, True])
def test_train_epoch_builds_the_step_and_keeps_a_frozen_backbone_in_eval(backbone_trains):
    model = StepTiny(backbone_trains)
    model.refresh_each_step = True
    batches = [{"label": torch.tensor([2, 3]), "index": torch.arange(2),
                "features": {"image": torch.randn(2, 2, D)}} for _ in range(3)]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    cfg = attrs.evolve(_cfg(seen=4), task=1, num_samples=7)
    train_epoch(model, model, batches, opt, sched, None, 2, cfg, DistInfo())
    st = model.steps[0]
    assert (st.task, st.seen_classes, st.epoch, st.num_samples, st.training) == (1, 4, 2, 7, True)
    assert st.tasks_present.tolist() == [1] and st.label.tolist() == [2, 3]
    assert st.task_of_class.tolist() == TASKS
    assert model.modes == [backbone_trains] * 3     # frozen weights: eval even with grads
    assert model.refreshes == 3                     # the text tower trains: fresh each step
    _ = evaluate(model, batches[:1], _cfg(seen=4), DistInfo())
    assert model.steps[-1].training is False and model.steps[-1].label is None
