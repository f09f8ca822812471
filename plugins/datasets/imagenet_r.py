"""`imagenet_r` dataset: ImageNet-R (Hendrycks et al., 2021), 200 classes, with the
train/test split lists CLAP4CLIP publishes.

Layout: ``<root>/imagenet-r/<wnid>/<style>_<n>.jpg`` (``root`` may be that folder), plus
``imagenet_split/imagenetr_train.txt`` / ``imagenetr_test.txt`` (from the CLAP4CLIP repository)
with lines ``train/<wnid>/<file>.jpg <label>``. The leading ``train/``/``test/`` is where
CLAP4CLIP's preparation step moves the files; both that layout and the untouched release
are read. Without split lists the split is a seeded, per-class ``train_fraction`` cut.
Class names come from the release's ``README.txt`` (``<wnid> <name>`` lines), else the wnids.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import attrs

from clapkit import hookimpl
from clapkit.data.base import ItemRef
from clapkit.data.layout import dataset_root, find_file, read_list
from clapkit.data.sources import ImageSource, check_split
from clapkit.data.video import IMAGE_EXTENSIONS, natural_key
from clapkit.errors import ClapkitError
from clapkit.interfaces import BuildContext

from .demo_layouts import IMAGENET_R_DEMO, as_imagenet_r

OBTAIN = ("https://github.com/hendrycks/imagenet-r (Hendrycks et al., 'The Many Faces of "
          "Robustness', ICCV 2021); split lists: https://github.com/srvCodes/clap4clip "
          "(imagenet_split/)")
FOLDER = "imagenet-r"
_WNID = re.compile(r"^(n\d{8})\s+(.+)$")


def _default_split_files() -> dict[str, str]:
    return {"train": "imagenet_split/imagenetr_train.txt",
            "test": "imagenet_split/imagenetr_test.txt"}


@attrs.frozen
class ImagenetRConfig:
    """``root``: the folder holding ``imagenet-r/``; ``split_files``: split -> list file
    (resolved against root, then the working directory); ``train_fraction``/``split_seed``:
    the fallback split when no list exists; ``class_names_file``: ``<wnid> <name>`` lines."""

    root: str
    split_files: dict[str, str] = attrs.field(factory=_default_split_files)
    train_fraction: float = attrs.field(default=0.8, validator=[attrs.validators.gt(0.0),
                                                                attrs.validators.lt(1.0)])
    split_seed: int = 0
    class_names_file: str = "imagenet-r/README.txt"


class ImagenetRSource(ImageSource):
    """ImageNet-R images, split by list files or a seeded per-class cut."""

    name = "imagenet_r"

    def __init__(self, base: Path, wnids: list[str], names: dict[str, str],
                 items: dict[str, list[ItemRef]]) -> None:
        self.base, self.wnids, self._items = base, wnids, items
        self.classes = [names.get(w, w) for w in wnids]

    def splits(self) -> list[str]:
        return list(self._items)

    def refs(self, split: str) -> list[ItemRef]:
        check_split(self, split)
        return list(self._items[split])


def _image_path(base: Path, rel: str) -> Path:
    p = base / rel
    parts = Path(rel).parts
    if not p.exists() and len(parts) > 2 and parts[0] in ("train", "test", "val"):
        return base.joinpath(*parts[1:])
    return p


def _from_lists(base: Path, lists: dict[str, Path]) -> tuple[list[str], dict[str, list[ItemRef]]]:
    entries = {s: read_list(f, with_frames=False, label_base=0, num_classes=10**6)
               for s, f in lists.items()}
    wnid_of: dict[int, str] = {}
    for s, es in entries.items():
        for e in es:
            w = Path(e.path).parent.name
            if wnid_of.setdefault(e.label, w) != w:
                raise ClapkitError(f"{lists[s]}:{e.line}: label {e.label} is used for both "
                                   f"{wnid_of[e.label]} and {w}")
    n = max(wnid_of) + 1
    if sorted(wnid_of) != list(range(n)):
        raise ClapkitError(f"{', '.join(map(str, lists.values()))}: labels must cover 0..{n - 1}")
    items = {s: [ItemRef(Path(e.path).with_suffix("").as_posix(), e.label,
                         str(_image_path(base, e.path))) for e in es]
             for s, es in entries.items()}
    return [wnid_of[i] for i in range(n)], items


def _seeded_split(base: Path, frac: float, seed: int) -> tuple[list[str], dict[str, list[ItemRef]]]:
    wnids = sorted(d.name for d in base.iterdir() if d.is_dir())
    if not wnids:
        raise ClapkitError(f"imagenet_r: no class folders under {base}")
    items: dict[str, list[ItemRef]] = {"train": [], "test": []}
    for label, w in enumerate(wnids):
        files = sorted((f for f in (base / w).iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS),
                       key=lambda p: natural_key(p.name))
        random.Random(f"{seed}-{w}").shuffle(files)
        cut = int(round(frac * len(files)))
        for split, part in (("train", files[:cut]), ("test", files[cut:])):
            items[split] += [ItemRef(f"{w}/{f.stem}", label, str(f)) for f in part]
    return wnids, items


def build(cfg: ImagenetRConfig, ctx: BuildContext) -> ImagenetRSource:
    """ImageNet-R with the CLAP4CLIP split lists (or a seeded 80/20 per-class split)."""
    root = dataset_root(cfg.root, "ImageNet-R", OBTAIN)
    base = root / FOLDER if (root / FOLDER).is_dir() else root
    lists = {s: p for s, f in cfg.split_files.items() if (p := find_file(root, f, [base]))}
    wnids, items = (_from_lists(base, lists) if lists
                    else _seeded_split(base, cfg.train_fraction, cfg.split_seed))
    names: dict[str, str] = {}
    names_file = find_file(root, cfg.class_names_file, [base])
    if names_file is not None:
        for line in names_file.read_text(errors="replace").splitlines():
            if m := _WNID.match(line.strip()):
                names[m.group(1)] = m.group(2).split(",")[0].strip()
    return ImagenetRSource(base, wnids, names, items)


def test_options(ctx: BuildContext) -> dict:
    return {"root": str(as_imagenet_r(Path(ctx.work_dir)))}


@hookimpl
def clapkit_register(registrar):
    registrar.add("dataset", "imagenet_r", build, config=ImagenetRConfig,
                  test_options=test_options)
    IMAGENET_R_DEMO.register(registrar, "the 20-class shapes in the ImageNet-R layout with split "
                             "lists (read by imagenet_r)")
