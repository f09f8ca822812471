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
from clapkit.data.layout import clip_path, dataset_root, optional_file, read_list, split_files
from clapkit.data.sources import ClipConfig, ClipItem, ClipSource, check_split
from clapkit.interfaces import BuildContext

from .demo_layouts import as_raer

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


class RaerSource(ClipSource):
    """RAER frame-folder clips with per-frame face boxes."""

    name = "raer"
    box_layout = "frame"

    def __init__(self, cfg: RaerConfig, root: Path, lists: dict[str, Path]) -> None:
        super().__init__(CLASSES, cfg.crop_options(), optional_file(root, cfg.face_boxes),
                         optional_file(root, cfg.body_boxes),
                         face_file_given=cfg.face_boxes is not None)
        self.root, self.lists, self.label_base = root, lists, cfg.label_base

    def splits(self) -> list[str]:
        return list(self.lists)

    def scan(self, split: str) -> list[ClipItem]:
        check_split(self, split)
        entries = read_list(self.lists[split], with_frames=True, label_base=self.label_base,
                            num_classes=len(self.classes))
        return [ClipItem(id=e.path, label=e.label, path=clip_path(self.root, e.path),
                         num_frames=e.num_frames, box_key=e.path) for e in entries]

    def describe(self) -> dict:
        return {**super().describe(), "label_base": self.label_base}


def build(cfg: RaerConfig, ctx: BuildContext) -> RaerSource:
    """RAER academic-emotion frame clips with per-frame face and per-clip body boxes."""
    root = dataset_root(cfg.root, "RAER", OBTAIN)
    return RaerSource(cfg, root, split_files(root, "RAER", cfg.annotations))


def test_options(ctx: BuildContext) -> dict:
    return {"root": str(as_raer(Path(ctx.work_dir))), "num_frames": 4, "crop_body": True}


@hookimpl
def clapkit_register(registrar):
    registrar.add("dataset", "raer", build, config=RaerConfig, test_options=test_options)
