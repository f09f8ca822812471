"""AttriCLIP parity: clapkit's ``attriclip`` prompt, its two losses and the current-task
cross-entropy against the reference computation of bhrqw/AttriCLIP (``classifier/vcop_4.py``:
``PromptLearner``, ``CLIP.forward``, ``CoOp.fit``; ``classifier/utils.py`` ``cosine_loss``),
rebuilt here from its formulas on identical weights, on the tiny random open_clip models.

Rebuilt: the image feature is L2-normalised; ``probability = f @ text_key.t()`` (keys not
normalised) and ``topk`` gives the indices *in rank order*; ``text_prompt[indices]`` is viewed
as one context of ``k * L`` vectors in that order, spliced into the token embeddings of
``"x" * (k*L) + " " + name + "."``; logits ``logit_scale * f . normalise(t)``; training
labels ``y - first class of the task`` over the task's class names only; ``cosine_loss``
``1 - mean(f . k / |k|)``; ``loss_m`` the mean ``|cos|`` off the diagonal between the bank
prompts encoded alone (``only_prefix``: ``[SOT] P_i`` + the tokens after position ``1 + L`` of
``"x" * (k*L) + "."``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clapkit.interfaces import BuildContext, ImageInputs, StepContext
from clapkit_plugins.prompts.attriclip import AttriClipConfig, build
from prompt_fixtures import DEMO_CLASSES, MODELS, backbone, context, ref_encode

M, L, K, B = 6, 3, 2, 7


# -- the reference, rebuilt ---------------------------------------------------------------

def ref_select(feat: torch.Tensor, text_key: torch.Tensor) -> torch.Tensor:
    f = feat / feat.norm(dim=-1, keepdim=True)
    return (f @ text_key.t()).topk(K, dim=1, largest=True).indices


def ref_text(bb, names, text_prompt, indices) -> torch.Tensor:
    """``PromptLearner.forward`` (``prompt_pos = 2``) then the text encoder: ``[B,C,D]``."""
    n = L * K
    prompts = [" ".join(["x"] * n) + " " + name + "." for name in names]
    tokens = bb.tokenize(prompts)
    emb = bb.token_embedding(tokens).float()
    prefix, suffix = emb[:, :1], emb[:, 1 + n:]
    b, c, w = indices.shape[0], len(names), text_prompt.shape[-1]
    ctx = text_prompt[indices].view(b, n, w)
    rows = torch.cat([prefix.unsqueeze(0).repeat(b, 1, 1, 1),
                      ctx.unsqueeze(1).repeat(1, c, 1, 1),
                      suffix.unsqueeze(0).repeat(b, 1, 1, 1)], dim=2)
    feats = ref_encode(bb, rows.view(b * c, -1, w), tokens.repeat(b, 1))
    return feats.view(b, c, -1), tokens


def ref_cosine_loss(feat, key_choose) -> torch.Tensor:
    q = (feat / feat.norm(dim=-1, keepdim=True)).unsqueeze(1).repeat(1, key_choose.shape[1], 1)
    k = key_choose / key_choose.norm(dim=-1, keepdim=True)
    return 1 - ((q * k) / (k.shape[0] * k.shape[1])).sum()


def ref_loss_m(bb, text_prompt) -> torch.Tensor:
    tokens = bb.tokenize([" ".join(["x"] * (L * K)) + "."])
    emb = bb.token_embedding(tokens).float()
    rows = torch.cat([emb[:, :1].repeat(M, 1, 1), text_prompt,
                      emb[:, 1 + L:].repeat(M, 1, 1)], dim=1)
    t = ref_encode(bb, rows, tokens.repeat(M, 1))
    t = t / t.norm(dim=-1, keepdim=True)
    dis = t @ t.t()
    return dis[~torch.eye(M, dtype=torch.bool)].abs().mean()


# -- clapkit, on the same weights ---------------------------------------------------------

def _prompt(model, **options):
    p = build(AttriClipConfig(bank_size=M, prompt_length=L, top_k=K, **options), context(model))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # keys of very different norms: dot product and cosine select differently
        norms = torch.tensor([0.2, 3.0, 1.0, 0.5, 2.0, 0.05]).unsqueeze(1)
        p.keys.copy_(F.normalize(torch.randn(p.keys.shape, generator=g), dim=-1) * norms)
        p.prompts.normal_(0, 0.3, generator=g)
    return p


def _image(bb, seed=0) -> ImageInputs:
    f = torch.randn(B, bb.embed_dim, generator=torch.Generator().manual_seed(seed))
    return ImageInputs(z=f, raw={"image": f})            # no image adapter: z == raw


@pytest.mark.parametrize("model", MODELS)
def test_selection_prompts_and_logits_equal_the_reference(model, host):
    bb = backbone(model)
    p = _prompt(model)
    img = _image(bb)
    with torch.no_grad():
        out = p(img)
        idx = ref_select(img.raw_mean, p.keys)
        want, tokens = ref_text(bb, DEMO_CLASSES, p.prompts, idx)
    assert torch.equal(out.aux["selection"], idx)             # rank order, dot product
    assert torch.equal(p.tokens, tokens)                       # "X" and "x": one token
    assert (out.text - want).abs().max().item() < 1e-5
    head = host.registries["head"].get("cosine")
    from clapkit.config import structure
    h = head.factory(structure(head.config_cls, {}, file="t", key="head"),
                     BuildContext(backbone=bb))
    got = h(img.z, out.text).logits
    scale = float(bb.model.logit_scale.exp())                   # CLIP's logit_scale.exp()
    f = F.normalize(img.raw_mean, dim=-1)
    ref = scale * (f.unsqueeze(1) * F.normalize(want, dim=-1)).sum(-1)
    assert (got - ref).abs().max().item() < 1e-5 * scale
    # the defaults are the reference's: bank order and cosine matching select otherwise
    assert not torch.equal(idx, idx.sort(-1).values)
    cos_idx = (F.normalize(img.raw_mean, dim=-1) @ F.normalize(p.keys, dim=-1).t()).topk(K).indices
    assert not torch.equal(cos_idx, idx)


def test_options_restore_clapkits_earlier_selection():
    bb = backbone(MODELS[0])
    p = _prompt(MODELS[0], match="cosine", order="bank")
    img = _image(bb)
    with torch.no_grad():
        sel = p(img).aux["selection"]
    sim = F.normalize(img.raw_mean, dim=-1) @ F.normalize(p.keys, dim=-1).t()
    assert torch.equal(sel, sim.topk(K, dim=-1).indices.sort(-1).values)


@pytest.mark.parametrize("model", MODELS)
def test_key_match_and_orthogonality_equal_the_reference(model, make):
    bb = backbone(model)
    p = _prompt(model)
    img = _image(bb)
    out = p(img)
    outputs = {"aux": {f"attr.{k}": v for k, v in out.aux.items()}}
    ctx = context(model)
    km = make("loss", "attriclip_key_match", ctx, prompt="attr")(outputs, {})
    ortho = make("loss", "attriclip_ortho", ctx, prompt="attr")(outputs, {})
    with torch.no_grad():
        idx = ref_select(img.raw_mean, p.keys)
        want_k = ref_cosine_loss(img.raw_mean, p.keys[idx])
        want_m = ref_loss_m(bb, p.prompts)
    assert abs(float(km.detach()) - float(want_k)) < 1e-6
    assert abs(float(ortho.detach()) - float(want_m)) < 1e-5
    # the earlier form (cos^2 of the raw vectors) is a different number, kept as an option
    raw = make("loss", "attriclip_ortho", ctx, prompt="attr", form="raw")(outputs, {})
    flat = F.normalize(p.prompts.detach().reshape(M, -1), dim=-1)
    cos = flat @ flat.t()
    assert abs(float(raw.detach()) - float(cos[~torch.eye(M, dtype=torch.bool)].pow(2).mean())) < 1e-6
    assert abs(float(raw.detach()) - float(want_m)) > 1e-3
    # the encoded form trains the prompts through the text tower
    ortho.backward()
    assert p.prompts.grad is not None and p.prompts.grad.abs().sum() > 0
    assert p.last_rows == torch.unique(out.aux["selection"], dim=0).shape[0] * 4 + M


@pytest.mark.parametrize("model", MODELS)
def test_current_task_cross_entropy_equals_the_reference_task_training(model, make):
    """Task 1 of two (classes 2, 3): the reference encodes the task's class names only and
    takes CE on ``y - 2``; clapkit's head scores every class and ``cross_entropy`` with
    ``classes = "current"`` keeps the current task's."""
    bb = backbone(model)
    p = _prompt(model)
    img = _image(bb, seed=4)
    labels = torch.tensor([2, 3, 3, 2, 2, 3, 2])
    toc = torch.tensor([0, 0, 1, 1])
    with torch.no_grad():
        idx = ref_select(img.raw_mean, p.keys)
        text, _ = ref_text(bb, DEMO_CLASSES[2:], p.prompts, idx)
        f = F.normalize(img.raw_mean, dim=-1)
        logits = float(bb.logit_scale) * (f.unsqueeze(1) * F.normalize(text, dim=-1)).sum(-1)
        want = F.cross_entropy(logits, labels - 2)
        out = p(img)
        ours = float(bb.logit_scale) * (f.unsqueeze(1) * F.normalize(out.text, dim=-1)).sum(-1)
    ctx = context(model)
    step = StepContext(task=1, seen_classes=4, training=True, task_of_class=toc, label=labels)
    batch = {"label": labels, "step": step}
    ce = make("loss", "cross_entropy", ctx, classes="current")({"logits": ours}, batch)
    assert abs(float(ce) - float(want)) < 1e-5
    seen = make("loss", "cross_entropy", ctx)({"logits": ours}, batch)
    assert float(seen) > float(ce) + 1e-4                # over all seen classes: another loss
    # a replay label of task 0 is an error, not a silent inf
    from clapkit.errors import ClapkitError
    bad = {"label": labels.clone().index_fill_(0, torch.tensor([0]), 1), "step": step}
    with pytest.raises(ClapkitError, match="current"):
        make("loss", "cross_entropy", ctx, classes="current")({"logits": ours}, bad)


@pytest.mark.parametrize("style", ["attriclip", "cocoop"])
def test_one_image_feature_for_selection_and_head_without_image_adapters(style, make):
    """The references read one normalised image feature for the key selection (AttriCLIP) /
    the meta-net (CoCoOp) and for the logits. clapkit's pipeline without image adapters gives
    the prompt ``raw`` equal to the head's ``z``, so ``condition = "raw"`` and ``"z"`` are the
    same model; with an adapter (the demos' feature_norm) ``condition = "z"`` is the one that
    reads the head's feature."""
    from torch import nn

    from clapkit.pipeline import visual_forward
    bb = backbone(MODELS[0])
    f = torch.randn(B, 1, bb.embed_dim, generator=torch.Generator().manual_seed(9))
    z, _ = visual_forward(nn.ModuleDict(), {}, ("image",), {"image": f})
    image = ImageInputs(z=z, raw={s: x.mean(1) for s, x in {"image": f}.items()})
    assert torch.equal(image.raw_mean, z)
    ctx = context(MODELS[0])
    opts = {"attriclip": {"bank_size": M, "prompt_length": L, "top_k": K},
            "cocoop": {"n_ctx": 2, "init": ""}}[style]
    torch.manual_seed(0)
    a = make("prompt", style, ctx, condition="raw", **opts)
    torch.manual_seed(0)
    b = make("prompt", style, ctx, condition="z", **opts)
    with torch.no_grad():
        ta, tb = a(image).text, b(image).text
        shifted = ImageInputs(z=z * 2 + 1, raw=image.raw)      # an adapter changed z
        tc = b(shifted).text
    assert torch.equal(ta, tb)
    assert not torch.allclose(tb, tc)                           # "z" follows the head's feature
