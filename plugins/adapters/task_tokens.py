"""`task_tokens` (place text): one learnable token per task (CLAP4CLIP's expandable task
tokens, seed 000 section 4).

How it composes with ``vga`` (no engine special case): this adapter returns the class text
unchanged and offers its tokens as ``TextAdapterOutput.queries`` (row t = task t). The
pipeline hands them on to the text adapters after it as ``step.queries``; ``vga`` appends
them to its queries, keeps each token inside its task's attention block and adds a token's
output to its task's classes. So the recipe lists ``task_tokens`` before ``vga``.

Growth (``on_task_start``): the token of a new task starts as N(0, std) truncated at
+-2 std (the first one as N(0, std)); the previous current token moves to ``old``. (The
reference calls ``trunc_normal_(std=.02)`` with its default bounds +-2 -- absolute, so
there it never truncates.) Parameter names say which
is which -- ``current`` and ``old.<t>`` -- so stages choose with globs
(``adapters.task_tokens.current`` while learning a task, ``adapters.task_tokens.*`` in the
class-balanced finetuning), with the engine's ordinary freezing.
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

from clapkit import hookimpl
from clapkit.interfaces import Adapter, BuildContext, StepContext, TextAdapterOutput


@attrs.frozen
class TaskTokensConfig:
    """``std``: of the initial token values (normal for task 0, truncated normal later)."""

    std: float = attrs.field(default=0.02, validator=attrs.validators.gt(0))


class TaskTokens(Adapter):
    """Per-task tokens ``[n_tasks, D]`` offered as extra VGA queries."""

    place = "text"

    def __init__(self, dim: int, std: float) -> None:
        super().__init__()
        self.dim, self.std = int(dim), float(std)
        self.old = nn.ParameterList()
        first = torch.empty(self.dim)
        nn.init.normal_(first, std=self.std)
        self.current = nn.Parameter(first)

    @property
    def num_tasks(self) -> int:
        return len(self.old) + 1

    def on_task_start(self, task: int, seen_classes: int) -> None:
        """Add tokens up to task ``task``; the previous current token becomes old."""
        while self.num_tasks < task + 1:
            prev = self.current
            self.old.append(nn.Parameter(prev.detach().clone(),
                                         requires_grad=False))
            new = torch.empty(self.dim, device=prev.device, dtype=prev.dtype)
            nn.init.trunc_normal_(new, std=self.std, a=-2 * self.std, b=2 * self.std)
            self.current = nn.Parameter(new)

    def tokens(self) -> torch.Tensor:
        """All tokens ``[n_tasks, D]`` (row t = task t)."""
        return torch.stack([*self.old, self.current])

    def forward(self, text: torch.Tensor, z: torch.Tensor,
                step: StepContext | None = None) -> TextAdapterOutput:
        if text.dim() == 2:
            text = text.expand(z.shape[0], *text.shape)
        return TextAdapterOutput(text=text, queries=self.tokens())


def build(cfg: TaskTokensConfig, ctx: BuildContext) -> TaskTokens:
    """CLAP4CLIP expandable task tokens (extra VGA queries, one per task)."""
    return TaskTokens(ctx.embed_dim, cfg.std)


@hookimpl
def clapkit_register(registrar):
    registrar.add("adapter", "task_tokens", build, config=TaskTokensConfig, place="text")
