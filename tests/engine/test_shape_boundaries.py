"""A component output of the wrong shape fails at the component's boundary: the message names
the recipe section, the plugin, the expected and the actual shape (not a loss traceback)."""

from __future__ import annotations

import textwrap

import pytest

import engine_standins as es
from clapkit.evaluation import eval_target
from clapkit.plugins import get_plugin_host
from clapkit.shapes import ComponentShapeError

BROKEN = textwrap.dedent('''
    import attrs
    import torch
    from clapkit import hookimpl
    from clapkit.interfaces import Adapter, HeadOutput, Head


    @attrs.frozen
    class Cfg:
        mode: str = "video"


    class KeepsTime(Adapter):
        """A video adapter that forgets to pool over time: [B,T,D] -> [B,T,D]."""
        place = "video"

        def __init__(self, dim):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(dim))

        def forward(self, x):
            return x * self.w


    class WideImage(Adapter):
        """An image adapter that doubles the width: [B,T,D] -> [B,T,2D]."""
        place = "image"

        def __init__(self, dim):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(dim))

        def forward(self, x):
            return torch.cat([x * self.w, x], dim=-1)


    class OneLogit(Head):
        """A head that returns [B,1] whatever the classes."""

        def forward(self, z, text, views=None):
            return HeadOutput(z[:, :1])


    @hookimpl
    def clapkit_register(registrar):
        registrar.add("adapter", "t_keeps_time", lambda c, x: KeepsTime(x.embed_dim),
                      config=Cfg, place="video")
        registrar.add("adapter", "t_wide_image", lambda c, x: WideImage(x.embed_dim),
                      config=Cfg, place="image")
        registrar.add("head", "t_one_logit", lambda c, x: OneLogit(), config=Cfg)
''')


@pytest.fixture
def broken(tmp_path, monkeypatch):
    (tmp_path / "shape_breakers.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("table, pattern", [
    ('[adapters.frame]\nplugin = "t_keeps_time"\n',
     r"\[adapters\.frame\] t_keeps_time: video adapter output \(stream 'image'\) has shape "
     r"\[12, 2, \d+\], expected \[B=12, D=\d+\]"),
    ('[adapters.frame]\nplugin = "t_wide_image"\n',
     r"\[adapters\.frame\] t_wide_image: image adapter output \(stream 'image'\) has shape "
     r"\[12, 2, (\d+)\], expected \[B=12, T=2, D=\d+\]"),
    ('[head]\nplugin = "t_one_logit"\n',
     r"\[head\] t_one_logit: logits has shape \[12, 1\], expected \[B=12, C=4\]"),
])
def test_wrong_output_shape_fails_at_the_component(broken, table, pattern):
    text = es.BASE_RECIPE.replace('plugins = ["engine_standins"]',
                                  'plugins = ["engine_standins", "shape_breakers"]')
    text = text.replace('[adapters.frame]\nplugin = "t_frame_linear"\n', "")
    text = text.replace('[head]\nplugin = "cosine"\ntemperature = 0.05\n', "")
    text += "\n" + table
    if "[head]" not in table:
        text += '\n[head]\nplugin = "cosine"\n'
    path = es.write_recipe(broken, text)
    with pytest.raises(ComponentShapeError, match=pattern):
        eval_target(path, get_plugin_host(), out=broken / "ev", overrides=[
            f'cache.dir="{broken / "cache"}"', "data.eval_batch_size=12"])
