"""`caption_table` dataset: image path + caption rows in a CSV, TSV or JSONL file per split
(open_clip's ``--train-data`` tables; ``image_key`` / ``caption_key`` are its
``--csv-img-key`` / ``--csv-caption-key``, defaults ``filepath`` and ``title``).

Layout::

    <root>/train.tsv       filepath<TAB>title       (one row per caption; header first)
    <root>/val.tsv         ...
    <root>/<images>/<filepath>                      (relative paths; absolute ones as they are)

The format follows the file's suffix (``.csv`` comma, ``.tsv`` tab, ``.jsonl`` one JSON
object per line) unless ``separator`` says otherwise. Rows of the same image are captions of
one image: its id is the ``id_key`` column when given, else the image path. ``label_key``
names an optional class column.
"""

from __future__ import annotations

import csv
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

FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": "jsonl"}


def _default_splits() -> dict[str, str]:
    return {"train": "train.csv", "valid": "val.csv", "test": "test.csv"}


@attrs.frozen
class CaptionTableConfig:
    """``root``: folder of the tables; ``splits``: split -> table file (absent files are
    skipped); ``image_key``/``caption_key``: column names; ``id_key``: image id column ("" =
    the image path); ``label_key``: class column ("" = no classes); ``classes``: their order;
    ``images``: folder relative image paths start from ("" = root); ``separator``: "" (by
    suffix), or the CSV delimiter, or "jsonl"; ``items``: "image" or "caption"."""

    root: str
    splits: dict[str, str] = attrs.field(factory=_default_splits)
    image_key: str = "filepath"
    caption_key: str = "title"
    id_key: str = ""
    label_key: str = ""
    classes: list[str] = attrs.field(factory=list)
    images: str = ""
    separator: str = ""
    items: str = attrs.field(default="image", validator=attrs.validators.in_(ITEM_LAYOUTS))


def _rows(file: Path, separator: str) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` of a table; the header (CSV/TSV) is line 1."""
    sep = separator or FORMATS.get(file.suffix.lower())
    if sep is None:
        raise ClapkitError(f"{file}: cannot tell the format from the suffix "
                           f"'{file.suffix}'; use one of {', '.join(FORMATS)} or set "
                           "data.separator")
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ClapkitError(f"cannot read {file}: {exc}") from None
    if sep == "jsonl":
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ClapkitError(f"{file}:{n}: not a JSON object ({exc})") from None
            if not isinstance(row, dict):
                raise ClapkitError(f"{file}:{n}: expected a JSON object, got "
                                   f"{type(row).__name__}")
            out.append((n, row))
        return out
    reader = csv.DictReader(text.splitlines(), delimiter=sep)
    return [(n, row) for n, row in enumerate(reader, 2)]


def _field(file: Path, n: int, row: dict, key: str, option: str) -> str:
    value = row.get(key)
    if value is None:
        raise ClapkitError(f"{file}:{n}: no column '{key}' (columns: "
                           f"{', '.join(map(str, row))}); set data.{option}")
    value = str(value).strip()
    if not value:
        raise ClapkitError(f"{file}:{n}: empty '{key}'")
    return value


def read_table(file: Path, image_dir: Path, cfg: CaptionTableConfig
               ) -> list[tuple[Path, str, str, str, tuple[str, ...]]]:
    """``(path, item id, image id, label name, captions)`` per image, in first-row order."""
    by_image: dict[str, list[Any]] = {}
    for n, row in _rows(file, cfg.separator):
        img = _field(file, n, row, cfg.image_key, "image_key")
        cap = _field(file, n, row, cfg.caption_key, "caption_key")
        gid = _field(file, n, row, cfg.id_key, "id_key") if cfg.id_key else img
        label = _field(file, n, row, cfg.label_key, "label_key") if cfg.label_key else ""
        entry = by_image.setdefault(gid, [img, label, []])
        if entry[0] != img:
            raise ClapkitError(f"{file}:{n}: image id '{gid}' names two images "
                               f"('{entry[0]}' and '{img}')")
        if entry[1] != label:
            raise ClapkitError(f"{file}:{n}: image '{img}' has two labels "
                               f"('{entry[1]}' and '{label}')")
        entry[2].append(cap)
    if not by_image:
        raise ClapkitError(f"{file}: no rows")
    out = []
    for gid, (img, label, caps) in by_image.items():
        p = Path(img)
        path = p if p.is_absolute() else image_dir / p
        item_id = gid if cfg.id_key else p.with_suffix("").as_posix()
        out.append((path, item_id, gid, label, tuple(caps)))
    return out


def build(cfg: CaptionTableConfig, ctx: BuildContext) -> CaptionSource:
    """Image-caption tables (CSV/TSV/JSONL) with configurable column names."""
    root = dataset_root(cfg.root, "caption_table", "your own tables of image path + caption")
    files = {s: root / f for s, f in cfg.splits.items() if (root / f).is_file()}
    if not files:
        raise ClapkitError(f"caption_table: none of the tables "
                           f"{', '.join(cfg.splits.values())} exists under {root}")
    rows = {s: read_table(f, root / cfg.images, cfg) for s, f in files.items()}
    names: list[str] = []
    if cfg.label_key:
        found = [r[3] for rs in rows.values() for r in rs]
        names = class_list(next(iter(files.values())), cfg.label_key, found, cfg.classes)
    index = {c: i for i, c in enumerate(names)}
    records = {s: [CaptionRecord(p, iid, gid, index.get(lab, 0), caps)
                   for p, iid, gid, lab, caps in rs] for s, rs in rows.items()}
    return CaptionSource("caption_table", next(iter(files.values())), records, names,
                         cfg.items, {"image_key": cfg.image_key, "caption_key": cfg.caption_key,
                                     "id_key": cfg.id_key, "label_key": cfg.label_key,
                                     "images": cfg.images, "splits": cfg.splits})


def write_demo_tables(demo: Path, out: Path) -> Path:
    """The caption demo as ``train.tsv`` / ``test.tsv`` tables (one row per caption)."""
    doc = json.loads((demo / "dataset_coco.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train.tsv"), ("test", "test.tsv")):
        lines = ["filepath\ttitle\tlabel"]
        for e in doc["images"]:
            if e["split"] == split:
                path = (demo / e["filepath"] / e["filename"]).as_posix()
                lines += [f"{path}\t{s['raw']}\t{e['label']}" for s in e["sentences"]]
        (out / name).write_text("\n".join(lines) + "\n")
    return out


def test_options(ctx: BuildContext) -> dict:
    work = Path(ctx.work_dir)
    out = work / "caption-table-tiny"
    if not (out / "train.tsv").is_file():
        write_demo_tables(CAPTION_DEMO.ensure(work / "demo-captions-tiny", tiny=True), out)
    return {"root": str(out), "splits": {"train": "train.tsv", "test": "test.tsv"},
            "label_key": "label"}


@hookimpl
def clapkit_register(registrar):
    registrar.add("dataset", "caption_table", build, config=CaptionTableConfig,
                  test_options=test_options)
