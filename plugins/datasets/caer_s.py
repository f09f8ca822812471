"""`caer_s` dataset: CAER-S still images (the static subset of CAER) in list layout.

Layout (as shared with the enhanced CLIP-CAER scripts)::

    <root>/train/Angry/1769.png ...
    CAER-S/annotations/train.txt            "train/Angry/1769.png 0" (0-based labels)
    CAER-S/annotations/validation.txt, test.txt
    CAER-S/annotations/caer_s_faces.json    {"train/Angry/1769.png": [x1, y1, x2, y2]}

A still is a one-frame clip: with ``two_stream = true`` (default) it yields ``face`` and
``context`` like the video sets, so the same pipeline serves both; ``two_stream = false``
gives a single ``image`` stream holding the face crop.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from clapkit import hookimpl
from clapkit.data.layout import dataset_root
from clapkit.data.list_source import ListClipSource
from clapkit.data.sources import ClipConfig
from clapkit.interfaces import BuildContext

from .demo_layouts import CAER_S_DEMO, as_caer_s

CLASSES = ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]
OBTAIN = ("https://caer-dataset.github.io (CAER-S, Lee et al., 'Context-Aware Emotion "
          "Recognition Networks', ICCV 2019)")


def _default_annotations() -> dict[str, str]:
    return {"train": "CAER-S/annotations/train.txt",
            "valid": "CAER-S/annotations/validation.txt",
            "test": "CAER-S/annotations/test.txt"}


@attrs.frozen(kw_only=True)
class CaerSConfig(ClipConfig):
    """``root``: the CAER-S folder (holds train/, test/); ``annotations``: split -> list of
    ``<image> <label>`` lines; ``face_boxes``: boxes keyed by the image's relative path."""

    root: str
    num_frames: int = attrs.field(default=1, validator=attrs.validators.in_((1,)))
    annotations: dict[str, str] = attrs.field(factory=_default_annotations)
    face_boxes: str | None = "CAER-S/annotations/caer_s_faces.json"
    body_boxes: str | None = None
    label_base: int = attrs.field(default=0, validator=attrs.validators.in_((0, 1)))
    two_stream: bool = True


class CaerSSource(ListClipSource):
    """CAER-S images: one-frame clips with a face box each."""

    name, dataset = "caer_s", "CAER-S"
    CLASSES = CLASSES
    with_frames = False

    def __init__(self, cfg: CaerSConfig, *args) -> None:
        super().__init__(cfg, *args)
        self.streams = ("face", "context") if cfg.two_stream else ("image",)


def build(cfg: CaerSConfig, ctx: BuildContext) -> CaerSSource:
    """CAER-S still images (face + context, or one face stream) from annotation lists."""
    return CaerSSource.from_config(cfg, dataset_root(cfg.root, "CAER-S", OBTAIN))


def test_options(ctx: BuildContext) -> dict:
    return {"root": str(as_caer_s(Path(ctx.work_dir)))}


@hookimpl
def clapkit_register(registrar):
    registrar.add("dataset", "caer_s", build, config=CaerSConfig, test_options=test_options)
    CAER_S_DEMO.register(registrar, "CAER-S-layout stills, the last frame of each generated "
                         "CAER clip (read by caer_s)")
