"""`caer` dataset: CAER video clips (Lee et al., ICCV 2019) in the CLIP-CAER list layout.

Layout (the one the enhanced CLIP-CAER scripts share)::

    <root>/train/Anger/0001.avi ...                  clips (or frame folders train/Anger/0001/)
    caer_video_annotations/train.txt                 "train/Anger/0001.avi 60 0" (0-based labels)
    caer_video_annotations/validation.txt, test.txt
    caer_video_annotations/caer_video_faces.json     {"CAER/train/Anger/0001": [x1, y1, x2, y2]}

Annotation and box paths resolve against ``root``, then the working directory. Classes are
the 7 CAER emotions in alphabetical order. Streams: ``face`` and ``context``.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from clapkit import hookimpl
from clapkit.data.layout import dataset_root
from clapkit.data.list_source import ListClipSource
from clapkit.data.sources import ClipConfig
from clapkit.interfaces import BuildContext

from .demo_caer import CAER_DEMO

CLASSES = ["Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]
OBTAIN = ("https://caer-dataset.github.io (Lee et al., 'Context-Aware Emotion Recognition "
          "Networks', ICCV 2019)")


def _default_annotations() -> dict[str, str]:
    return {"train": "caer_video_annotations/train.txt",
            "valid": "caer_video_annotations/validation.txt",
            "test": "caer_video_annotations/test.txt"}


@attrs.frozen(kw_only=True)
class CaerConfig(ClipConfig):
    """``root``: the CAER folder (holds train/, validation/, test/); ``annotations``: split
    -> list file; ``face_boxes``: one box per clip; ``body_boxes``: optional, for
    ``crop_body``; ``label_base``: 0 for the CLIP-CAER lists; ``generate_demo``: create the
    generated demo set at ``root`` first (no download)."""

    root: str
    annotations: dict[str, str] = attrs.field(factory=_default_annotations)
    face_boxes: str | None = "caer_video_annotations/caer_video_faces.json"
    body_boxes: str | None = None
    label_base: int = attrs.field(default=0, validator=attrs.validators.in_((0, 1)))
    generate_demo: bool = False


class CaerSource(ListClipSource):
    """CAER clips listed in annotation files; one face box per clip."""

    name, dataset = "caer", "CAER"
    CLASSES = CLASSES


def build(cfg: CaerConfig, ctx: BuildContext) -> CaerSource:
    """CAER video clips (face + context streams) in the CLIP-CAER annotation-list layout."""
    if cfg.generate_demo:
        CAER_DEMO.ensure(cfg.root)
    return CaerSource.from_config(cfg, dataset_root(cfg.root, "CAER", OBTAIN))


def test_options(ctx: BuildContext) -> dict:
    root = CAER_DEMO.ensure(Path(ctx.work_dir) / "demo-caer-tiny", tiny=True)
    return {"root": str(root), "num_frames": 4}


@hookimpl
def clapkit_register(registrar):
    registrar.add("dataset", "caer", build, config=CaerConfig, test_options=test_options)
    CAER_DEMO.register(registrar, "CAER-layout video clips of drawn faces whose expression "
                       "is the class (read by the caer dataset)")
