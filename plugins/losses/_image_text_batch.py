"""What the image-text losses (``itc``, ``itm``, ``caption_lm``) read from a batch, shared.

* **Captions**: items of a caption dataset carry ``texts`` (their captions) and ``group``
  (the image id); each step uses one caption per item -- in training a caption drawn per
  (epoch, item) (reproducible, the same on a resumed run), in evaluation the first. Items
  without captions (a classification set) use their class name in ``caption_template`` and
  their class as the image id, so the objectives also fine-tune on labels (CLIP-style).
* **Encodings**: the chosen captions are tokenised and run through the backbone's text tower
  *once per step* for all three losses (kept in the batch under :data:`MEMO`), with token
  states where the backbone declares ``text_tokens``; image tokens likewise (``patches``:
  the vision tower's token output from the batch's pixels; ``features``: the per-stream,
  per-frame pooled features the pipeline already has, one token each -- what the feature
  cache serves).
"""

from __future__ import annotations

import random
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch

from clapkit.errors import ClapkitError
from clapkit.interfaces import Backbone, TokenStates

from .itc import id_codes

#: batch key under which one step's shared encodings are kept
MEMO = "_image_text"
IMAGE_TOKEN_SOURCES = ("features", "patches")


#: per backbone, caption -> its token row: a caption set is tokenised once per run, not at
#: every step (open_clip's BPE tokenizer costs ~20 ms per batch of 32, as much as the step)
_TOKENS: "weakref.WeakKeyDictionary[Backbone, dict[str, torch.Tensor]]" = \
    weakref.WeakKeyDictionary()
MAX_CACHED_CAPTIONS = 500_000


def tokenize_cached(backbone: Backbone, captions: Sequence[str]) -> torch.Tensor:
    """``backbone.tokenize(captions)``, each distinct caption tokenised once."""
    cache = _TOKENS.setdefault(backbone, {})
    missing = list(dict.fromkeys(c for c in captions if c not in cache))
    if missing:
        if len(cache) + len(missing) > MAX_CACHED_CAPTIONS:
            cache.clear()
        cache.update(zip(missing, backbone.tokenize(missing)))
    return torch.stack([cache[c] for c in captions])


def memo(batch: dict[str, Any], key: str, compute: Callable[[], Any]) -> Any:
    """``compute()`` once per batch and ``key``; later losses of the step reuse it."""
    store = batch.setdefault(MEMO, {})
    if key not in store:
        store[key] = compute()
    return store[key]


def step_captions(batch: dict[str, Any], class_names: list[str], template: str,
                  training: bool) -> tuple[list[str], torch.Tensor]:
    """One caption per item and the image id codes ``[B]`` (see the module docstring)."""
    labels = batch["label"]
    texts, groups = batch.get("texts"), batch.get("group")
    if texts is None:
        if not class_names:
            raise ClapkitError("image-text loss: the batch has no captions ('texts') and "
                               "the dataset no class names to caption the images with")
        names = [class_names[int(y)] for y in labels]
        return [template.format(n) for n in names], labels.clone().long()
    epoch = int(batch.get("epoch", 0))
    index = batch.get("index", torch.arange(len(texts)))
    out = []
    for i, caps in enumerate(texts):
        if not caps:
            raise ClapkitError(f"image-text loss: item {batch.get('id', [i] * (i + 1))[i]!r} "
                               "has no caption")
        k = random.Random(f"{epoch}:{int(index[i])}").randrange(len(caps)) if training else 0
        out.append(caps[k])
    ids = id_codes(groups if groups is not None else [int(i) for i in index])
    return out, ids.to(labels.device)


def text_encoding(batch: dict[str, Any], backbone: Backbone, captions: list[str],
                  tokens_needed: bool) -> tuple[torch.Tensor, TokenStates | None]:
    """``(tokens [B,L], token states or None)`` of the step's captions; the pooled text
    features are ``states.pooled`` (or ``memo 'text_pooled'`` without token states)."""
    def encode() -> tuple[torch.Tensor, TokenStates | None]:
        tokens = tokenize_cached(backbone, captions)
        if "text_tokens" in getattr(backbone, "capabilities", ()):
            return tokens, backbone.encode_text_tokens(tokens)
        if tokens_needed:
            backbone.require("text_tokens", who="image-text loss (token states)")
        return tokens, None
    return memo(batch, "text", encode)


def pooled_text(batch: dict[str, Any], backbone: Backbone, captions: list[str]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens, pooled text features [B,D])`` of the step's captions."""
    tokens, states = text_encoding(batch, backbone, captions, False)
    if states is not None:
        return tokens, states.pooled
    return tokens, memo(batch, "text_pooled", lambda: backbone.encode_text(tokens))


def patch_tokens_need(backbone: Backbone, source: str) -> tuple[str, ...]:
    """``("image_tokens",)`` when a loss reads patch tokens the backbone can give from the
    pipeline's vision pass (so the tower runs once per step), else nothing."""
    ok = source == "patches" and "image_tokens" in getattr(backbone, "capabilities", ())
    return ("image_tokens",) if ok else ()


def image_tokens(batch: dict[str, Any], outputs: dict[str, Any], backbone: Backbone,
                 source: str) -> torch.Tensor:
    """``[B,N,W]`` image tokens the grounded text transformer attends to."""
    if source == "features":
        feats = outputs["features"]
        return torch.cat([feats[s] for s in sorted(feats)], 1)         # [B, S*T, D]
    if source != "patches":
        raise ClapkitError(f"image tokens {source!r}; allowed: {', '.join(IMAGE_TOKEN_SOURCES)}")
    streams = batch.get("streams")
    if not streams:
        raise ClapkitError("image_tokens = 'patches' needs the batch's pixels, but the step "
                           "reads cached features (the image encoder is frozen); use "
                           "image_tokens = 'features' or train the image tower")

    kept = outputs.get("image_tokens")
    if kept:                          # the pipeline's own pass (Pipeline.wants_image_tokens)
        return torch.cat([kept[s] for s in sorted(kept)], 1)

    def encode() -> torch.Tensor:
        parts = []
        for s in sorted(streams):
            x = streams[s]                                               # [B,T,3,H,W]
            out = backbone.encode_image_tokens(x.flatten(0, 1))
            parts.append(out.tokens.reshape(x.shape[0], -1, out.tokens.shape[-1]))
        return torch.cat(parts, 1)
    return memo(batch, "patches", encode)
