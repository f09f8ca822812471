"""``[[stages]] split``: a stage trains on another split of the dataset (a curated subset
after pre-training on everything); ``[[stages]] fused``: torch's fused optimizer kernel; and
the task-end pass that nobody reads is skipped."""

from __future__ import annotations

import attrs
import pytest
import torch

import engine_standins as es
from clapkit.engine import lifecycle
from clapkit.engine.data import RunData
from clapkit.engine.runner import run_recipe
from clapkit.engine.stages import build_optimizer
from clapkit.errors import RecipeError
from clapkit.interfaces import Component
from clapkit.sections import StageConfig

SPLITS = ['data.splits=["train", "valid", "extra"]', 'cache.enabled="off"']


def _record_loaders(monkeypatch) -> list[tuple[str, list[int]]]:
    seen: list[tuple[str, list[int]]] = []
    original = RunData.train_loader

    def spy(self, indices, *, split=None, **kw):
        seen.append((split or self.train_split, list(indices)))
        return original(self, indices, split=split, **kw)

    monkeypatch.setattr(RunData, "train_loader", spy)
    return seen


def test_a_stage_trains_on_its_own_split(tmp_path, monkeypatch):
    seen = _record_loaders(monkeypatch)
    path = es.write_recipe(tmp_path)
    run_recipe(path, overrides=es.base_overrides(tmp_path) + SPLITS + [
        'stages=[{name="all", train=["prompts.*"], epochs=1}, '
        '{name="subset", train=["adapters.*"], epochs=1, split="extra"}]'],
        out_dir=tmp_path / "out")
    assert [s for s, _ in seen] == ["train", "extra"]
    assert len(seen[0][1]) == 24 and sorted(seen[1][1]) == list(range(12))   # 3 per class


def test_bad_stage_splits_are_errors(tmp_path):
    path = es.write_recipe(tmp_path)
    cases = [('split="nope"', "no split 'nope'"),
             ('split="valid"', "would train on the valid split")]
    for n, (key, message) in enumerate(cases):
        with pytest.raises(RecipeError, match=message) as err:
            run_recipe(path, overrides=es.base_overrides(tmp_path) + SPLITS + [
                f'stages=[{{name="a", train=["prompts.*"], {key}}}]'],
                out_dir=tmp_path / f"o{n}")
        assert "stages[0].split" in str(err.value)
    with pytest.raises(RecipeError, match="no split 'nope'") as err:
        run_recipe(path, overrides=es.base_overrides(tmp_path) + SPLITS + [
            'stages=[{name="a", train=["prompts.*"], split="nope"}]'], out_dir=tmp_path / "o9")
    assert "extra" in str(err.value)                            # the splits there are


def test_a_stage_split_cannot_mix_in_the_replay_memory(tmp_path):
    from clapkit.engine.assembly import check_recipe_rules
    from clapkit.plugins import get_plugin_host
    from clapkit.recipe import load_recipe
    path = es.write_recipe(tmp_path, es.BASE_RECIPE + '\n[memory]\nsize = 4\n'
                           '[selector]\nplugin = "t_first"\n')
    host = get_plugin_host()
    recipe = load_recipe(path, host, overrides=[
        'stages=[{name="a", train=["prompts.*"], split="extra"}]'])
    with pytest.raises(RecipeError, match="cannot mix in the replay memory") as err:
        check_recipe_rules(recipe)
    assert "stages[0].data" in str(err.value)
    ok = load_recipe(path, host, overrides=[
        'stages=[{name="a", train=["prompts.*"], split="extra", data="task"}]'])
    check_recipe_rules(ok)


def test_fused_optimizer_makes_the_same_step():
    torch.manual_seed(0)
    for kind in ("adamw", "sgd"):
        stage = StageConfig(name="s", train=["x"], optimizer=kind, lr=0.1, weight_decay=0.01)
        a = torch.nn.Parameter(torch.randn(5, 3))
        b = torch.nn.Parameter(a.detach().clone())
        plain = build_optimizer([{"params": [a]}], stage)
        fused = build_optimizer([{"params": [b]}], attrs.evolve(stage, fused=True))
        assert fused.defaults["fused"] and not plain.defaults.get("fused")
        for _ in range(3):
            for p, o in ((a, plain), (b, fused)):
                o.zero_grad()
                (p ** 2).sum().backward()
                o.step()
        assert torch.allclose(a, b, atol=1e-6), kind


def test_the_last_task_end_pass_runs_only_for_a_component_that_reads_it(tmp_path,
                                                                          monkeypatch):
    calls = []
    original = lifecycle.encode_items
    monkeypatch.setattr(lifecycle, "encode_items",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    path = es.write_recipe(tmp_path)
    run_recipe(path, overrides=es.base_overrides(tmp_path), out_dir=tmp_path / "out")
    assert calls == []                      # no component implements on_task_end

    class Reads(Component):
        def on_task_end(self, task, view):
            pass

    from clapkit.pipeline import Pipeline
    monkeypatch.setattr(Pipeline, "components",
                        lambda self: [("reader", Reads())])
    assert Pipeline.reads_task_view(object.__new__(Pipeline))
