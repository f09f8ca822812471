"""``clapkit eval`` / ``predict`` / ``runs`` on tiny runs (stand-in components, tiny CLIP)."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

import engine_standins as es
from clapkit.cli import main
from clapkit.engine.runner import run_recipe
from clapkit.errors import ClapkitError
from clapkit.evaluation import eval_target, metrics_of, prepare
from clapkit.plugins import get_plugin_host
from clapkit.recipe import load_recipe
from clapkit.runs import describe_run, find_runs, format_rows

THREE_SPLITS = es.BASE_RECIPE.replace('batch_size = 4', 'batch_size = 4\ntest_split = "test"'
                                      '\nsplits = ["train", "valid", "test"]') \
    + '\n[log.jsonl]\nplugin = "jsonl"\n'


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalrun")
    path = es.write_recipe(tmp, THREE_SPLITS)
    summary = run_recipe(path, overrides=es.base_overrides(tmp), out_dir=tmp / "run")
    return tmp, summary


def test_eval_best_checkpoint_reproduces_the_best_valid_figures(trained):
    tmp, summary = trained
    host = get_plugin_host()
    result, dest = eval_target(tmp / "run", host, split="valid")
    assert dest == tmp / "run" / "eval-best-valid.json"
    assert result["uar"] == pytest.approx(summary["best/valid_uar"], abs=1e-9)
    assert result["war"] == pytest.approx(summary["best/valid_war"], abs=1e-9)
    saved = json.loads(dest.read_text())
    for key in ("top1", "top5", "war", "uar", "split", "checkpoint", "per_class", "confusion"):
        assert key in saved
    assert saved["checkpoint"] == "best" and saved["split"] == "valid"
    assert saved["top5"] is None                      # 4 classes
    assert sum(map(sum, saved["confusion"])) == saved["num_items"] == 12
    assert set(saved["per_class"]) == {"class0", "class1", "class2", "class3"}


def test_eval_last_checkpoint_on_test_split(trained):
    tmp, summary = trained
    result, dest = eval_target(tmp / "run", get_plugin_host(), checkpoint="last", split="test")
    assert dest.name == "eval-last-test.json" and result["split_name"] == "test"
    # the last checkpoint is the model at the end of training: the final valid figure
    again, _ = eval_target(tmp / "run", get_plugin_host(), checkpoint="last", split="valid")
    assert again["uar"] == pytest.approx(summary["final/valid_uar"], abs=1e-9)


def test_eval_cli_prints_metrics_and_writes_json(trained, capsys):
    tmp, _ = trained
    with pytest.raises(SystemExit) as code:
        main(["eval", str(tmp / "run"), "--split", "test", "--out", str(tmp / "ev")])
    assert code.value.code == 0
    out = capsys.readouterr().out
    assert "WAR" in out and "UAR" in out and "confusion matrix" in out and "class3" in out
    assert (tmp / "ev" / "eval-best-test.json").is_file()


def test_eval_errors_point_at_the_cause(trained, tmp_path):
    tmp, _ = trained
    host = get_plugin_host()
    with pytest.raises(ClapkitError, match="--checkpoint applies to a run folder"):
        eval_target(tmp / "recipe.toml", host, checkpoint="best")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "recipe.toml").write_text((tmp / "run" / "recipe.toml").read_text())
    with pytest.raises(ClapkitError, match="no best checkpoint.*try --checkpoint last"):
        eval_target(tmp_path / "half", host, checkpoint="best")
    # no best.pt: the default is the last model (what an unselected run reports)
    with pytest.raises(ClapkitError, match="no last checkpoint"):
        eval_target(tmp_path / "half", host)
    with pytest.raises(ClapkitError, match="no such run folder or recipe file"):
        eval_target(tmp_path / "nope", host)


def test_eval_recipe_target_is_the_pipeline_as_built(tmp_path):
    """A recipe target: nothing trained, nothing loaded (zero-shot); OUT/eval.json."""
    text = es.BASE_RECIPE.replace('batch_size = 4', 'batch_size = 4\nnum_classes = 6\n'
                                  'train_counts = [2, 2, 2, 2, 2, 2]\n'
                                  'valid_counts = [2, 2, 2, 2, 2, 2]')
    path = es.write_recipe(tmp_path, text)
    host = get_plugin_host()
    result, dest = eval_target(path, host, split="valid", out=tmp_path / "zs",
                               overrides=es.base_overrides(tmp_path))
    assert dest == tmp_path / "zs" / "eval.json"
    saved = json.loads(dest.read_text())
    assert saved["checkpoint"] == "none" and saved["split"] == "valid"
    assert saved["top5"] is not None and saved["top5"] >= saved["top1"]
    # the same numbers as the metric functions on the pipeline's own logits
    recipe = load_recipe(path, host, es.base_overrides(tmp_path))
    prep = prepare(recipe, host, work_dir=tmp_path / "zs")
    from clapkit.evaluation import collect_logits
    logits, labels = collect_logits(prep, "valid")
    ref = metrics_of(logits, labels, prep.class_names)
    assert ref["uar"] == pytest.approx(saved["uar"]) and ref["top5"] == pytest.approx(
        saved["top5"])


def test_metrics_of_against_hand_counts():
    logits = torch.tensor([[5., 4, 3, 2, 1, 0], [0, 5, 4, 3, 2, 1], [0, 1, 2, 3, 4, 5],
                           [5, 4, 3, 2, 1, 0]])
    labels = torch.tensor([0, 0, 0, 1])
    m = metrics_of(logits, labels, list("abcdef"))
    assert m["top1"] == pytest.approx(1 / 4)
    # top5 misses class 0 for items 1 and 2; item 3 (class 1) is second: in its top5
    assert m["top5"] == pytest.approx(2 / 4)
    assert m["uar"] == pytest.approx((1 / 3 + 0) / 2)
    assert m["per_class"]["c"] is None and m["confusion"][0][1] == 1


def test_runs_lists_status_epochs_and_figures(trained, tmp_path, capsys):
    tmp, summary = trained
    rows = [describe_run(r) for r in find_runs(tmp)]
    assert [r.status for r in rows] == ["done"]
    assert rows[0].recipe == "t" and rows[0].epochs == summary["epochs"] == 4
    assert rows[0].best_valid_uar == pytest.approx(summary["best/valid_uar"])
    # a run folder without summary: running while files move, failed once they stop
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "recipe.toml").write_text('[run]\nname = "halted"\n')
    assert find_runs(tmp_path) == []                  # a recipe file alone is no run
    (stale / "metrics.jsonl").write_text("")
    assert find_runs(tmp_path) == [stale]
    assert describe_run(stale).status == "running"
    old = time.time() - 3600
    for f in ("recipe.toml", "metrics.jsonl"):
        os.utime(stale / f, (old, old))
    assert describe_run(stale).status == "failed"
    # a run lock (flock) decides when present: held = running, free = failed
    import fcntl
    lock = stale / ".clapkit.lock"
    lock.write_text("pid 1 on host\n")
    assert describe_run(stale).status == "failed"
    with open(lock) as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        import subprocess
        import sys
        out = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                              "from clapkit.runs import describe_run; "
                              "print(describe_run(Path(sys.argv[1])).status)", str(stale)],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert out == "running"
    lines = format_rows([describe_run(stale)])
    assert "halted" in lines[1] and "failed" in lines[1]
    with pytest.raises(SystemExit) as code:
        main(["runs", str(tmp)])
    assert code.value.code == 0 and " t " in capsys.readouterr().out


# --- predict ----------------------------------------------------------------------------------

PREDICT_RECIPE = '''
[run]
name = "p"
progress = false

[data]
plugin = "caer"
root = "{root}"
num_frames = 2
batch_size = 4

[backbone]
plugin = "open_clip"
model = "clapkit-tiny"

[prompts.desc]
plugin = "handcrafted"

[adapters.fusion]
plugin = "concat_linear"

[head]
plugin = "cosine"

[losses.cls]
plugin = "cross_entropy"

[[stages]]
name = "all"
train = ["adapters.*"]
'''


def test_predict_matches_the_dataset_eval_pass_given_the_same_face_box(tmp_path, monkeypatch):
    """predict = the dataset's eval crops + transforms + the eval loop: with a detector that
    finds the annotated box, a validation clip gets the eval pass's own probabilities."""
    import clapkit.predict as pr
    from clapkit.evaluation import collect_logits
    from clapkit_plugins.datasets.demo_caer import CAER_DEMO
    root = CAER_DEMO.ensure(tmp_path / "caer", tiny=True)
    path = tmp_path / "p.toml"
    path.write_text(PREDICT_RECIPE.format(root=root))
    host = get_plugin_host()
    recipe = load_recipe(path, host, [f'cache.dir="{tmp_path / "cache"}"', "cache.enabled=off"])
    prep = prepare(recipe, host, work_dir=tmp_path)
    ref = prep.source.refs("valid")[0]
    box = ref.boxes["face"]
    monkeypatch.setattr(pr, "_detector", lambda source: (lambda image: box, None))
    rows, notes = pr.predict(prep, [pr.Path(ref.path)])
    logits, labels = collect_logits(prep, "valid")
    want = torch.softmax(logits[0], 0)
    got = torch.tensor(list(rows[0]["probabilities"].values()))
    assert torch.allclose(got, want, atol=1e-5)
    assert rows[0]["predicted"] == prep.class_names[int(want.argmax())]
    assert rows[0]["face_detected"] is True and not notes
    # a detector that finds nothing: centre crop, said so
    monkeypatch.setattr(pr, "_detector", lambda source: (lambda image: None, None))
    rows, notes = pr.predict(prep, [pr.Path(ref.path)])
    assert rows[0]["face_detected"] is False and "centre crop" in notes[0]
    with pytest.raises(ClapkitError, match="does not exist"):
        pr.predict(prep, [tmp_path / "missing.avi"])
