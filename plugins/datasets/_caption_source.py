"""What the caption dataset plugins share: records of (image, image id, class, captions) per
split turned into items that carry their captions.

Two item layouts (``items`` option):

* ``"image"`` (default): one item per image, ``texts`` = all its captions, ``group`` = its
  image id -- for retrieval evaluation and for objectives that pick a caption per step;
* ``"caption"``: one item per caption (id ``<image item id>#<k>``), ``texts`` = that caption,
  ``group`` = the image id, so every caption row knows which image it describes (ITC/ITM
  positives are "same image", not "same row"); the feature cache then stores an image once
  per caption.

Caption sets have no classes unless the file names one per image (``label_key``): without
it every item has label 0 of a single class :data:`UNLABELLED`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from clapkit.data.base import ItemRef
from clapkit.data.sources import ImageSource, check_split
from clapkit.errors import ClapkitError

#: the one class of a caption set without labels
UNLABELLED = "image"
ITEM_LAYOUTS = ("image", "caption")


@attrs.frozen
class CaptionRecord:
    """One image and its captions as a caption file lists it."""

    path: Path
    item_id: str          # stable, unique within the split (relative path without suffix)
    image_id: str         # what its captions describe (Karpathy ``imgid``, a table's id)
    label: int
    captions: tuple[str, ...]


def class_list(file: Path, key: str, found: Sequence[str], declared: Sequence[str]
               ) -> list[str]:
    """The class order: ``declared`` (recipe ``classes`` or the file's own list) when given
    -- every label found must be in it -- else the sorted labels found."""
    if not declared:
        return sorted(set(found))
    unknown = sorted(set(found) - set(declared))
    if unknown:
        raise ClapkitError(f"{file}: {key} value(s) {unknown[:5]} not among the classes "
                           f"{list(declared)[:10]}{' ...' if len(declared) > 10 else ''}")
    return list(declared)


class CaptionSource(ImageSource):
    """Still images with captions, from per-split :class:`CaptionRecord` lists."""

    def __init__(self, name: str, file: Path, records: dict[str, list[CaptionRecord]],
                 classes: list[str], items: str, options: dict[str, Any]) -> None:
        if items not in ITEM_LAYOUTS:
            raise ClapkitError(f"{name}: items = {items!r}; allowed: "
                               f"{', '.join(ITEM_LAYOUTS)}")
        self.name, self.file, self.items = name, file, items
        self.records = {s: r for s, r in records.items() if r}
        self.classes = list(classes) or [UNLABELLED]
        self.options = options
        self._refs: dict[str, list[ItemRef]] = {}

    def splits(self) -> list[str]:
        return list(self.records)

    def refs(self, split: str) -> list[ItemRef]:
        if split not in self._refs:
            check_split(self, split)
            out = []
            for rec in self.records[split]:
                if self.items == "image":
                    out.append(ItemRef(rec.item_id, rec.label, str(rec.path),
                                       texts=rec.captions, group=rec.image_id))
                else:
                    out.extend(ItemRef(f"{rec.item_id}#{k}", rec.label, str(rec.path),
                                       texts=(c,), group=rec.image_id)
                               for k, c in enumerate(rec.captions))
            self._refs[split] = out
        return list(self._refs[split])

    def captions(self, split: str) -> dict[str, list[str]]:
        """image id -> every caption of it in ``split`` (references for captioning metrics
        and the positives of retrieval)."""
        check_split(self, split)
        out: dict[str, list[str]] = {}
        for rec in self.records[split]:
            out.setdefault(rec.image_id, []).extend(rec.captions)
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "file": str(self.file), "items": self.items,
                **self.options}
