"""`daisee` dataset: DAiSEE engagement videos (Gupta et al., 2016) in the published layout.

Layout (``root`` = the DAiSEE folder)::

    DataSet/Train/110001/1100011002/1100011002.avi      (or that folder holding frames)
    DataSet/Validation/..., DataSet/Test/...
    Labels/TrainLabels.csv, ValidationLabels.csv, TestLabels.csv
        ClipID,Boredom,Engagement,Confusion,Frustration      (levels 0-3; ClipID has .avi/.mp4)

``target`` picks the column; the classes are its four levels. DAiSEE ships no face boxes:
without ``face_boxes`` every clip uses the centre crop (reported), as the seed's fix did; a box
file made by ``clapkit data detect-faces`` may be keyed by clip id. Clips listed in the CSV
but absent from ``DataSet/`` (the release has a few) are skipped with a warning.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Literal

import attrs

from clapkit import hookimpl
from clapkit.data.layout import dataset_root, optional_file, split_files
from clapkit.data.sources import ClipConfig, ClipItem, ClipSource, check_split
from clapkit.data.video import VIDEO_EXTENSIONS, list_frames
from clapkit.errors import ClapkitError
from clapkit.interfaces import BuildContext

from .demo_layouts import DAISEE_DEMO, as_daisee

log = logging.getLogger("clapkit.data")

LEVELS = ["very low", "low", "high", "very high"]
TARGETS = ("Boredom", "Engagement", "Confusion", "Frustration")
OBTAIN = ("https://people.iith.ac.in/vineethnb/resources/daisee/ (Gupta et al., 'DAiSEE: "
          "Towards User Engagement Recognition in the Wild', 2016)")


def _default_labels() -> dict[str, str]:
    return {"train": "Labels/TrainLabels.csv", "valid": "Labels/ValidationLabels.csv",
            "test": "Labels/TestLabels.csv"}


def _default_split_dirs() -> dict[str, str]:
    return {"train": "Train", "valid": "Validation", "test": "Test"}


@attrs.frozen(kw_only=True)
class DaiseeConfig(ClipConfig):
    """``root``: the DAiSEE folder; ``target``: the label column; ``labels``: split -> CSV;
    ``split_dirs``: split -> folder under ``DataSet/``; ``face_boxes``: optional box file."""

    root: str
    target: Literal["Boredom", "Engagement", "Confusion", "Frustration"] = "Engagement"
    labels: dict[str, str] = attrs.field(factory=_default_labels)
    split_dirs: dict[str, str] = attrs.field(factory=_default_split_dirs)
    data_dir: str = "DataSet"
    face_boxes: str | None = None


def read_labels(file: Path, target: str) -> list[tuple[str, int, int]]:
    """``(clip file name, level, line)`` rows of a DAiSEE label CSV."""
    with open(file, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ClapkitError(f"{file}: empty label file")
    header = [h.strip() for h in rows[0]]
    if "ClipID" not in header or target not in header:
        raise ClapkitError(f"{file}:1: expected columns ClipID and {target}, found "
                           f"{', '.join(header)}")
    ci, ti = header.index("ClipID"), header.index(target)
    out = []
    for lineno, row in enumerate(rows[1:], 2):
        if not any(c.strip() for c in row):
            continue
        try:
            clip, level = row[ci].strip(), int(row[ti])
            if not clip or not 0 <= level <= 3:
                raise ValueError
        except (ValueError, IndexError):
            raise ClapkitError(f"{file}:{lineno}: malformed row {','.join(row)!r}; expected "
                               f"a ClipID and a {target} level 0-3") from None
        out.append((clip, level, lineno))
    return out


class DaiseeSource(ClipSource):
    """DAiSEE clips: videos or frame folders, four levels of one affective state."""

    name = "daisee"

    def __init__(self, cfg: DaiseeConfig, root: Path, csvs: dict[str, Path]) -> None:
        super().__init__([f"{lvl} {cfg.target.lower()}" for lvl in LEVELS], cfg.crop_options(),
                         optional_file(root, cfg.face_boxes), None,
                         face_file_given=cfg.face_boxes is not None)
        self.root, self.csvs, self.cfg = root, csvs, cfg

    def splits(self) -> list[str]:
        return list(self.csvs)

    def scan(self, split: str) -> list[ClipItem]:
        check_split(self, split)
        sdir = self.cfg.split_dirs.get(split, split)
        base = self.root / self.cfg.data_dir / sdir
        items, missing = [], []
        for clip, level, _ in read_labels(self.csvs[split], self.cfg.target):
            stem = Path(clip).stem
            path = self._locate(base / stem[:6], stem)
            if path is None:
                missing.append(clip)
                continue
            rel = path.relative_to(self.root).as_posix()
            items.append(ClipItem(id=f"{sdir}/{stem}", label=level, path=path, box_key=rel))
        if missing:
            log.warning("daisee split '%s': %d clips listed in %s are not under %s and are "
                        "skipped (first: %s)", split, len(missing), self.csvs[split], base,
                        ", ".join(missing[:3]))
        return items

    @staticmethod
    def _locate(user_dir: Path, stem: str) -> Path | None:
        folder = user_dir / stem
        if folder.is_dir():
            for ext in VIDEO_EXTENSIONS:
                for cand in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
                    if cand.is_file():
                        return cand
            if list_frames(folder):
                return folder
        for ext in VIDEO_EXTENSIONS:
            if (user_dir / f"{stem}{ext}").is_file():
                return user_dir / f"{stem}{ext}"
        return None

    def describe(self) -> dict:
        return {**super().describe(), "target": self.cfg.target}


def build(cfg: DaiseeConfig, ctx: BuildContext) -> DaiseeSource:
    """DAiSEE engagement clips (four levels of the chosen affective state)."""
    root = dataset_root(cfg.root, "DAiSEE", OBTAIN)
    return DaiseeSource(cfg, root, split_files(root, "DAiSEE", cfg.labels))


def test_options(ctx: BuildContext) -> dict:
    return {"root": str(as_daisee(Path(ctx.work_dir))), "num_frames": 4}


@hookimpl
def clapkit_register(registrar):
    registrar.add("dataset", "daisee", build, config=DaiseeConfig, test_options=test_options)
    DAISEE_DEMO.register(registrar, "DAiSEE-layout clips with four engagement levels, from the "
                         "generated CAER clips (read by daisee)")
