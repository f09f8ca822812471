"""attriclip: contract suite, equivalence with open_clip (k = 0), top-k selection by the raw
image feature (the reference's formulas: test_attriclip_parity.py), one encoding per distinct selection, its two losses, learning on demo data and
a class-incremental run with no memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clapkit.interfaces import ImageInputs
from clapkit.testing import PromptContract
from clapkit_plugins.losses.attriclip import key_match, prompt_orthogonality
from clapkit_plugins.prompts.attriclip import AttriClipConfig, build
from prompt_fixtures import DEMO_CLASSES, MODELS, backbone, context, demo_images, train_steps


class TestAttriClipContract(PromptContract):
    components = ["attriclip"]


def _inputs(bb, b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ImageInputs(z=torch.randn(b, bb.embed_dim, generator=g),
                       raw={"image": torch.randn(b, bb.embed_dim, generator=g)})


@pytest.mark.parametrize("model", MODELS)
def test_k0_equals_open_clip_encode_text(model):
    bb = backbone(model)
    p = build(AttriClipConfig(top_k=0), context(model))
    with torch.no_grad():
        got = p(_inputs(bb)).text
        want = bb.model.encode_text(bb.tokenize([f"{c}." for c in DEMO_CLASSES]))
    assert got.shape == (5, len(DEMO_CLASSES), bb.embed_dim)
    assert (got - want.unsqueeze(0)).abs().max().item() < 1e-5


@pytest.mark.parametrize("model", MODELS)
def test_selection_by_raw_feature_and_prompt_layout(model):
    bb = backbone(model)
    p = build(AttriClipConfig(bank_size=6, prompt_length=3, top_k=2), context(model))
    image = _inputs(bb)
    out = p(image)
    sim = F.normalize(image.raw_mean, dim=-1) @ p.keys.t()       # dot with the raw keys
    want = sim.topk(2, dim=-1).indices                             # in rank order
    assert torch.equal(out.aux["selection"], want)
    torch.testing.assert_close(out.aux["selected_keys"], p.keys[want])
    torch.testing.assert_close(out.aux["query"], image.raw_mean)
    assert out.aux["bank_prompts"].shape == (6, 3, bb.text_width)
    # image b's text = the text tower on [SOT] P_i1 P_i2 name . [EOT]
    b = 1
    with torch.no_grad():
        tok = p.tokens
        emb = bb.token_embedding(tok).clone()
        emb[:, 1:7] = p.prompts[want[b]].reshape(6, -1)
        ref = bb.model.encode_text.__self__                  # the open_clip model
        x = emb + ref.positional_embedding
        for blk in ref.transformer.resblocks:
            x = blk(x, attn_mask=ref.attn_mask)
        x = ref.ln_final(x)[torch.arange(len(tok)), tok.argmax(-1)] @ ref.text_projection
    assert (out.text[b].detach() - x).abs().max().item() < 1e-5


def test_each_distinct_selection_is_encoded_once():
    bb = backbone(MODELS[0])
    p = build(AttriClipConfig(bank_size=4, prompt_length=2, top_k=2), context(MODELS[0]))
    base = _inputs(bb, b=3)
    raw = base.raw_mean[[0, 0, 1, 1, 2, 0]]                       # 6 images, <= 3 selections
    out = p(ImageInputs(z=raw, raw={"image": raw}))
    distinct = torch.unique(out.aux["selection"], dim=0).shape[0]
    # distinct selections x classes, plus the 4 bank prompts encoded alone
    assert p.last_rows - 4 == distinct * len(DEMO_CLASSES) <= 3 * len(DEMO_CLASSES)
    assert p.text_rows(6) == p.last_rows
    torch.testing.assert_close(out.text[0], out.text[1])           # same image, same text


def test_losses_match_their_formulas():
    g = torch.Generator().manual_seed(0)
    q, keys = torch.randn(4, 8, generator=g), torch.randn(4, 3, 8, generator=g)
    want = torch.stack([1 - F.cosine_similarity(q[b], keys[b, i], dim=0)
                        for b in range(4) for i in range(3)]).mean()
    torch.testing.assert_close(key_match(q, keys), want)
    # keys equal to the query: zero loss
    assert key_match(q, q.unsqueeze(1).expand(-1, 3, -1)).abs() < 1e-6
    bank = torch.randn(5, 2, 6, generator=g)
    flat = F.normalize(bank.reshape(5, -1), dim=-1)
    cos = flat @ flat.t()
    want = (cos.pow(2).sum() - cos.diagonal().pow(2).sum()) / 20
    torch.testing.assert_close(prompt_orthogonality(bank), want)
    ortho = torch.eye(5).reshape(5, 1, 5)                          # orthonormal prompts
    assert prompt_orthogonality(ortho) < 1e-7
    # the key-matching loss is the only one that reaches the keys
    p = build(AttriClipConfig(bank_size=4, prompt_length=2, top_k=2), context(MODELS[0]))
    out = p(_inputs(backbone(MODELS[0])))
    key_match(out.aux["query"], out.aux["selected_keys"]).backward()
    assert p.keys.grad is not None and p.keys.grad.abs().sum() > 0


@pytest.mark.parametrize("model", MODELS)
def test_attriclip_learns_on_demo_images(model, tmp_path_factory):
    images, labels = demo_images(model, str(tmp_path_factory.mktemp("demo")))
    p = build(AttriClipConfig(bank_size=6, prompt_length=2, top_k=2), context(model))
    keys_before = p.keys.detach().clone()

    def extra(aux):
        return 0.5 * key_match(aux["query"], aux["selected_keys"]) \
            + 0.1 * prompt_orthogonality(aux["bank_prompts"])

    losses, acc = train_steps(p, backbone(model), images, labels, steps=25, extra=extra)
    assert losses[-1] < losses[0] - 0.3, losses
    assert acc > 0.45, acc                         # 4 classes: chance is 0.25
    assert not torch.allclose(p.keys, keys_before)  # the keys moved (key matching)


def test_attriclip_runs_class_incremental_without_memory(tmp_path, capsys):
    """The recipe as a 2-task class-incremental run, no replay memory: one bank shared by
    both tasks (same parameter shapes after each task), an accuracy matrix row per task."""
    import json
    from pathlib import Path

    from clapkit.cli import main
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "attriclip.toml"
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["run", str(recipe), "--out", str(out),
              "--set", f"data.root='{tmp_path / 'demo'}'",
              "--set", f"cache.dir='{tmp_path / 'cache'}'",
              "--set", "scenario.task_to_cls_num=[10,10]", "--set", "stages.prompts.epochs=1",
              "--set", "run.progress=false"])
    assert exc.value.code == 0, capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_tasks"] == 2 and len(summary["accuracy_matrix"]) == 2
    assert "memory_size" not in json.dumps(summary)
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
    keys = {k: tuple(v.shape) for k, v in state.items() if k.startswith("prompts.attr.")}
    assert keys == {"prompts.attr.keys": (10, 128), "prompts.attr.prompts": (10, 2, 32)}
