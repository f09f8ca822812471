"""`imagefolder` dataset: ``<root>/<split folder>/<class>/*.jpg|png`` (torchvision style).

Class names are the union of the class folders over all splits, sorted, so a class missing
from one split keeps its label in the others.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from clapkit import hookimpl
from clapkit.data.base import ItemRef
from clapkit.data.layout import dataset_root
from clapkit.data.sources import ImageSource, check_split
from clapkit.data.video import IMAGE_EXTENSIONS, natural_key
from clapkit.errors import ClapkitError
from clapkit.interfaces import BuildContext

from .demo_layouts import IMAGEFOLDER_DEMO, as_imagefolder


def _default_splits() -> dict[str, str]:
    return {"train": "train", "valid": "val", "test": "test"}


@attrs.frozen
class ImageFolderConfig:
    """``root``: the dataset folder; ``splits``: split -> sub-folder (absent ones are
    skipped); ``class_names``: optional display names per class folder (for prompts)."""

    root: str
    splits: dict[str, str] = attrs.field(factory=_default_splits)
    class_names: dict[str, str] = attrs.field(factory=dict)


class ImageFolderSource(ImageSource):
    """Images filed by class folder, one folder per split."""

    name = "imagefolder"

    def __init__(self, root: Path, dirs: dict[str, Path], folders: list[str],
                 names: dict[str, str]) -> None:
        self.root, self.dirs, self.folders = root, dirs, folders
        self.classes = [names.get(f, f.replace("_", " ")) for f in folders]
        self._refs: dict[str, list[ItemRef]] = {}

    def splits(self) -> list[str]:
        return list(self.dirs)

    def refs(self, split: str) -> list[ItemRef]:
        if split not in self._refs:
            check_split(self, split)
            out = []
            for label, folder in enumerate(self.folders):
                d = self.dirs[split] / folder
                if not d.is_dir():
                    continue
                for f in sorted(d.iterdir(), key=lambda p: natural_key(p.name)):
                    if f.suffix.lower() in IMAGE_EXTENSIONS:
                        rel = f.relative_to(self.root).with_suffix("").as_posix()
                        out.append(ItemRef(rel, label, str(f)))
            self._refs[split] = out
        return list(self._refs[split])


def build(cfg: ImageFolderConfig, ctx: BuildContext) -> ImageFolderSource:
    """Any ImageFolder-style tree (split / class / image files)."""
    root = dataset_root(cfg.root, "imagefolder", "your own files arranged as "
                        "<root>/<split>/<class>/<image>")
    dirs = {s: root / d for s, d in cfg.splits.items() if (root / d).is_dir()}
    if not dirs:
        raise ClapkitError(f"imagefolder: none of the split folders "
                           f"{', '.join(cfg.splits.values())} exists under {root}")
    folders = sorted({c.name for d in dirs.values() for c in d.iterdir() if c.is_dir()})
    if not folders:
        raise ClapkitError("imagefolder: no class folders under "
                           + ", ".join(map(str, dirs.values())))
    unknown = sorted(set(cfg.class_names) - set(folders))
    if unknown:
        raise ClapkitError(f"imagefolder: class_names names unknown folders {unknown} "
                           f"(folders: {', '.join(folders)})")
    return ImageFolderSource(root, dirs, folders, cfg.class_names)


def test_options(ctx: BuildContext) -> dict:
    return {"root": str(as_imagefolder(Path(ctx.work_dir)))}


@hookimpl
def clapkit_register(registrar):
    registrar.add("dataset", "imagefolder", build, config=ImageFolderConfig,
                  test_options=test_options)
    IMAGEFOLDER_DEMO.register(registrar, "the 20-class shapes as <split>/<class>/<n>.png "
                              "(read by imagefolder)")
