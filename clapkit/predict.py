"""``clapkit predict RUN_DIR INPUT...``: class probabilities for videos, frame folders, images.

Each input goes through what the dataset does to its items at evaluation time: the dataset
source of the run's recipe samples the frames (segment centres) and cuts the streams (face
crop and context for the face/context datasets, using face boxes detected here with the
OpenCV cascade of ``clapkit/data/faces.py``, since an input file comes without boxes), then the
backbone's eval transform and the pipeline's eval pass (the same loop as ``clapkit eval``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.base import ItemRef
from .data.sampling import segment_indices
from .data.sources import ClipSource, ImageSource
from .data.video import (IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, list_frames, read_clip,
                         read_image, resolve_clip)
from .errors import ClapkitError
from .evaluation import Prepared, _step_config, recipe_listeners


def refuse_special_file(path: Path) -> None:
    """An input must be a regular file or a folder: reading a FIFO, socket or device blocks
    or never ends, so ``predict`` refuses it before opening anything."""
    if not path.is_file() and not path.is_dir():
        raise ClapkitError(f"input {path}: not a regular file or folder (a FIFO, socket or "
                           "device); give a video, an image or a frame folder")


def expand_inputs(paths: Sequence[Path], source: Any) -> list[Path]:
    """Inputs as items: for an image dataset a folder means its images; for a clip dataset a
    folder is one clip of frames (as in the datasets' own layouts)."""
    out: list[Path] = []
    for p in paths:
        if not p.exists():
            try:
                p = resolve_clip(p)          # name.avi for a frame folder "name", as lists do
            except ClapkitError:
                raise ClapkitError(f"input {p} does not exist") from None
        refuse_special_file(p)
        if p.is_dir() and isinstance(source, ImageSource):
            files = list_frames(p)
            if not files:
                raise ClapkitError(f"input folder {p} holds no images "
                                   f"({'/'.join(IMAGE_EXTENSIONS)})")
            out += files
        elif p.is_file() and p.suffix.lower() not in (*VIDEO_EXTENSIONS, *IMAGE_EXTENSIONS):
            raise ClapkitError(f"input {p}: not a video ({'/'.join(VIDEO_EXTENSIONS)}) nor an "
                               f"image ({'/'.join(IMAGE_EXTENSIONS)})")
        else:
            out.append(p)
    return out


def detect_boxes(source: ClipSource, path: Path, detector: Any) -> dict[str, Any]:
    """Face boxes in the layout ``source`` reads (one per clip: median over 3 frames; or one
    per frame), as ``faces.detect_dataset_faces`` writes them for a dataset."""
    if detector is None:
        return {}
    if source.box_layout == "frame":
        frames, names = read_clip(path, lambda n: list(range(n)))
        per = {nm: tuple(b) for nm, f in zip(names, frames) if (b := detector(f)) is not None}
        return {"face": per} if per else {}
    frames, _ = read_clip(path, lambda n: sorted(set(segment_indices(n, 3, False))))
    boxes = [b for f in frames if (b := detector(f)) is not None]
    if not boxes:
        return {}
    return {"face": tuple(float(v) for v in np.median(np.array(boxes), axis=0))}


class _Inputs(torch.utils.data.Dataset):
    def __init__(self, prep: Prepared, paths: list[Path], detector: Any) -> None:
        self.prep, self.paths, self.detector = prep, paths, detector
        self.transform = prep.pipeline.backbone.transform(False)
        self.faces_found: list[bool | None] = [None] * len(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        src, path = self.prep.source, self.paths[i]
        if isinstance(src, ClipSource):
            boxes = detect_boxes(src, path, self.detector)
            self.faces_found[i] = bool(boxes) if self.detector is not None else None
            ref = ItemRef(id=path.name, label=0, path=str(path), boxes=boxes)
            frames = src.load(ref, False, random.Random(i))
        elif isinstance(src, ImageSource):
            frames = {"image": [read_image(path)]}
        else:
            raise ClapkitError(f"predict reads inputs for face/context clip datasets and image "
                               f"datasets; the run's dataset '{self.prep.recipe.data.plugin}' "
                               "is neither")
        streams = {s: torch.stack([self.transform(im) for im in frames[s]])
                   for s in src.streams}
        return {"id": str(path), "label": 0, "index": i, "streams": streams}


def _detector(source: Any) -> tuple[Any, str | None]:
    if not isinstance(source, ClipSource) or "face" not in source.streams:
        return None, None
    from .data.faces import HaarFaceDetector
    try:
        return HaarFaceDetector(), None
    except ClapkitError as exc:
        return None, f"no face detector ({exc}); the face stream uses the centre crop"


def predict(prep: Prepared, inputs: Sequence[Path], host: Any = None
            ) -> tuple[list[dict[str, Any]], list[str]]:
    """Per input: predicted class and the probability of every seen class, plus what the
    recipe's plugins add (``clapkit_predict``, given ``host``); plus notes."""
    from .engine.distributed import DistInfo
    from .engine.loop import evaluate
    paths = expand_inputs(inputs, prep.source)
    detector, note = _detector(prep.source)
    ds = _Inputs(prep, paths, detector)
    loader = torch.utils.data.DataLoader(ds, batch_size=_batch_size(prep))
    with recipe_listeners(prep, host, "clapkit_predict") as listeners:
        # inputs are new items: always through the image encoder, never the feature cache;
        # one pass, its batches kept for the plugins when some implement clapkit_predict
        passes: list[tuple[dict[str, Any], dict[str, Any]]] = []
        _, got = evaluate(prep.pipeline, loader, _step_config(prep, "predict"), DistInfo(),
                          collect=True, on_outputs=(lambda b, o: passes.append((b, o)))
                          if listeners else None)
        assert got is not None
        out = _rows(prep, paths, ds, got)
        if listeners:
            plugin_additions(host, Predictions(prep.pipeline, passes, prep, out))
    notes = [note] if note else []
    missed = [r["input"] for r in out if r["face_detected"] is False]
    if missed:
        notes.append(f"no face found in {len(missed)} input(s) ({', '.join(missed[:3])}"
                     f"{', ...' if len(missed) > 3 else ''}): face stream = centre crop")
    return out, notes


def _rows(prep: Prepared, paths: list[Path], ds: "_Inputs", got: Any) -> list[dict[str, Any]]:
    """One row per input, in input order: the predicted class and every probability."""
    seen = prep.scenario.seen(prep.task) if prep.scenario.incremental else \
        prep.scenario.num_classes
    names = prep.class_names[:seen]
    probs = torch.softmax(got.logits[:, :seen].float(), dim=1)
    out = []
    order = torch.argsort(got.index)
    for row, idx in zip(probs[order], got.index[order].tolist()):
        k = int(row.argmax())
        out.append({"input": str(paths[idx]), "predicted": names[k],
                    "probability": float(row[k]),
                    "probabilities": {n: float(p) for n, p in zip(names, row.tolist())},
                    "face_detected": ds.faces_found[idx]})
    return out


#: the keys of a prediction row that ``predict`` itself fills
BASE_KEYS = ("input", "predicted", "probability", "probabilities", "face_detected")


class Predictions:
    """What ``clapkit_predict`` implementations read and extend (see the hookspec)."""

    def __init__(self, pipeline: Any, passes: list[tuple[dict[str, Any], dict[str, Any]]],
                 prep: Prepared, rows: list[dict[str, Any]]) -> None:
        self.pipeline, self.prep, self.rows = pipeline, prep, rows
        self._passes = passes

    def run(self, on_outputs: Any) -> None:
        """The model's outputs on every batch of the inputs, to ``on_outputs(batch,
        outputs)``: the batches of predict's own pass, not a second one."""
        for batch, outputs in self._passes:
            on_outputs(batch, outputs)

    def split_texts(self, role: str) -> list[str]:
        """The captions of the run's ``role`` split ("valid" or "test"), each once."""
        from .evaluation import split_name
        refs = self.prep.source.refs(split_name(self.prep, role))
        return list(dict.fromkeys(t for r in refs for t in r.texts))


def _batch_size(prep: Prepared) -> int:
    return prep.data.keys.eval_batch_size or prep.data.keys.batch_size


def plugin_additions(host: Any, predictions: Predictions) -> None:
    """``clapkit_predict`` on the registered plugins; they may only add keys to the rows."""
    before = [dict(r) for r in predictions.rows]
    host.hook.clapkit_predict(predictions=predictions)
    for row, was in zip(predictions.rows, before):
        changed = sorted(k for k, v in was.items() if k not in row or row[k] is not v)
        if changed:
            raise ClapkitError(f"a clapkit_predict implementation changed the row keys "
                               f"{changed} of {row.get('input')}; it may only add keys")


def format_predictions(rows: list[dict[str, Any]], top: int = 5) -> list[str]:
    """One line per input (class and probabilities), then one indented line per key a
    plugin added (``caption: ...``, ``matches: a | b``)."""
    lines = []
    for r in rows:
        ranked = sorted(r["probabilities"].items(), key=lambda kv: -kv[1])[:top]
        shown = ", ".join(f"{n} {100 * p:.1f}%" for n, p in ranked)
        lines.append(f"{r['input']}: {r['predicted']} ({100 * r['probability']:.1f}%)   "
                     f"[{shown}]")
        for key, value in r.items():
            if key in BASE_KEYS:
                continue
            if isinstance(value, (list, tuple)):
                value = " | ".join(str(v) for v in value)
            lines.append(f"    {key}: {value}")
    return lines
