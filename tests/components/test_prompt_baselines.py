"""Baselines: the linear probe (against scikit-learn's LogisticRegression on the same
features), its C sweep and holdout, `clapkit probe` end to end, and the template lists that
the zero-shot recipe ensembles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clapkit.baselines.config import ProbeConfig
from clapkit.baselines.probe import (accuracy, fit_logistic, search_c, split_features,
                                     stratified_holdout)
from clapkit.cli import main
from clapkit_plugins.prompts.handcrafted import (HandcraftedConfig, build as build_handcrafted,
                                                 encode_sentences)
from prompt_fixtures import MODELS, backbone, context, demo_images, standardise

sklearn_lm = pytest.importorskip("sklearn.linear_model",
                                 reason="scikit-learn is in the dev extra (pip install -e .[dev])")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """Standardised tiny-CLIP features of 4 demo classes, split 2:1 by position."""
    images, labels = demo_images(MODELS[0], str(tmp_path_factory.mktemp("demo")))
    with torch.no_grad():
        x = standardise(backbone(MODELS[0]).encode_image(images))
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(labels), generator=g)
    cut = 2 * len(labels) // 3
    return x[perm[:cut]], labels[perm[:cut]], x[perm[cut:]], labels[perm[cut:]]


@pytest.mark.parametrize("c", [0.01, 1.0, 100.0])
def test_fit_matches_sklearn_logistic_regression(features, c):
    x, y, xt, yt = features
    ours = fit_logistic(x, y, 4, c, max_iter=1000)
    sk = sklearn_lm.LogisticRegression(C=c, max_iter=10000, tol=1e-10).fit(x.numpy(), y.numpy())
    sk_test = float((torch.as_tensor(sk.predict(xt.numpy())) == yt).double().mean())
    sk_train = float((torch.as_tensor(sk.predict(x.numpy())) == y).double().mean())
    assert abs(accuracy(ours, xt, yt) - sk_test) <= 0.01
    assert abs(accuracy(ours, x, y) - sk_train) <= 0.01
    # the same objective, sum_i CE_i + ||W||^2 / (2C): ours reaches sklearn's optimum
    def objective(w, b):
        w, b = torch.as_tensor(w, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
        ce = F.cross_entropy(x.double() @ w.t() + b, y, reduction="sum")
        return float(ce + w.pow(2).sum() / (2 * c))

    ours_obj = objective(ours.weight, ours.bias)
    sk_obj = objective(sk.coef_, sk.intercept_)
    assert ours_obj <= sk_obj * (1 + 1e-4) + 1e-6, (ours_obj, sk_obj)
    p_ours = F.softmax(ours.logits(xt), -1)
    p_sk = torch.as_tensor(sk.predict_proba(xt.numpy()))
    assert (p_ours - p_sk).abs().max() < 2e-2


def test_sweep_picks_the_best_validation_c_and_refines(features):
    x, y, xv, yv = features
    cfg = ProbeConfig(c_min=1e-4, c_max=1e4, grid=5)
    best, sweep = search_c(x, y, xv, yv, 4, cfg)
    accs = {r["C"]: r["valid_acc"] for r in sweep}
    assert best in accs and accs[best] == max(accs.values())
    assert len(sweep) > 5                             # coarse grid plus the refinement
    coarse = [1e-4, 1e-2, 1.0, 1e2, 1e4]
    assert all(any(abs(c - k) / k < 1e-9 for k in accs) for c in coarse)
    assert accs[best] > 0.25                          # 4 classes: above chance


def test_stratified_holdout_is_per_class_and_disjoint():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 1)
    fit, held = stratified_holdout(labels, 0.2, seed=3)
    assert set(fit.tolist()).isdisjoint(held.tolist())
    assert sorted(fit.tolist() + held.tolist()) == list(range(16))
    assert torch.bincount(labels[held], minlength=3).tolist() == [2, 1, 0]
    again, _ = stratified_holdout(labels, 0.2, seed=3)
    assert torch.equal(fit, again)


def test_clapkit_probe_end_to_end_agrees_with_sklearn(tmp_path, capsys):
    demo = tmp_path / "demo"
    out = tmp_path / "probe"
    args = ["probe", str(REPO / "recipes" / "linear_probe.toml"), "--out", str(out),
            "--set", f"data.root='{demo}'", "--set", f"cache.dir='{tmp_path / 'cache'}'",
            "--set", "probe.grid=5", "--set", "run.progress=false"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0, capsys.readouterr()
    res = json.loads((out / "probe.json").read_text())
    for key in ("top1", "top5", "war", "uar", "split", "C", "l2_strength", "per_class",
                "confusion"):
        assert key in res
    assert res["split"] == "test" and res["num_items"] == 200 and res["l2_strength"] > 0
    assert res["top1"] > 0.10                         # 20 classes: chance is 0.05
    # scikit-learn on the same features (same standardisation, same C) scores the same
    from clapkit.evaluation import prepare
    from clapkit.plugins import get_plugin_host
    from clapkit.recipe import load_recipe
    recipe = load_recipe(REPO / "recipes" / "linear_probe.toml", get_plugin_host(),
                         [f"data.root='{demo}'", f"cache.dir='{tmp_path / 'cache'}'",
                          "run.progress=false"])
    prep = prepare(recipe, get_plugin_host(), need_split="test", work_dir=out)
    x, y = split_features(prep, "train")
    xt, yt = split_features(prep, "test")
    mu, sd = x.mean(0), x.std(0)
    sk = sklearn_lm.LogisticRegression(C=res["C"], max_iter=10000).fit(
        ((x - mu) / sd).numpy(), y.numpy())
    sk_acc = float((torch.as_tensor(sk.predict(((xt - mu) / sd).numpy())) == yt).double().mean())
    assert abs(res["top1"] - sk_acc) <= 0.01
    printed = capsys.readouterr().out
    assert "chosen C" in printed and "top1" in printed


# --- template lists for zero-shot ensembles ------------------------------------------------

def test_shipped_template_sets():
    imagenet = HandcraftedConfig(template_set="imagenet80").template_list()
    cifar = HandcraftedConfig(template_set="cifar18").template_list()
    assert len(imagenet) == len(set(imagenet)) == 80 and len(cifar) == len(set(cifar)) == 18
    assert "a photo of a {}." in cifar and "itap of a {}." in imagenet
    assert all(t.count("{}") == 1 for t in imagenet + cifar)


def test_template_set_is_an_ensemble_of_its_templates(tmp_path):
    ctx = context(MODELS[0], ["striped circle", "solid star"])
    p = build_handcrafted(HandcraftedConfig(template_set="cifar18"), ctx)
    assert [len(s) for s in p.sentences] == [18, 18]
    assert p.sentences[0][1] == "a blurry photo of a striped circle."
    bb = backbone(MODELS[0])
    with torch.no_grad():
        e = F.normalize(bb.encode_text(bb.tokenize(p.sentences[1])), dim=-1).mean(0)
    torch.testing.assert_close(p().text[1], F.normalize(e, dim=0))
    own = tmp_path / "mine.txt"
    own.write_text("# my list\na {} drawing.\n\nthe {} shape\n")
    p2 = build_handcrafted(HandcraftedConfig(template_set=str(own)), ctx)
    assert p2.sentences[1] == ["a solid star drawing.", "the solid star shape"]
    torch.testing.assert_close(
        p2().text, encode_sentences(bb, [["a striped circle drawing.", "the striped circle "
                                          "shape"], ["a solid star drawing.",
                                                     "the solid star shape"]]))


def test_template_set_errors():
    with pytest.raises(ValueError, match=r"neither a shipped list \(imagenet80, cifar18\)"):
        HandcraftedConfig(template_set="imagenet1k")
    with pytest.raises(ValueError, match="not both"):
        HandcraftedConfig(template_set="cifar18", templates=["a {}."])
