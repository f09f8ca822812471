"""Image adapters run in the order the recipe states (``run_order`` key), not in the table order
that ``extends`` merging happens to leave."""

from __future__ import annotations

from pathlib import Path

import engine_standins as es
from clapkit.interfaces import BuildContext
from clapkit.pipeline import adapter_order, build_pipeline
from clapkit.plugins import get_plugin_host
from clapkit.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_runs_its_adapters_in_the_order_it_states():
    recipe = load_recipe(ROOT / "recipes" / "demo_caer_staged.toml", get_plugin_host())
    names = [n for n, _ in adapter_order(recipe.adapters)]
    stated = {n: s.keys.run_order for n, s in recipe.adapters.items()}
    assert stated["norm"] > stated["eaa"]          # the recipe puts the standardisation last
    assert names.index("eaa") < names.index("norm")


def test_run_order_key_sets_the_run_order_of_image_adapters(tmp_path):
    text = es.BASE_RECIPE.replace('[adapters.frame]\nplugin = "t_frame_linear"\n',
                                  '[adapters.frame]\nplugin = "t_frame_linear"\n\n'
                                  '[adapters.first]\nplugin = "t_frame_linear"\nrun_order = -1\n')
    host = get_plugin_host()
    recipe = load_recipe(es.write_recipe(tmp_path, text), host)
    assert list(recipe.adapters) == ["frame", "first"]
    from clapkit.build import build_component
    ctx = BuildContext(host=host, class_names=["a", "b"], task_of_class=[0, 0])
    ctx.backbone = build_component(recipe.backbone, ctx)
    pipe = build_pipeline(recipe, ctx, ctx.backbone)
    assert list(pipe.adapters) == ["first", "frame"]
    # and that is the order they apply in: first doubles, frame adds one -> 2x + 1
    import torch
    with torch.no_grad():
        pipe.adapters["first"]["image"].proj.weight.mul_(2)
        pipe.adapters["frame"]["image"].proj.bias.fill_(1)
    x = torch.randn(2, 1, ctx.backbone.embed_dim)
    z, _ = pipe.visual({"image": x})
    torch.testing.assert_close(z, 2 * x[:, 0] + 1)
