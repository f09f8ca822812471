"""Backbone capabilities: what each open_clip tower kind declares, refusals that name the
backbone (at build, through ``clapkit recipe check``), and open_clip imported only where a
model is built."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clapkit.cli import main
from clapkit.errors import ClapkitError
from clapkit.interfaces import BACKBONE_CAPABILITIES, Backbone
from clapkit_plugins.backbones.open_clip import (TINY_MODEL, OpenClipBackbone, OpenClipConfig,
                                                open_clip_module)

MAPLE = Path(__file__).resolve().parents[1] / "recipes" / "maple.toml"
TINY_RN = "clapkit-tiny-rn-test"


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory) -> OpenClipBackbone:
    """A CLIP with a ModifiedResNet vision tower: pooled image features only."""
    oc = open_clip_module()
    cfg = oc.get_model_config(TINY_MODEL)
    cfg["vision_cfg"] = {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8}
    path = tmp_path_factory.mktemp("cfg") / f"{TINY_RN}.json"
    path.write_text(json.dumps(cfg))
    oc.add_model_config(path)
    return OpenClipBackbone(OpenClipConfig(model=TINY_RN))


def test_resnet_tower_declares_text_capabilities_only(tiny_resnet):
    bb = tiny_resnet
    assert type(bb.model.visual).__name__ == "ModifiedResNet"
    assert bb.capabilities == {"text_embedded", "text_tokens"}
    x = torch.zeros(1, 3, 32, 32)
    for call in (lambda: bb.encode_image_tokens(x), lambda: bb.vision_width,
                 lambda: bb.encode_image_prompted(x, [torch.zeros(1, 8)])):
        with pytest.raises(ClapkitError) as exc:
            call()
        msg = str(exc.value)
        assert f"backbone open_clip {TINY_RN} [random(seed=0), fp32] lacks" in msg
        assert "(it has: text_embedded, text_tokens)" in msg
    with torch.no_grad():                          # what it has works
        assert bb.encode_text_tokens(bb.tokenize(["a cat"])).tokens.shape == (1, 77, 32)
        assert bb.encode_image(x).shape == (1, 128)


def test_a_component_needing_a_missing_capability_is_refused_at_check(tiny_resnet, tmp_path,
                                                                      capsys):
    """MaPLe asks for the vision tower's depth at build: on a ResNet CLIP, `recipe check`
    refuses with one line naming the section, the capability and the backbone."""
    with pytest.raises(SystemExit) as code:
        main(["recipe", "check", str(MAPLE), "--set", f"backbone.model={TINY_RN}",
              "--set", f'cache.dir="{tmp_path / "cache"}"'])
    err = capsys.readouterr()
    msg = err.err + err.out
    assert code.value.code == 2, msg
    assert "prompts.text" in msg and "'deep_prompts'" in msg
    assert f"backbone open_clip {TINY_RN}" in msg and "lacks" in msg


def test_require_names_what_is_missing_and_rejects_unknown_names():
    class Bare(Backbone):
        capabilities = frozenset({"text_tokens"})

        def describe(self):
            return "bare test model"

    bb = Bare()
    bb.require("text_tokens")                       # declared: nothing happens
    with pytest.raises(ClapkitError) as exc:
        bb.require("image_tokens", "text_decoder", who="loss 'itm'")
    assert str(exc.value) == (
        "loss 'itm' needs backbone capability 'image_tokens', 'text_decoder' "
        "(encode_image_tokens; decode_text), which backbone bare test model lacks "
        "(it has: text_tokens)")
    with pytest.raises(ValueError, match="unknown backbone capability 'tokens'"):
        bb.require("tokens")
    # the base class refuses every capability method it was not given
    with pytest.raises(ClapkitError, match="encode_image_tokens needs backbone capability"):
        bb.encode_image_tokens(torch.zeros(1, 3, 8, 8))
    assert set(BACKBONE_CAPABILITIES) == {"image_tokens", "text_tokens", "text_embedded",
                                          "deep_prompts", "text_decoder"}


def test_plugin_modules_do_not_import_heavy_libraries():
    """Loading every plugin (what `clapkit plugins` and `--help` do) imports no open_clip,
    torchvision, cv2 or av; building the backbone does."""
    code = (
        "import sys\n"
        "from clapkit.plugins import get_plugin_host\n"
        "host = get_plugin_host()\n"
        "heavy = [m for m in ('open_clip', 'torchvision', 'cv2', 'av') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from clapkit_plugins.backbones.open_clip import OpenClipBackbone, OpenClipConfig\n"
        "assert 'open_clip' not in sys.modules\n"
        "OpenClipBackbone(OpenClipConfig(model='clapkit-tiny'))\n"
        "assert 'open_clip' in sys.modules\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
