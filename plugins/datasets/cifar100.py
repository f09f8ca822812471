"""`cifar100` dataset: CIFAR-100 in its python-pickle release (Krizhevsky, 2009).

Layout: ``<root>/cifar-100-python/{train,test,meta}`` (``root`` may also be that folder).
``train``/``test`` are pickled dicts with ``b'data'`` (N x 3072 uint8, R, G and B planes of a
32x32 image) and ``b'fine_labels'``; ``meta`` holds ``b'fine_label_names'``. The generated
incremental demo uses the same layout (``generate_demo = true``).

Pickles by nature: the python release *is* a set of pickle files, and unpickling can run code.
They are read with an unpickler that only resolves the few globals the real files need (numpy
array reconstruction); anything else -- a file that tries to call a function -- is refused.
Take the files from the official page or a source you trust all the same.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from PIL import Image

from clapkit import hookimpl
from clapkit.data.base import ItemRef
from clapkit.data.layout import dataset_root
from clapkit.data.sources import ImageSource, check_split
from clapkit.errors import ClapkitError
from clapkit.interfaces import BuildContext

from .demo_incremental import INCREMENTAL_DEMO

OBTAIN = "https://www.cs.toronto.edu/~kriz/cifar.html (the 'CIFAR-100 python version')"
FOLDER = "cifar-100-python"


@attrs.frozen
class Cifar100Config:
    """``root``: the folder holding ``cifar-100-python/``; ``generate_demo``: create the
    generated 20-class shape set there first (same layout, no download)."""

    root: str
    generate_demo: bool = False


def _get(d: dict, key: str) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise KeyError(key)


#: the only globals a CIFAR python pickle needs (numpy arrays); others are refused
_ALLOWED_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray",
                                                                "_reconstruct"),
                    ("numpy", "ndarray"), ("numpy", "dtype"),
                    ("_codecs", "encode")}   # bytes in a protocol-2 pickle written by Python 3


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name} (a CIFAR file holds "
                                         "only lists, bytes and numpy arrays)")
        return super().find_class(module, name)


def _load(file: Path) -> dict:
    try:
        with open(file, "rb") as fh:
            return _DataOnlyUnpickler(fh, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise ClapkitError(f"{file}: not a CIFAR python pickle ({exc})") from None


class Cifar100Source(ImageSource):
    """CIFAR-100 images (fine labels) from the pickled batches."""

    name = "cifar100"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            names = _get(_load(folder / "meta"), "fine_label_names")
        except KeyError:
            raise ClapkitError(f"{folder / 'meta'}: no 'fine_label_names'") from None
        self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        self._arrays: dict[str, tuple[np.ndarray, list[int]]] = {}

    def splits(self) -> list[str]:
        return [s for s in ("train", "test") if (self.folder / s).is_file()]

    def _split(self, split: str) -> tuple[np.ndarray, list[int]]:
        if split not in self._arrays:
            check_split(self, split)
            d = _load(self.folder / split)
            try:
                data, labels = _get(d, "data"), [int(v) for v in _get(d, "fine_labels")]
            except KeyError as exc:
                raise ClapkitError(f"{self.folder / split}: no {exc} entry") from None
            data = np.asarray(data, np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
                raise ClapkitError(f"{self.folder / split}: expected data of shape (N, 3072) "
                                   f"and N labels, got {data.shape} and {len(labels)}")
            bad = [v for v in labels if not 0 <= v < len(self.classes)]
            if bad:
                raise ClapkitError(f"{self.folder / split}: label {bad[0]} outside the "
                                   f"{len(self.classes)} classes of meta")
            self._arrays[split] = (data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)
        return self._arrays[split]

    def refs(self, split: str) -> list[ItemRef]:
        _, labels = self._split(split)
        path = str(self.folder / split)
        return [ItemRef(f"{split}/{i:05d}", y, path) for i, y in enumerate(labels)]

    def image(self, ref: ItemRef) -> Image.Image:
        split, i = ref.id.split("/")
        return Image.fromarray(self._split(split)[0][int(i)])

    def __getstate__(self) -> dict:  # workers reload the arrays instead of copying them
        return {**self.__dict__, "_arrays": {}}


def build(cfg: Cifar100Config, ctx: BuildContext) -> Cifar100Source:
    """CIFAR-100 (python pickle release) or the generated incremental demo in its layout."""
    if cfg.generate_demo:
        INCREMENTAL_DEMO.ensure(cfg.root)
    root = dataset_root(cfg.root, "CIFAR-100", OBTAIN)
    folder = root / FOLDER if (root / FOLDER).is_dir() else root
    if not (folder / "meta").is_file():
        raise ClapkitError(f"CIFAR-100: {root} holds neither {FOLDER}/meta nor meta; "
                           f"CIFAR-100 is obtained from {OBTAIN}")
    return Cifar100Source(folder)


def test_options(ctx: BuildContext) -> dict:
    return {"root": str(INCREMENTAL_DEMO.ensure(Path(ctx.work_dir) / "demo-inc-tiny",
                                                tiny=True))}


@hookimpl
def clapkit_register(registrar):
    registrar.add("dataset", "cifar100", build, config=Cifar100Config, test_options=test_options)
    INCREMENTAL_DEMO.register(registrar, "20 classes of textured shapes in the CIFAR-100 "
                              "pickle layout, for class-incremental runs (read by cifar100)")
