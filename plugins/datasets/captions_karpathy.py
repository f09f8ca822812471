"""`coco_karpathy` and `flickr30k_karpathy` datasets: COCO captions and Flickr30k in
Karpathy's split files (Karpathy & Fei-Fei, 2015; the splits BLIP, ALBEF and CLIP report).

Layout::

    <root>/dataset_coco.json              (dataset_flickr30k.json for Flickr30k)
    <root>/<images>/<filepath>/<filename> (COCO: train2014/..., val2014/...)
    <root>/<images>/<filename>            (Flickr30k: images = "flickr30k-images")

The JSON holds ``{"images": [{"filepath", "filename", "imgid", "split", "sentences":
[{"raw": ...}, ...]}, ...]}``; ``split`` is one of ``train``, ``restval`` (COCO's extra
training images), ``val``, ``test``. The recipe's ``splits`` maps each clapkit split to the
Karpathy splits it takes (default ``train = ["train", "restval"]``, ``valid = ["val"]``,
``test = ["test"]``: the 113k / 5k / 5k COCO protocol). Every caption travels with its image
id (``imgid``). ``label_key`` names a per-image key holding a class name (the generated demo
writes ``label``); the class order is ``classes``, else the file's top-level ``classes``
list, else the sorted names. Obtain the files from Karpathy's ``caption_datasets.zip``
(https://cs.stanford.edu/people/karpathy/deepimagesent/) and the images from
https://cocodataset.org / the Flickr30k request form.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from clapkit import hookimpl
from clapkit.data.layout import dataset_root
from clapkit.errors import ClapkitError
from clapkit.interfaces import BuildContext

from ._caption_source import ITEM_LAYOUTS, CaptionRecord, CaptionSource, class_list
from .demo_captions import CAPTION_DEMO

KARPATHY_SPLITS = ("train", "restval", "val", "test")
OBTAIN = ("Karpathy's caption_datasets.zip (https://cs.stanford.edu/people/karpathy/"
          "deepimagesent/) plus the images")


def _default_splits() -> dict[str, list[str]]:
    return {"train": ["train", "restval"], "valid": ["val"], "test": ["test"]}


def _check_splits(inst: Any, attribute: attrs.Attribute, value: dict) -> None:
    for split, parts in value.items():
        if isinstance(parts, str) or not all(isinstance(p, str) for p in parts):
            raise ValueError(f"splits.{split} must be a list of Karpathy split names, "
                             f"got {parts!r}")
        bad = [p for p in parts if p not in KARPATHY_SPLITS]
        if bad:
            raise ValueError(f"splits.{split}: unknown Karpathy split {bad[0]!r}; allowed: "
                             f"{', '.join(KARPATHY_SPLITS)}")


@attrs.frozen
class CocoKarpathyConfig:
    """``root``: the folder of the split file; ``annotations``: the split file (relative to
    root); ``images``: the folder the ``filepath/filename`` of each entry are relative to
    ("" = root); ``splits``: clapkit split -> Karpathy splits; ``items``: "image" (one item
    per image with all its captions) or "caption" (one per caption); ``label_key``: per-image
    key holding a class name ("" = no classes); ``classes``: their order."""

    root: str
    annotations: str = "dataset_coco.json"
    images: str = ""
    splits: dict[str, list[str]] = attrs.field(factory=_default_splits,
                                               validator=_check_splits)
    items: str = attrs.field(default="image", validator=attrs.validators.in_(ITEM_LAYOUTS))
    label_key: str = ""
    classes: list[str] = attrs.field(factory=list)


@attrs.frozen
class Flickr30kKarpathyConfig(CocoKarpathyConfig):
    """As ``coco_karpathy``, with Flickr30k's file and image folder as defaults."""

    annotations: str = "dataset_flickr30k.json"
    images: str = "flickr30k-images"


def _need(entry: dict, key: str, where: str) -> Any:
    if key not in entry:
        raise ClapkitError(f"{where}: no key '{key}' (keys: {', '.join(sorted(entry))})")
    return entry[key]


def read_karpathy(file: Path, image_dir: Path, splits: dict[str, list[str]],
                  label_key: str = "", classes: list[str] | None = None
                  ) -> tuple[dict[str, list[CaptionRecord]], list[str]]:
    """Per clapkit split, the records of the Karpathy entries it takes, and the classes."""
    try:
        doc = json.loads(file.read_text())
    except OSError as exc:
        raise ClapkitError(f"cannot read {file}: {exc}") from None
    except ValueError as exc:
        raise ClapkitError(f"{file}: not valid JSON ({exc})") from None
    entries = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ClapkitError(f"{file}: expected an object with an 'images' list (Karpathy's "
                           "split file layout)")
    wanted = {k: s for s, parts in splits.items() for k in parts}
    rows: dict[str, list[tuple[Path, str, str, str, tuple[str, ...]]]] = {s: [] for s in splits}
    labels_found: list[str] = []
    for n, e in enumerate(entries):
        where = f"{file}: images[{n}]"
        if not isinstance(e, dict):
            raise ClapkitError(f"{where}: expected an object, got {type(e).__name__}")
        part = _need(e, "split", where)
        if part not in KARPATHY_SPLITS:
            raise ClapkitError(f"{where}: split {part!r}; allowed: {', '.join(KARPATHY_SPLITS)}")
        filename = _need(e, "filename", where)
        sentences = _need(e, "sentences", where)
        if not isinstance(sentences, list) or not sentences:
            raise ClapkitError(f"{where}: 'sentences' must be a non-empty list")
        caps = []
        for k, s in enumerate(sentences):
            raw = s.get("raw") if isinstance(s, dict) else None
            if not isinstance(raw, str) or not raw.strip():
                raise ClapkitError(f"{where}.sentences[{k}]: no caption text under 'raw'")
            caps.append(raw.strip())
        label = ""
        if label_key:
            label = str(_need(e, label_key, where))
            labels_found.append(label)
        if part not in wanted:
            continue
        rel = Path(e.get("filepath", "")) / filename
        image_id = str(e.get("imgid", rel.with_suffix("").as_posix()))
        rows[wanted[part]].append((image_dir / rel, rel.with_suffix("").as_posix(), image_id,
                                   label, tuple(caps)))
    names: list[str] = []
    if label_key:
        declared = list(classes or []) or [str(c) for c in doc.get("classes", [])]
        names = class_list(file, label_key, labels_found, declared)
    index = {c: i for i, c in enumerate(names)}
    records = {s: [CaptionRecord(p, iid, gid, index.get(lab, 0), caps)
                   for p, iid, gid, lab, caps in rs] for s, rs in rows.items()}
    return records, names


def _build(name: str, cfg: CocoKarpathyConfig) -> CaptionSource:
    root = dataset_root(cfg.root, name, OBTAIN)
    file = root / cfg.annotations
    if not file.is_file():
        raise ClapkitError(f"{name}: no split file {file} (set data.annotations; it comes "
                           f"from {OBTAIN})")
    records, classes = read_karpathy(file, root / cfg.images, cfg.splits, cfg.label_key,
                                     cfg.classes)
    if not any(records.values()):
        raise ClapkitError(f"{name}: {file} has no image in the Karpathy splits "
                           f"{sorted({p for ps in cfg.splits.values() for p in ps})}")
    return CaptionSource(name, file, records, classes, cfg.items,
                         {"images": cfg.images, "label_key": cfg.label_key,
                          "splits": cfg.splits})


def build_coco(cfg: CocoKarpathyConfig, ctx: BuildContext) -> CaptionSource:
    """COCO captions in Karpathy's split file (or the generated caption demo)."""
    return _build("coco_karpathy", cfg)


def build_flickr30k(cfg: Flickr30kKarpathyConfig, ctx: BuildContext) -> CaptionSource:
    """Flickr30k captions in Karpathy's split file."""
    return _build("flickr30k_karpathy", cfg)


def _demo_root(ctx: BuildContext) -> Path:
    return CAPTION_DEMO.ensure(Path(ctx.work_dir) / "demo-captions-tiny", tiny=True)


def coco_test_options(ctx: BuildContext) -> dict:
    return {"root": str(_demo_root(ctx)), "label_key": "label"}


def flickr_test_options(ctx: BuildContext) -> dict:
    """The tiny demo re-read as Flickr30k: same entries, images relative to ``images``."""
    return {"root": str(_demo_root(ctx)), "annotations": "dataset_coco.json", "images": "",
            "splits": {"train": ["train"], "test": ["test"]}}


@hookimpl
def clapkit_register(registrar):
    registrar.add("dataset", "coco_karpathy", build_coco, config=CocoKarpathyConfig,
                  test_options=coco_test_options)
    registrar.add("dataset", "flickr30k_karpathy", build_flickr30k,
                  config=Flickr30kKarpathyConfig, test_options=flickr_test_options)
    CAPTION_DEMO.register(registrar, "the 20-class shapes with colour/size/position varied "
                          "and 5 captions each, COCO Karpathy layout (read by coco_karpathy)")
