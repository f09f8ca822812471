"""`raer` dataset: RAER academic-emotion clips (the CLIP-CAER benchmark, ICCV 2025).

Layout (as the CLIP-CAER scripts use it, ``root`` = the folder holding ``RAER/``)::

    RAER/images/<scene>/.../<clip>/1.jpg 2.jpg ...     frame folders (unpadded names)
    RAER/annotation/train.txt, test.txt                 "RAER/images/.../032 32 5" (1-based)
    RAER/bounding_box/face.json    {"RAER/images/.../032": {"1.jpg": [x1, y1, x2, y2], ...}}
    RAER/bounding_box/body.json    {"RAER/images/.../032": [x1, y1, x2, y2]}

Face boxes are per frame (a frame without its own box uses the nearest frame's); labels are
1-based in the lists (``label_base = 1``), classes Neutrality, Enjoyment, Confusion, Fatigue,
Distraction.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from clapkit import hookimpl
from clapkit.data.layout import dataset_root
from clapkit.data.list_source import ListClipSource
from clapkit.data.sources import ClipConfig
from clapkit.interfaces import BuildContext

from .demo_layouts import RAER_DEMO, as_raer

CLASSES = ["Neutrality", "Enjoyment", "Confusion", "Fatigue", "Distraction"]
OBTAIN = ("the RAER release of Zhao et al., 'Context-Aware Academic Emotion Dataset and "
          "Benchmark', ICCV 2025 (https://github.com/zgsfer/CLIP-CAER)")


def _default_annotations() -> dict[str, str]:
    return {"train": "RAER/annotation/train.txt", "valid": "RAER/annotation/val.txt",
            "test": "RAER/annotation/test.txt"}


@attrs.frozen(kw_only=True)
class RaerConfig(ClipConfig):
    """``root``: the folder holding ``RAER/`` (or ``RAER/`` itself); ``annotations``: split
    -> list file; ``face_boxes``: per-frame boxes; ``body_boxes``: one per clip (used with
    ``crop_body``); ``label_base``: 1 for the published lists."""

    root: str
    annotations: dict[str, str] = attrs.field(factory=_default_annotations)
    face_boxes: str | None = "RAER/bounding_box/face.json"
    body_boxes: str | None = "RAER/bounding_box/body.json"
    label_base: int = attrs.field(default=1, validator=attrs.validators.in_((0, 1)))


class RaerSource(ListClipSource):
    """RAER frame-folder clips with per-frame face boxes."""

    name, dataset = "raer", "RAER"
    CLASSES = CLASSES
    box_layout = "frame"
    strip_suffix = False


def build(cfg: RaerConfig, ctx: BuildContext) -> RaerSource:
    """RAER academic-emotion frame clips with per-frame face and per-clip body boxes."""
    return RaerSource.from_config(cfg, dataset_root(cfg.root, "RAER", OBTAIN))


def test_options(ctx: BuildContext) -> dict:
    return {"root": str(as_raer(Path(ctx.work_dir))), "num_frames": 4, "crop_body": True}


@hookimpl
def clapkit_register(registrar):
    registrar.add("dataset", "raer", build, config=RaerConfig, test_options=test_options)
    RAER_DEMO.register(registrar, "RAER-layout frame folders with per-frame face boxes, from "
                       "the generated CAER clips (read by raer)")
