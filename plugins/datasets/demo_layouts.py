"""The generated demo sets re-filed in the other published layouts.

Used by the dataset plugins' ``test_options`` (the contract suites build every dataset from
a tiny tree in its own layout) and by the unit tests. Each function copies a *tiny* CAER demo
(``CAER_DEMO.ensure(..., tiny=True)``) or incremental demo into one layout, idempotently
(a ``.done`` file marks a finished tree).
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from clapkit.data.demo import DemoMaker
from clapkit.data.video import list_frames, read_clip

from .demo_caer import CAER_CLASSES, CAER_DEMO
from .demo_incremental import INCREMENTAL_DEMO

CAER_S_CLASSES = ("Angry",) + CAER_CLASSES[1:]
RAER_CLASSES = ("Neutrality", "Enjoyment", "Confusion", "Fatigue", "Distraction")


def _done(out: Path) -> bool:
    return (out / ".done").is_file()


def _finish(out: Path) -> Path:
    (out / ".done").write_text("")
    return out


def _tiny(work: Path, name: str, source: DemoMaker, source_name: str,
          write: Callable[[Path, Path], Path]) -> Path:
    out = work / name
    if _done(out):
        return out
    write(source.ensure(work / source_name, tiny=True), out)
    return _finish(out)


def converted(kind: str, source: DemoMaker, write: Callable[[Path, Path], Path],
              dataset: str) -> DemoMaker:
    """A generator for ``clapkit data make-demo --kind KIND``: the ``source`` demo re-filed
    by ``write(demo, out)`` into another dataset's layout (the source is made inside the
    unpublished folder and removed)."""
    def make(out: Path, seed: int, tiny: bool) -> None:
        src = out / ".source"
        src.mkdir()
        source.make(src, seed, tiny)
        write(src, out)
        shutil.rmtree(src)

    return DemoMaker(kind=kind, make=make, version=source.version, dataset=dataset)


def _demo_clips(demo: Path) -> list[tuple[str, int, int, list[int]]]:
    """(relative clip path, frames, label, box) of every clip of a CAER demo."""
    boxes = json.loads((demo / "caer_video_annotations" / "caer_video_faces.json").read_text())
    out = []
    for name in ("train.txt", "validation.txt"):
        for line in (demo / "caer_video_annotations" / name).read_text().split("\n"):
            if line.strip():
                rel, n, label = line.split()
                out.append((rel, int(n), int(label), boxes["CAER/" + rel[:-4]]))
    return out


def write_caer_s(demo: Path, out: Path) -> Path:
    """CAER-S layout: the last frame of each tiny demo clip as ``train/<Class>/<id>.png``."""
    ann = out / "CAER-S" / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    lines, faces = [], {}
    for rel, _, label, box in _demo_clips(demo):
        if not rel.startswith("train/"):
            continue
        frames, _ = read_clip(demo / rel, lambda n: [n - 1])
        img = f"train/{CAER_S_CLASSES[label]}/{Path(rel).stem}.png"
        (out / img).parent.mkdir(parents=True, exist_ok=True)
        frames[0].save(out / img)
        lines.append(f"{img} {label}")
        faces[img] = box
    (ann / "train.txt").write_text("\n".join(lines) + "\n")
    (ann / "caer_s_faces.json").write_text(json.dumps(faces))
    return out


def as_caer_s(work: Path) -> Path:
    """The tiny caer_s tree under ``work`` (made once)."""
    return _tiny(work, "caer-s-tiny", CAER_DEMO, "demo-caer-tiny", write_caer_s)


def write_raer(demo: Path, out: Path) -> Path:
    """RAER layout: frame folders ``RAER/images/<scene>/<clip>/1.jpg...`` (unpadded names),
    1-based labels, per-frame face boxes and one body box per clip."""
    (out / "RAER" / "annotation").mkdir(parents=True, exist_ok=True)
    (out / "RAER" / "bounding_box").mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {"train": [], "test": []}
    face: dict[str, dict[str, list[int]]] = {}
    body: dict[str, list[int]] = {}
    for i, (rel, _, label, box) in enumerate(_demo_clips(demo)):
        split = "train" if rel.startswith("train/") else "test"
        frames, _ = read_clip(demo / rel, lambda n: list(range(n)))
        clip = f"RAER/images/SelfStudy/Library/P{i // 3 + 1:03d}/{i % 3 + 1:03d}"
        (out / clip).mkdir(parents=True, exist_ok=True)
        for j, fr in enumerate(frames, 1):
            fr.save(out / clip / f"{j}.jpg", quality=95)
        face[clip] = {f"{j}.jpg": box for j in range(1, len(frames) + 1)}
        x1, y1, x2, y2 = box
        body[clip] = [max(0, x1 - 10), y1, min(frames[0].width, x2 + 10), frames[0].height]
        lines[split].append(f"{clip} {len(frames)} {label % len(RAER_CLASSES) + 1}")
    for split, ls in lines.items():
        (out / "RAER" / "annotation" / f"{split}.txt").write_text("\n".join(ls) + "\n")
    (out / "RAER" / "bounding_box" / "face.json").write_text(json.dumps(face))
    (out / "RAER" / "bounding_box" / "body.json").write_text(json.dumps(body))
    return out


def as_raer(work: Path) -> Path:
    """The tiny raer tree under ``work`` (made once)."""
    return _tiny(work, "raer-tiny", CAER_DEMO, "demo-caer-tiny", write_raer)


def write_daisee(demo: Path, out: Path) -> Path:
    """DAiSEE layout: ``DataSet/<Split>/<user>/<clip>/<clip>.avi`` (validation clips as frame
    folders) and ``Labels/<Split>Labels.csv`` with ``ClipID`` and the four levels."""
    (out / "Labels").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[str]] = {"Train": [], "Validation": []}
    for i, (rel, _, label, _box) in enumerate(_demo_clips(demo)):
        split = "Train" if rel.startswith("train/") else "Validation"
        user = f"{500000 + i // 2}"
        clip = f"{user}{i % 2 + 1:04d}"
        folder = out / "DataSet" / split / user / clip
        folder.mkdir(parents=True, exist_ok=True)
        src = demo / rel
        if src.is_file():
            shutil.copy(src, folder / f"{clip}.avi")
        else:
            for f in list_frames(src.with_suffix("")):
                shutil.copy(f, folder / f.name)
        lvl = label % 4
        rows[split].append(f"{clip}.avi,{(lvl + 1) % 4},{lvl},{(lvl + 2) % 4},{(lvl + 3) % 4}")
    for split, rs in rows.items():
        (out / "Labels" / f"{split}Labels.csv").write_text(
            "ClipID,Boredom,Engagement,Confusion,Frustration \n" + "\n".join(rs) + "\n")
    return out


def as_daisee(work: Path) -> Path:
    """The tiny daisee tree under ``work`` (made once)."""
    return _tiny(work, "daisee-tiny", CAER_DEMO, "demo-caer-tiny", write_daisee)


def _incremental_arrays(demo: Path, split: str) -> tuple[np.ndarray, list[int], list[str]]:
    folder = demo / "cifar-100-python"
    with open(folder / split, "rb") as fh:
        d = pickle.load(fh, encoding="bytes")
    with open(folder / "meta", "rb") as fh:
        names = [n.decode() for n in pickle.load(fh, encoding="bytes")[b"fine_label_names"]]
    x = d[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return x, list(d[b"fine_labels"]), names


def write_imagefolder(demo: Path, out: Path) -> Path:
    """ImageFolder layout ``<split>/<class>/<n>.png`` from the tiny incremental demo."""
    for split in ("train", "test"):
        x, y, names = _incremental_arrays(demo, split)
        for i, (img, lab) in enumerate(zip(x, y)):
            d = out / split / names[lab].replace(" ", "_")
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:05d}.png")
    return out


def as_imagefolder(work: Path) -> Path:
    """The tiny imagefolder tree under ``work`` (made once)."""
    return _tiny(work, "imagefolder-tiny", INCREMENTAL_DEMO, "demo-inc-tiny", write_imagefolder)


def write_imagenet_r(demo: Path, out: Path) -> Path:
    """ImageNet-R layout ``imagenet-r/<wnid>/<style>_<n>.jpg`` with CLAP4CLIP-style split
    lists ``imagenet_split/imagenetr_{train,test}.txt`` (``train/<wnid>/<file> <label>``)
    and a README listing ``<wnid> <name>``."""
    base = out / "imagenet-r"
    (out / "imagenet_split").mkdir(parents=True, exist_ok=True)
    readme = []
    for split in ("train", "test"):
        x, y, names = _incremental_arrays(demo, split)
        lines = []
        for i, (img, lab) in enumerate(zip(x, y)):
            wnid = f"n{1000000 + lab * 7919:08d}"
            (base / wnid).mkdir(parents=True, exist_ok=True)
            fname = f"{split}art_{i}.jpg"
            Image.fromarray(img).save(base / wnid / fname, quality=95)
            lines.append(f"{split}/{wnid}/{fname} {lab}")
            readme.append(f"{wnid} {names[lab]}")
        (out / "imagenet_split" / f"imagenetr_{split}.txt").write_text("\n".join(lines) + "\n")
    (base / "README.txt").write_text("\n".join(sorted(set(readme))) + "\n")
    return out


def as_imagenet_r(work: Path) -> Path:
    """The tiny imagenet_r tree under ``work`` (made once)."""
    return _tiny(work, "imagenet-r-tiny", INCREMENTAL_DEMO, "demo-inc-tiny", write_imagenet_r)


# generators for `clapkit data make-demo --kind ...`, registered by their dataset plugins
CAER_S_DEMO = converted("caer_s", CAER_DEMO, write_caer_s, "caer_s")
RAER_DEMO = converted("raer", CAER_DEMO, write_raer, "raer")
DAISEE_DEMO = converted("daisee", CAER_DEMO, write_daisee, "daisee")
IMAGEFOLDER_DEMO = converted("imagefolder", INCREMENTAL_DEMO, write_imagefolder, "imagefolder")
IMAGENET_R_DEMO = converted("imagenet_r", INCREMENTAL_DEMO, write_imagenet_r, "imagenet_r")
