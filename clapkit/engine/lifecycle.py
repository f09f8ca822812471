"""The components' task lifecycle as the trainer drives it (DESIGN.md section 4).

Per task: ``on_task_start(task, seen_classes)`` on every component before the task's first
stage (growth happens only there), then the stages and the memory update, then
``on_task_end(task, TaskView)`` with the task's training items encoded in eval mode, then the
task-end evaluation (so it sees what ``on_task_end`` learnt).
A resumed run replays ``on_task_start(0..t)`` before it loads the checkpoint.
"""

from __future__ import annotations

from typing import Any

from ..interfaces import TaskView
from .loop import Collected, evaluate


def task_items(tr: Any, task: int, memory: list[int]) -> list[int]:
    """The task's training items: its new classes' items plus the replay memory it
    trained with."""
    new = tr.data.items(tr.data.train_split, tr.scenario, [task])
    return sorted(set(new) | set(memory))


def encode_items(tr: Any, task: int, items: list[int], what: str) -> Collected:
    """Every item's outputs (eval mode; cached features when the encoder is frozen), on
    every rank (no sharding), so all ranks see the same view."""
    loader = tr.data.eval_loader(tr.data.train_split, items,
                                 cached=tr.use_cache_for_eval(), shard=False)
    _, collected = evaluate(tr.pipeline, loader, tr.step_cfg(task, what), tr.info,
                            collect=True)
    assert collected is not None
    return collected


def task_view(tr: Any, task: int, collected: Collected) -> TaskView:
    return TaskView(task=task, classes=tr.scenario.classes_of(task), labels=collected.label,
                    z=collected.z, image=dict(collected.raw), index=collected.index)


def start_task(tr: Any, task: int) -> None:
    """``on_task_start`` on every component, then new state onto the run's device."""
    seen = tr.scenario.seen(task)
    tr.pipeline.on_task_start(task, seen)
    tr.pipeline.to(tr.device)


def end_task(tr: Any, task: int, collected: Collected | None, memory_before: list[int]
             ) -> None:
    """``on_task_end`` with the task's view (``collected``: the items already encoded by
    the current model, else they are encoded now).

    After the last task, when no component implements ``on_task_end``, nothing reads that
    pass and it is skipped (a pre-training run's 8,000 images). Before a later task it
    stays: its data loaders draw from the run's random stream, which the next task's
    augmentations continue, so skipping it would change every later figure of a recipe."""
    last = task == tr.scenario.num_tasks - 1
    if collected is None and last and not tr.pipeline.reads_task_view():
        return
    if collected is None:
        collected = encode_items(tr, task, task_items(tr, task, memory_before), "task view")
    tr.pipeline.on_task_end(task, task_view(tr, task, collected))
