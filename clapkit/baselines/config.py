"""The ``[probe]`` recipe section (kept apart from the probe itself so that loading a recipe
does not import the engine)."""

from __future__ import annotations

from typing import Literal

import attrs

from ..validators import number, size


@attrs.frozen
class ProbeConfig:
    """Options of ``clapkit probe`` (multinomial logistic regression on frozen features).

    The inverse L2 strength ``C`` (scikit-learn's convention: minimise ``sum_i CE_i +
    ||W||^2 / (2C)``, bias not penalised) is searched on a log grid of ``grid`` points over
    ``[c_min, c_max]``, then on ``grid`` points within one grid step of the best (the CLIP
    paper's log-spaced sweep, refined); the model is refitted on the whole train split with
    the chosen ``C``. ``valid``: where ``C`` is chosen -- ``split`` (the recipe's
    ``data.valid_split``), ``holdout`` (a stratified ``valid_fraction`` of the train split)
    or ``auto`` (holdout when the valid split is the test split, so the test split never
    selects anything). ``standardize``: per-channel z-scores with train statistics.
    """

    c_min: float = attrs.field(default=1e-6, validator=number(0, None, lo_open=True))
    c_max: float = attrs.field(default=1e6, validator=number(0, None, lo_open=True))
    # C values tried, each one L-BFGS fit
    grid: int = attrs.field(default=13, validator=size(1_000, lo=2))
    valid: Literal["auto", "split", "holdout"] = attrs.field(
        default="auto", validator=attrs.validators.in_(("auto", "split", "holdout")))
    valid_fraction: float = attrs.field(default=0.2, validator=number(0, 1, lo_open=True,
                                                                       hi_open=True))
    standardize: bool = True
    max_iter: int = attrs.field(default=500, validator=size(1_000_000))

    def __attrs_post_init__(self) -> None:
        if self.c_min >= self.c_max:
            raise ValueError(f"c_min ({self.c_min}) must be below c_max ({self.c_max})")
