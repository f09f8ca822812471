"""TSN-style frame sampling (Wang et al., Temporal Segment Networks).

The clip is cut into ``num_segments`` equal segments; training draws one random frame per
segment (from the caller's ``rng``, so a seeded epoch is reproducible), evaluation takes each
segment's centre. Clips shorter than ``num_segments`` repeat their last frame (edge padding),
as the CLIP-CAER loaders do. Unlike the seed's integer ``num_frames // k`` segments, the
segment edges here are fractional, so the tail of a clip is never ignored.
"""

from __future__ import annotations

import random


def segment_indices(num_frames: int, num_segments: int, train: bool,
                    rng: random.Random | None = None) -> list[int]:
    """Frame indices, one per segment, sorted; ``num_segments`` of them."""
    if num_frames <= 0:
        raise ValueError(f"a clip needs at least one frame, got num_frames={num_frames}")
    if num_segments <= 0:
        raise ValueError(f"num_segments must be positive, got {num_segments}")
    if num_frames < num_segments:
        return list(range(num_frames)) + [num_frames - 1] * (num_segments - num_frames)
    tick = num_frames / num_segments
    if not train:
        return [min(num_frames - 1, int(tick * i + tick / 2)) for i in range(num_segments)]
    rng = rng or random.Random(0)
    out = []
    for i in range(num_segments):
        lo = int(round(tick * i))
        hi = max(lo + 1, int(round(tick * (i + 1))))
        out.append(min(num_frames - 1, rng.randrange(lo, hi)))
    return out


def segment_bounds(num_frames: int, num_segments: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` of each segment (for tests and diagnostics)."""
    tick = num_frames / num_segments
    return [(int(round(tick * i)), max(int(round(tick * i)) + 1, int(round(tick * (i + 1)))))
            for i in range(num_segments)]
