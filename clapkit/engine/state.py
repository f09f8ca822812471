"""The run state every event hook receives as ``run`` (see :mod:`clapkit.hookspecs`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch


@attrs.define
class RunState:
    """Where a run is and what it is made of; listeners read it, only the engine writes it.

    ``task``/``stage``/``epoch`` are 0-based indices of the current position (``stage_name``
    is the recipe's stage name). ``out_dir`` is the run's output folder (``None`` on ranks
    other than 0, which write nothing). ``class_names`` are in class order (the scenario's).
    """

    recipe: Any
    out_dir: Path | None
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    class_names: list[str] = attrs.field(factory=list)
    task_classes: list[list[int]] = attrs.field(factory=list)
    num_tasks: int = 1
    task: int = 0
    stage: int = 0
    stage_name: str = ""
    epoch: int = 0
    global_epoch: int = 0                 # epochs finished in the whole run (x axis of plots)
    select_split: str = "valid"
    summary: dict[str, Any] = attrs.field(factory=dict)
    #: the checkpoint position a resumed run continues from (None: a fresh run); loggers cut
    #: what they wrote after it (it is about to be done again)
    resumed_from: dict[str, Any] | None = None
    #: the pipeline being trained and the current stage's optimizer, for callbacks that
    #: inspect them (read-only by convention; ``None`` before they exist)
    model: Any = attrs.field(default=None, repr=False)
    optimizer: Any = attrs.field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0
