"""recipes/demo_pretrain.toml end to end on the tiny generated caption set: ITC + ITM + LM
train the tiny CLIP, the image_text plugin's retrieval and captioning figures reach
summary.json, image_text.json, captions_<split>.json and ``clapkit eval``'s JSON, and the
exported backbone.pt is what a classification recipe then loads as its pretrained weights."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from clapkit.data.demo import ensure_demo
from clapkit.engine.runner import run_recipe
from clapkit.evaluation import eval_target
from clapkit.plugins import get_plugin_host

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
RETRIEVAL = [f"{way}_r{k}" for way in ("i2t", "t2i") for k in (1, 5, 10)] + ["r_mean"]


@pytest.fixture(scope="module")
def pretrain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrain")
    host = get_plugin_host(autoload_third_party=False)
    captions = ensure_demo("captions", tmp / "captions", tiny=True, host=host)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            summary = run_recipe(RECIPES / "demo_pretrain.toml", host=host, out_dir=tmp / "run",
                                 overrides=[f'data.root="{captions}"', "data.batch_size=8",
                                            "run.progress=false", "stages.0.epochs=1",
                                            "log.eval.beams=2", "log.eval.max_length=8"])
    finally:
        torch.set_num_threads(threads)
    return tmp, host, summary, printed.getvalue()


def test_summary_and_run_folder_hold_retrieval_and_caption_figures(pretrain):
    tmp, _, summary, printed = pretrain
    run = tmp / "run"
    on_disk = json.loads((run / "summary.json").read_text())
    for role in ("valid", "test"):
        for key in RETRIEVAL + ["bleu4", "cider"]:
            value = on_disk[f"{role}/{key}"]
            assert 0.0 <= value <= (1.0 if key != "cider" else 10.0), (role, key, value)
        # recall@k grows with k (the same ranking cut at 1, 5, 10)
        assert on_disk[f"{role}/i2t_r1"] <= on_disk[f"{role}/i2t_r5"] <= on_disk[f"{role}/i2t_r10"]
    assert any("evaluation plugins" in why for why in on_disk["figures"].values())
    assert on_disk["test/cider"] == pytest.approx(summary["test/cider"])
    side = json.loads((run / "image_text.json").read_text())
    assert side["test/r_mean"] == pytest.approx(on_disk["test/r_mean"])
    caps = json.loads((run / "captions_test.json").read_text())
    assert len(caps) == 20 and all(c["references"] and isinstance(c["caption"], str)
                                   for c in caps.values())
    assert "captions (test): BLEU-4" in printed and "image-text (%)" in printed
    # `clapkit runs` shows them too
    from clapkit.runs import describe_run, format_rows
    row = describe_run(run)
    shown = dict(row.image_text)
    assert shown["test i2t R@1"] == pytest.approx(on_disk["test/i2t_r1"])
    assert shown["test CIDEr"] == pytest.approx(on_disk["test/cider"])
    assert "test BLEU-4" in format_rows([row])[1]


def test_eval_of_the_run_folder_reports_the_plugin_figures(pretrain):
    tmp, host, _, _ = pretrain
    with contextlib.redirect_stdout(io.StringIO()):
        result, dest = eval_target(tmp / "run", host, split="test")
    on_disk = json.loads(dest.read_text())
    assert set(on_disk["plugin_metrics"]) >= {f"test/{k}" for k in RETRIEVAL + ["cider"]}
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    # the same weights (last.pt = the end of the run) and the same items: the same figures
    assert on_disk["test/r_mean"] == pytest.approx(summary["test/r_mean"], abs=1e-6)
    assert not any(k.startswith("valid/") for k in on_disk["plugin_metrics"])


def test_backbone_pt_is_the_trained_model_and_loads_as_pretrained(pretrain):
    tmp, host, _, _ = pretrain
    path = tmp / "run" / "backbone.pt"
    state = torch.load(path, weights_only=True)
    last = torch.load(tmp / "run" / "checkpoints" / "last.pt", weights_only=False)["model"]
    trained = {k[len("backbone.model."):]: v for k, v in last.items()
               if k.startswith("backbone.model.")}
    assert trained and set(trained) <= set(state)
    for k, v in trained.items():
        torch.testing.assert_close(state[k], v)
    incremental = ensure_demo("incremental", tmp / "incremental", tiny=True, host=host)
    with contextlib.redirect_stdout(io.StringIO()):
        loaded, _ = eval_target(RECIPES / "zero_shot.toml", host, split="test",
                                out=tmp / "zs", overrides=[f'data.root="{incremental}"',
                                                           f'backbone.pretrained="{path}"'])
        random, _ = eval_target(RECIPES / "zero_shot.toml", host, split="test",
                                out=tmp / "zs0", overrides=[f'data.root="{incremental}"'])
    assert loaded["num_items"] == random["num_items"] > 0
    assert loaded["confusion"] != random["confusion"]      # other weights, other predictions


def test_predict_prints_a_caption_and_the_best_matching_captions(pretrain, capsys,
                                                                  monkeypatch):
    """`clapkit predict RUN_DIR image.png` on the image-text run: the class line, then the
    image_text plugin's generated caption and the test split's best-matching captions, from
    one pass of the pipeline over the inputs (the plugin reads predict's own batches)."""
    from clapkit.cli import main
    from clapkit.pipeline import Pipeline

    passes = []
    forward = Pipeline.forward
    monkeypatch.setattr(Pipeline, "forward",
                        lambda self, batch: passes.append(1) or forward(self, batch))

    tmp, _, _, _ = pretrain
    doc = json.loads((tmp / "captions" / "dataset_coco.json").read_text())
    test = [e for e in doc["images"] if e["split"] == "test"]
    image = tmp / "captions" / test[0]["filepath"] / test[0]["filename"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as code:
        main(["predict", str(tmp / "run"), str(image), "--json", str(tmp / "pred.json")])
    assert code.value.code == 0 and len(passes) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(str(image)) and "%" in out[0]
    assert out[1].startswith("    caption: ") and len(out[1]) > len("    caption: ")
    row = json.loads((tmp / "pred.json").read_text())[0]
    matches = row["best-matching captions (test)"]
    every_test_caption = {s["raw"] for e in test for s in e["sentences"]}
    assert len(matches) == 3 and set(matches) <= every_test_caption
    assert out[2] == "    best-matching captions (test): " + " | ".join(matches)
