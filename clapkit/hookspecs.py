"""Hook specifications of the "clapkit" pluggy project.

Two families, as in pytest:

* **registration** -- ``clapkit_register`` adds components to the registries, and
  ``clapkit_add_commands`` adds CLI subcommands. Called once when the plugin is loaded.
* **events** -- fired by the engine during a run; loggers, plotters and user callbacks
  implement any subset. All implementations are called (no ``firstresult``): a run has many
  listeners and none of them may veto another.

A plugin is any module or object with functions marked ``@clapkit.hookimpl`` whose names are
the spec names below. A misspelled name is an error at load time (``check_pending``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import click

    from .registry import Registrar

PROJECT = "clapkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registration ------------------------------------------------------------------------

@hookspec
def clapkit_register(registrar: Registrar) -> None:
    """Add this plugin's components: ``registrar.add(kind, name, factory, config=Cfg)``.

    ``registrar`` records the providing distribution, so the same call from a built-in and a
    third-party package produces the same kind of entry.
    """


@hookspec
def clapkit_add_commands(cli: click.Group) -> None:
    """Add subcommands to the ``clapkit`` command line (``cli.add_command(cmd)``)."""


# --- events --------------------------------------------------------------------------------
# ``run`` is the engine's run state (``clapkit.engine`` ``RunState``): recipe, output folder,
# rank/world size, current task/stage/epoch indices. Metrics are plain ``dict[str, Any]`` with
# float values, confusion matrices as nested lists, so every listener can serialise them.

@hookspec
def clapkit_run_start(run: Any) -> None:
    """A run begins (after components are built, before the first task)."""


@hookspec
def clapkit_run_end(run: Any, summary: dict[str, Any]) -> None:
    """A run finished; ``summary`` holds final and best metrics, and incremental metrics."""


@hookspec
def clapkit_task_start(run: Any, task: int, classes: list[int]) -> None:
    """Task ``task`` (0-based) begins; ``classes`` are the global class ids it adds."""


@hookspec
def clapkit_task_end(run: Any, task: int, metrics: dict[str, Any]) -> None:
    """Task ``task`` ended; ``metrics`` holds evaluation on all classes seen so far."""


@hookspec
def clapkit_stage_start(run: Any, task: int, stage: str, trainable: list[str]) -> None:
    """A training stage begins; ``trainable`` lists the parameter names it optimises."""


@hookspec
def clapkit_stage_end(run: Any, task: int, stage: str) -> None:
    """A training stage ended."""


@hookspec
def clapkit_epoch_end(run: Any, task: int, stage: str, epoch: int,
                      metrics: dict[str, Any]) -> None:
    """An epoch ended; ``metrics`` holds train/valid WAR and UAR, best so far, loss terms,
    the valid confusion matrix and the learning rates."""


@hookspec
def clapkit_checkpoint_saved(run: Any, path: str) -> None:
    """A checkpoint was written (atomically) to ``path``."""


@hookspec
def clapkit_task_evaluate(run: Any, task: int, evaluation: Any) -> dict[str, Any] | None:
    """Extend the evaluation after task ``task`` (before ``clapkit_task_end``).

    ``evaluation`` is a :class:`clapkit.engine.task_eval.TaskEvaluation`: the seen classes,
    the splits, and ``evaluation.run(split, tasks, on_outputs)`` which passes the model's
    outputs on every eval batch of those tasks' items to ``on_outputs(batch, outputs)``.
    Return extra metrics (e.g. ``{"mine/score": 0.9}``); they join the task-end metrics. A
    key the built-in evaluation or another implementation already set is an error.
    """


@hookspec
def clapkit_epoch_evaluate(run: Any, task: int, epoch: int, evaluation: Any
                           ) -> dict[str, Any] | None:
    """Extend the evaluation of an evaluated epoch (every ``run.eval_every``-th, and a
    stage's last), before model selection: what it returns joins the epoch's metrics, so
    ``run.select`` may name it (e.g. ``{"valid/i2t_r1": 0.4}``). ``evaluation`` is the
    same :class:`clapkit.engine.task_eval.TaskEvaluation` as in ``clapkit_task_evaluate``;
    a key already set is an error.
    """


@hookspec
def clapkit_predict(predictions: Any) -> None:
    """Add to ``clapkit predict``'s rows what the plugin computes for new inputs (a
    generated caption, the best-matching captions of a split).

    ``predictions`` is a :class:`clapkit.predict.Predictions`: ``pipeline`` (eval mode),
    ``rows`` (one dict per input, in input order: add keys to them -- a string is printed as
    ``key: value``, a list of strings as ``key: a | b | c``), ``run(on_outputs)`` which
    passes the model's outputs on every batch of the inputs to ``on_outputs(batch,
    outputs)`` (``batch["index"]`` is the row), and ``split_texts(role)``: the captions of
    the run's ``"valid"`` or ``"test"`` split. A key a row already has is an error.
    """


EVENT_HOOKS: tuple[str, ...] = (
    "clapkit_run_start", "clapkit_run_end", "clapkit_task_start", "clapkit_task_end",
    "clapkit_stage_start", "clapkit_stage_end", "clapkit_epoch_end", "clapkit_checkpoint_saved",
)
