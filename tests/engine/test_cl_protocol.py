"""The continual-learning protocol a reviewer can trust (issue 17): one model -> one figure.

On the tiny class-incremental CLAP4CLIP demo (Monte-Carlo evaluation, anchor routing, replay):
the run's ``last_acc``, ``accuracy_matrix.json`` and ``clapkit eval --checkpoint last`` agree
exactly, also after a kill and ``--resume``; nothing is selected by default; novel-class
detection is right on a case built to be separable; seeds aggregate to mean and std and
export as a results table.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from engine_standins import Crash, CrashAfter

from clapkit.aggregate import aggregate, parse_seeds
from clapkit.data.demo import ensure_demo
from clapkit.engine.best import selection_metric
from clapkit.engine.runner import run_recipe
from clapkit.engine.task_eval import novelty_detection
from clapkit.errors import ClapkitError
from clapkit.evaluation import eval_target
from clapkit.plugins import get_plugin_host
from clapkit.results_table import collect_results, format_table

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _overrides(tmp: Path, root: Path) -> list[str]:
    return [f'data.root="{root}"', "data.batch_size=8", "run.num_samples=4",
            "run.progress=false", f'cache.dir="{tmp / "cache"}"', "memory.size=20",
            "router.temperature=0.05",   # sharp routing: an unfilled anchor shows
            "stages.task.epochs=2", "stages.balanced_finetune.epochs=1",
            "adapters.vga.ff_dim=32", "scenario.task_to_cls_num=[8,6,6]"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("protocol")
    host = get_plugin_host(autoload_third_party=False)
    root = ensure_demo("incremental", tmp / "data", tiny=True, host=host)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run_recipe(RECIPES / "demo_clap4clip.toml", host=host, out_dir=tmp / "a",
                             overrides=_overrides(tmp, root))
    finally:
        torch.set_num_threads(threads)
    return tmp, root, host, summary


def test_nothing_is_selected_by_default_in_an_incremental_run(demo):
    tmp, _, _, summary = demo
    assert selection_metric("auto", True, incremental=True) is None
    assert selection_metric("auto", True, incremental=False) == "valid/uar"
    assert summary["selection"].startswith("none")
    assert summary["final/checkpoint"] == "last"
    assert not (tmp / "a" / "checkpoints" / "best.pt").exists()
    assert not any(k.startswith("best/") for k in summary)
    assert "last.pt" in summary["figures"]["final/*"]


def test_last_acc_equals_eval_of_the_last_checkpoint(demo):
    """The anchors filled at a task's end are in the evaluated model and in last.pt, and the
    Monte-Carlo noise is seeded per evaluation: one model, one figure."""
    tmp, _, host, summary = demo
    on_disk = json.loads((tmp / "a" / "summary.json").read_text())
    first, _ = eval_target(tmp / "a", host, checkpoint="last", split="test", out=tmp / "e1")
    again, _ = eval_target(tmp / "a", host, checkpoint="last", split="test", out=tmp / "e2")
    assert first["top1"] == on_disk["last_acc"] == summary["last_acc"]
    assert first["confusion"] == again["confusion"]          # deterministic evaluation
    assert summary["final/valid_war"] == summary["last_acc"]
    matrix = json.loads((tmp / "a" / "accuracy_matrix.json").read_text())
    assert matrix["rows"] == summary["accuracy_matrix"]
    assert matrix["summary"]["last_acc"] == summary["last_acc"]
    state = torch.load(tmp / "a" / "checkpoints" / "last.pt", weights_only=False)["model"]
    filled = [v for k, v in state.items() if k.startswith("router.") and "filled" in k]
    assert filled and all(bool(f.all()) for f in filled)


def test_summary_holds_every_headline_figure(demo):
    _, _, _, s = demo
    for key in ("last_acc", "avg_incremental_acc", "forgetting", "bwt", "avg_task_aware_acc",
                "last_task_aware_acc", "last_ece", "avg_ece"):
        assert isinstance(s[key], float) and math.isfinite(s[key]), key
    for score in ("energy", "msp", "variance", "entropy"):
        for m in ("auroc", "aupr", "fpr95"):
            assert 0.0 <= s[f"ood/{score}/{m}"] <= 1.0, (score, m)
    assert s["ood/tasks"] == 2                                   # tasks 0 and 1 have a future
    matrix = json.loads(Path(s["out_dir"], "accuracy_matrix.json").read_text())
    per_task = [matrix["ood"][str(t)]["energy"]["auroc"] for t in range(2)]
    assert s["ood/energy/auroc"] == pytest.approx(sum(per_task) / 2)
    assert s["eval_noise"]["seed"] == 0 and s["eval_noise"]["num_samples"] == 4


@pytest.mark.parametrize("crash_after", [2, 6])   # before task 0 ends; task 1 ends
def test_kill_and_resume_gives_the_same_figures(demo, crash_after):
    tmp, root, _, straight = demo
    out = tmp / f"b{crash_after}"
    shutil.rmtree(out, ignore_errors=True)
    host = get_plugin_host(autoload_third_party=False)
    host.register_listener(CrashAfter(crash_after))
    with pytest.raises(Crash):
        run_recipe(RECIPES / "demo_clap4clip.toml", host=host, out_dir=out,
                   overrides=_overrides(tmp, root))
    resumed = run_recipe(RECIPES / "demo_clap4clip.toml", out_dir=out, resume=True,
                         host=get_plugin_host(autoload_third_party=False),
                         overrides=_overrides(tmp, root))
    assert resumed["last_acc"] == straight["last_acc"]
    assert resumed["accuracy_matrix"] == straight["accuracy_matrix"]
    matrix = json.loads((out / "accuracy_matrix.json").read_text())
    assert matrix["rows"] == straight["accuracy_matrix"]
    ev, _ = eval_target(out, get_plugin_host(autoload_third_party=False), checkpoint="last",
                        split="test", out=tmp / f"eb{crash_after}")
    assert ev["top1"] == straight["last_acc"]


# --- novel-class detection on a case with a known answer ------------------------------------

class Separable:
    """A stand-in TaskEvaluation: after task 0 (2 seen classes, 4 in all), ID items get one
    dominant logit and samples that agree; OOD items flat logits and samples that scatter."""

    seen_classes, num_tasks = 2, 2
    splits = {"valid": "test", "test": "test"}

    def run(self, split, tasks, on_outputs, shard=True):
        g = torch.Generator().manual_seed(0)
        for _ in range(3):
            label = torch.tensor([0, 1, 0, 1, 2, 3, 2, 3])
            is_id = label < 2
            logits = torch.randn(8, 4, generator=g) * 0.1
            logits[is_id, label[is_id]] += 8.0                    # confident on ID items
            spread = torch.where(is_id, 0.05, 3.0)[None, :, None]  # samples scatter on OOD
            samples = logits[None] + spread * torch.randn(6, 8, 4, generator=g)
            logits = samples.mean(0)
            on_outputs({"label": label}, {"logits": logits, "sample_logits": samples})


def test_detection_scores_see_a_separable_case():
    got = novelty_detection(Separable())
    for score in ("energy", "msp", "variance", "entropy"):
        assert got[f"ood/{score}/auroc"] > 0.99, score
        assert got[f"ood/{score}/fpr95"] < 0.05, score


def test_detection_scores_follow_the_reference_definitions():
    """CLAP4CLIP's evaluator (srvCodes/clap4clip, classifier/evaluator.py,
    compute_confidence_score): energy = logsumexp of the sample-mean logits, softmax = max
    probability of the mean, variance = minus the unbiased variance over samples summed
    over classes; higher = in-distribution for all three."""
    from clapkit.ood import ood_scores
    g = torch.Generator().manual_seed(3)
    samples = torch.randn(5, 7, 3, generator=g, dtype=torch.float64) * 2
    mean = samples.mean(0)
    got = ood_scores(mean, samples)
    torch.testing.assert_close(got["energy"], torch.logsumexp(mean, -1))
    torch.testing.assert_close(got["msp"], mean.softmax(-1).max(-1).values)
    torch.testing.assert_close(got["variance"], -samples.var(0).sum(-1))


# --- seeds ------------------------------------------------------------------------------------

def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("3-5, 9") == [3, 4, 5, 9]
    for bad in ("a", "", "1,1", "5-3"):
        with pytest.raises(ClapkitError, match="--seeds"):
            parse_seeds(bad)


def test_aggregate_mean_and_sample_std():
    got = aggregate([{"last_acc": 0.2, "bwt": -0.1, "seed": 0, "selection": "none"},
                     {"last_acc": 0.4, "bwt": -0.3, "seed": 1, "selection": "none"},
                     {"last_acc": 0.6, "bwt": -0.2, "seed": 2}])
    assert got["last_acc"]["mean"] == pytest.approx(0.4)
    assert got["last_acc"]["std"] == pytest.approx(0.2)          # sample std (n - 1)
    assert got["last_acc"]["values"] == [0.2, 0.4, 0.6]
    assert "seed" not in got and "selection" not in got


def test_run_seeds_writes_one_folder_per_seed_and_the_aggregate(demo, tmp_path):
    from clapkit.engine.runner import run_seeds
    tmp, root, host, _ = demo
    over = [*_overrides(tmp, root), "stages.task.epochs=1"]
    got = run_seeds(RECIPES / "demo_clap4clip.toml", [0, 1], out_dir=tmp_path / "s",
                    overrides=over, host=host)
    agg = json.loads((tmp_path / "s" / "aggregate.json").read_text())
    values = [json.loads((tmp_path / "s" / f"seed-{s}" / "summary.json").read_text())["last_acc"]
              for s in (0, 1)]
    assert agg["last_acc"]["values"] == values and agg["seeds"] == [0, 1]
    assert agg["last_acc"]["mean"] == pytest.approx(sum(values) / 2)
    assert [Path(r).name for r in got["runs"]] == ["seed-0", "seed-1"]
    # a resume of a finished aggregate reruns nothing and rewrites the same figures
    again = run_seeds(RECIPES / "demo_clap4clip.toml", [0, 1], out_dir=tmp_path / "s",
                      overrides=over, host=host, resume=True)
    assert [s["last_acc"] for s in again["summaries"]] == values

    rows = collect_results(tmp_path / "s")
    assert len(rows) == 1 and rows[0].seeds == 2      # the seed folders are not listed again
    md = format_table(rows, "markdown")
    assert "±" in md and "| demo_clap4clip | . | 2 |" in md
    assert r"$\pm$" in format_table(rows, "latex")
    table = list(csv.DictReader(io.StringIO(format_table(rows, "csv"))))
    assert float(table[0]["last_mean"]) == pytest.approx(100 * agg["last_acc"]["mean"], abs=1e-3)
    assert table[0]["memory"] == "20"
