"""Clips (or stills) listed in one annotation file per split, ``<path> [<frames>] <label>``.

The layout CAER, CAER-S and RAER share (as the CLIP-CAER scripts use them): a list file per
split, paths relative to the dataset root, labels 0- or 1-based (``label_base``), a face box
file and optionally a body box file. A dataset plugin subclasses :class:`ListClipSource`
with its class names and the two things that differ (whether lines carry a frame count,
whether an item's id keeps the file suffix) and builds it with :meth:`from_config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from .layout import clip_path, optional_file, read_list, split_files
from .sources import ClipConfig, ClipItem, ClipSource, check_split


class ListClipSource(ClipSource):
    """Items of annotation lists; ``CLASSES`` in label order, ``dataset`` for messages."""

    CLASSES: ClassVar[list[str]] = []
    dataset: ClassVar[str] = "dataset"
    #: lines are ``<path> <num_frames> <label>`` (videos, frame folders) or ``<path> <label>``
    with_frames: ClassVar[bool] = True
    #: item id = the listed path without its file suffix (else the path as listed)
    strip_suffix: ClassVar[bool] = True

    def __init__(self, cfg: Any, root: Path, lists: dict[str, Path], face: Path | None,
                 body: Path | None) -> None:
        super().__init__(self.CLASSES, cfg.crop_options(), face, body,
                         face_file_given=cfg.face_boxes is not None)
        self.root, self.lists, self.label_base = root, lists, int(cfg.label_base)

    @classmethod
    def from_config(cls, cfg: ClipConfig, root: Path) -> ListClipSource:
        """The source for ``cfg`` under the (existing) ``root``: its ``annotations`` (split
        -> list file), ``face_boxes`` and ``body_boxes`` resolved against ``root``."""
        return cls(cfg, root, split_files(root, cls.dataset, cfg.annotations),
                   optional_file(root, cfg.face_boxes), optional_file(root, cfg.body_boxes))

    def splits(self) -> list[str]:
        return list(self.lists)

    def scan(self, split: str) -> list[ClipItem]:
        check_split(self, split)
        entries = read_list(self.lists[split], with_frames=self.with_frames,
                            label_base=self.label_base, num_classes=len(self.classes))
        return [ClipItem(id=Path(e.path).with_suffix("").as_posix() if self.strip_suffix
                         else e.path, label=e.label, path=clip_path(self.root, e.path),
                         num_frames=e.num_frames if self.with_frames else 1, box_key=e.path)
                for e in entries]

    def describe(self) -> dict:
        return {**super().describe(), "label_base": self.label_base}
