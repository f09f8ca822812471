"""``[[stages]] losses``: a stage computes only the loss terms it names (a contrastive stage,
then one that adds the grounded objectives); a name the recipe does not define is an error
that lists the defined ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clapkit.errors import RecipeError
from clapkit.pipeline import Pipeline
from clapkit.plugins import get_plugin_host
from clapkit.recipe import load_recipe
from clapkit.sections import LossKeys

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _recipe(tmp_path: Path, losses: str):
    f = tmp_path / "r.toml"
    f.write_text(f'extends = "{RECIPES / "demo_pretrain.toml"}"\n'
                 '[[stages]]\nname = "contrastive"\ntrain = ["backbone.*"]\n'
                 f'losses = {losses}\n')
    return load_recipe(f, get_plugin_host(autoload_third_party=False))


def test_stage_losses_must_be_defined_by_the_recipe(tmp_path):
    assert _recipe(tmp_path, '["itc"]').stages[0].losses == ["itc"]
    with pytest.raises(RecipeError) as err:
        _recipe(tmp_path, '["itc", "contrast"]')
    msg = str(err.value)
    assert "stages[0].losses" in msg and "'contrast'" in msg
    assert "itc" in msg and "itm" in msg and "lm" in msg      # the allowed names


class _Const(torch.nn.Module):
    needs = ("z",)

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.calls = 0

    def forward(self, outputs, batch):
        self.calls += 1
        return outputs["z"].sum() * 0 + self.value


def test_compute_losses_skips_the_terms_a_stage_leaves_out():
    losses = {"a": _Const(1.0), "b": _Const(10.0)}
    pipe = Pipeline(backbone=torch.nn.Linear(1, 1), prompts={}, adapters={}, adapter_places={},
                    head=None, head_view="", losses=losses,
                    loss_keys={n: LossKeys() for n in losses}, streams=("image",),
                    task_of_class=[0])
    out = {"z": torch.zeros(2, 4, requires_grad=True)}
    total, terms = pipe.compute_losses(out, {}, epoch=0)
    assert float(total) == 11.0
    pipe.active_losses = frozenset({"a"})
    total, terms = pipe.compute_losses(out, {}, epoch=0)
    assert float(total) == 1.0 and terms["b"] == 0.0 and losses["b"].calls == 1
