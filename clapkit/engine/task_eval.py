"""The evaluation after each task (DESIGN.md section 4), which plugins extend.

Built in: on the report split (the valid split, or the test split when ``data.valid_fraction``
holds a selection split out of the train split), the accuracy-matrix row (per-task accuracy
of the seen classes), accuracy on all seen classes, task-aware accuracy and ECE; the valid
split's WAR/UAR; the test split's
WAR/UAR when there is one; and novel-class detection -- ID = the seen tasks' items, OOD = the
future tasks' items of the test split (valid when there is none), classified against the seen
classes -- scored by energy, max softmax, MC variance and entropy with AUROC/AUPR/FPR95.

Metric keys (task-end ``metrics``): ``acc_seen``, ``valid/war``, ``valid/uar``,
``valid/confusion``, ``acc_task/<j>``, ``task_aware_acc``, ``ece``, ``test/war``,
``test/uar``, ``test/confusion``, ``ood/<score>/<auroc|aupr|fpr95>`` (not after the last
task), ``ood/split``, ``memory_size``. Then every ``clapkit_task_evaluate`` hook adds its own,
and ``plugin_metrics`` lists their names (``summary.json`` copies those of the last task).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from ..errors import ClapkitError
from ..metrics import CalibrationMeter, ClassificationMeter, TaskAwareMeter, task_accuracy
from ..ood import NoveltyMeter, flat_ood_metrics, parse_ood_metrics
from .distributed import all_reduce_sum
from .loop import evaluate


@attrs.define
class TaskEvaluation:
    """What a ``clapkit_task_evaluate`` hook may use after task ``task``."""

    task: int
    seen_classes: int | None              # None: plain training (every class)
    num_tasks: int
    task_of_class: list[int]
    splits: dict[str, str]                # {"valid": name, "test": name (when set)}
    pipeline: Any
    _tr: Any = attrs.field(repr=False)

    def items(self, split: str, tasks: Sequence[int]) -> list[int]:
        """Indices of ``split``'s items whose class belongs to ``tasks``."""
        return self._tr.data.items(split, self._tr.scenario, list(tasks))

    def run(self, split: str, tasks: Sequence[int],
            on_outputs: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
            shard: bool = True) -> ClassificationMeter:
        """Evaluate the model on ``tasks``' items of ``split`` (logits restricted to the
        seen classes); ``on_outputs(batch, outputs)`` sees every batch. ``shard=False``
        makes every rank see every item (for metrics that do not sum over ranks)."""
        tr = self._tr
        loader = tr.data.eval_loader(split, self.items(split, tasks),
                                     cached=tr.use_cache_for_eval(), shard=shard)
        meter, _ = evaluate(self.pipeline, loader, tr.step_cfg(self.task, f"eval {split}"),
                            tr.info, on_outputs=on_outputs)
        return meter


def task_evaluation(tr: Any, task: int) -> TaskEvaluation:
    """What an evaluation hook sees of the run at ``task``."""
    sc = tr.scenario
    return TaskEvaluation(task=task, seen_classes=tr.seen(task), num_tasks=sc.num_tasks,
                          task_of_class=list(sc.task_of_class),
                          splits={"valid": tr.data.valid_split,
                                  **({"test": tr.data.test_split} if tr.data.test_split
                                     else {})},
                          pipeline=tr.pipeline, tr=tr)


def evaluate_task(tr: Any, task: int) -> dict[str, Any]:
    """The task-end metrics (see the module docstring); records the accuracy-matrix row."""
    sc = tr.scenario
    ev = task_evaluation(tr, task)
    if tr.pipeline.head is None:     # no classifier: the plugins' evaluations only
        return plugin_metrics(tr, task, ev, {})
    seen_tasks = list(range(task + 1))
    aware = TaskAwareMeter(sc.task_of_class, tr.device)
    calib = CalibrationMeter(device=tr.device)

    def row(batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        logits = outputs["logits"].float()
        seen = ev.seen_classes or logits.shape[1]
        aware.update(logits[:, :seen], batch["label"])
        calib.update(logits[:, :seen], batch["label"])

    report = tr.data.report_split
    rep = ev.run(report, seen_tasks, row).compute()
    all_reduce_sum(aware.counts, tr.info)
    all_reduce_sum(calib.bins, tr.info)
    conf = torch.as_tensor(rep["confusion"])
    per_task = task_accuracy(conf, sc.task_of_class, sc.num_tasks)[: task + 1].tolist()
    va = rep if report == tr.data.valid_split else \
        ev.run(tr.data.valid_split, seen_tasks).compute()
    metrics: dict[str, Any] = {"acc_seen": rep["war"], "valid/war": va["war"],
                               "valid/uar": va["uar"], "valid/confusion": va["confusion"],
                               "task_aware_acc": aware.accuracy(), "ece": calib.compute(),
                               "select_split": tr.data.valid_split, "report_split": report}
    metrics.update({f"acc_task/{j}": a for j, a in enumerate(per_task)})
    if tr.data.test_split:
        te = rep if report == tr.data.test_split else \
            ev.run(tr.data.test_split, seen_tasks).compute()
        metrics.update({"test/war": te["war"], "test/uar": te["uar"],
                        "test/confusion": te["confusion"]})
    if task < sc.num_tasks - 1:
        metrics.update(novelty_detection(ev))
    tr.acc.update(task, per_task, rep["war"], task_aware=aware.accuracy(), ece=calib.compute(),
                  ood=parse_ood_metrics(metrics))
    return plugin_metrics(tr, task, ev, metrics)


def plugin_metrics(tr: Any, task: int, ev: TaskEvaluation, metrics: dict[str, Any],
                   hook: Any = None, **extra_args: Any) -> dict[str, Any]:
    """``metrics`` plus what every implementation of ``hook`` (``clapkit_task_evaluate``
    by default) returns: retrieval, captioning, ... arrive here, beside accuracy; a name set
    twice is an error."""
    task_end = hook is None
    hook = hook or tr.host.hook.clapkit_task_evaluate
    added: list[str] = []
    for extra in hook(run=tr.state, task=task, evaluation=ev, **extra_args):
        for k, v in (extra or {}).items():
            if k in metrics or k == PLUGIN_METRICS:
                raise ClapkitError(f"a {hook.name} hook returned metric '{k}', "
                                   "which is already set; choose another name")
            metrics[k] = v
            added.append(k)
    if added and task_end:
        metrics[PLUGIN_METRICS] = sorted(added)
    return metrics


#: the metrics key listing the names the evaluation hooks added (summary.json copies them)
PLUGIN_METRICS = "plugin_metrics"


def novelty_detection(ev: TaskEvaluation) -> dict[str, Any]:
    """``ood/<score>/<metric>``: seen tasks' items (ID) against future tasks' items (OOD)
    of the test split (valid without one); every rank scores every item."""
    split = ev.splits.get("test", ev.splits["valid"])
    novelty = NoveltyMeter(seen=ev.seen_classes)
    seen = ev.seen_classes

    def score(batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        is_id = batch["label"] < seen
        for flag in (True, False):
            keep = is_id == flag
            if not bool(keep.any()):
                continue
            sub = {"logits": outputs["logits"][keep]}
            if outputs.get("sample_logits") is not None:
                sub["sample_logits"] = outputs["sample_logits"][:, keep]
                mask = outputs.get("sample_mask")
                sub["sample_mask"] = (mask[:, keep] if mask is not None and mask.dim() == 3
                                      else mask)
            novelty.update_outputs(flag, sub)

    ev.run(split, range(ev.num_tasks), score, shard=False)
    out: dict[str, Any] = flat_ood_metrics(novelty.compute())
    out["ood/split"] = split
    return out
