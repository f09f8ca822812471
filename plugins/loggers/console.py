"""`console` logger: one compact line per epoch, banners, confusion table, run summary.

Lines go through ``tqdm.write`` so they land above active progress bars instead of tearing
them. Only rank 0 prints. Accuracies arrive as fractions and are shown as percentages.

The validation confusion matrix is printed when an epoch sets a new best valid UAR (the model
``best.pt`` holds) and once at the end of each task (``confusion_every_epoch`` prints it after
every evaluated epoch); class names are printed in full (:mod:`clapkit.report`). A run with
one task (plain training) speaks of stages and the end of training, not of tasks.

The last line mentioning "UAR" that a run prints is ``final valid UAR <x> | WAR <y>``: scripts
that grep the final score rely on the first number after "UAR" on that line.

Class-incremental runs: after every task the accuracy matrix R[t][j] so far is printed as a
table (with the seen-class accuracy per row), then task-aware accuracy and ECE, and the
novel-class detection table (AUROC / AUPR / FPR95 per score) when the task's metrics hold
``ood/<score>/<metric>`` entries (:mod:`clapkit.ood`); the run summary adds average
incremental accuracy, last accuracy, forgetting, BWT and task-aware accuracy.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
from tqdm import tqdm

from clapkit import hookimpl
from clapkit.interfaces import BuildContext
from clapkit.ood import OOD_METRICS, parse_ood_metrics
from clapkit.plotting import short_names
from clapkit.report import format_confusion as format_confusion_full
from clapkit.report import seen_confusion


@attrs.frozen
class ConsoleConfig:
    """``confusion``: print the valid confusion matrix at each new best epoch and at the end
    of each task; ``confusion_every_epoch``: after every evaluated epoch instead;
    ``name_width``: cut class names to this many characters (default: never cut);
    ``checkpoints``: announce each saved checkpoint."""

    confusion: bool = True
    confusion_every_epoch: bool = False
    name_width: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(1)))
    checkpoints: bool = False


def _pct(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(v) else f"{100.0 * v:.1f}"


def _num(value: Any, fmt: str) -> str:
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return "n/a"


def format_epoch_line(task: int, stage: str, epoch: int, total_epochs: int | None,
                      metrics: dict[str, Any], show_task: bool = True) -> str:
    """``[task 0 | stage prompt | epoch 2/5] loss 1.234 (ce 1.1, mi 0.1) | train WAR ...``
    (without ``task 0 |`` when ``show_task`` is false: a single-task run).

    ``epoch`` is 0-based; shown 1-based.
    """
    ep = f"{epoch + 1}/{total_epochs}" if total_epochs else f"{epoch + 1}"
    header = (f"[task {task} | " if show_task else "[") + f"stage {stage} | epoch {ep}]"
    parts: list[str] = []
    terms = [(k.split("/", 1)[1], v) for k, v in metrics.items()
             if k.startswith("loss/") and k != "loss/total"]
    if "loss/total" in metrics or terms:
        loss = f"loss {_num(metrics['loss/total'], '.3f')}" if "loss/total" in metrics else "loss"
        if terms:
            loss += " (" + ", ".join(f"{n} {_num(v, '.3g')}" for n, v in terms) + ")"
        parts.append(loss)
    for label, prefix in (("train", "train/"), ("valid", "valid/"), ("best valid", "best/valid_")):
        if f"{prefix}war" in metrics or f"{prefix}uar" in metrics:
            parts.append(f"{label} WAR {_pct(metrics.get(f'{prefix}war'))} "
                         f"UAR {_pct(metrics.get(f'{prefix}uar'))}")
    lrs = [(k.split("/", 1)[1], v) for k, v in metrics.items() if k.startswith("lr/")]
    if lrs:
        parts.append("lr " + ", ".join(f"{n} {_num(v, '.2e')}" for n, v in lrs))
    return f"{header} {' | '.join(parts)}".rstrip()


def format_confusion(confusion: list[list[int]], class_names: list[str] | None,
                     name_width: int | None = None) -> str:
    """Aligned text table, rows = true class, columns = predicted class. Full class names
    (numbered columns, recall per row) unless ``name_width`` asks for the old short form."""
    c = len(confusion)
    names = class_names if class_names and len(class_names) == c else [str(i) for i in range(c)]
    if name_width is None:
        return "\n".join(format_confusion_full(confusion, names, indent=""))
    short = short_names(names, name_width)
    corner = "true\\pred"
    cell = max([len(s) for s in short] + [len(str(int(v))) for row in confusion for v in row])
    first = max(len(corner), max((len(s) for s in short), default=0))
    lines = [corner.ljust(first) + " " + " ".join(s.rjust(cell) for s in short)]
    for name, row in zip(short, confusion):
        lines.append(name.ljust(first) + " " + " ".join(str(int(v)).rjust(cell) for v in row))
    return "\n".join(lines)


def format_accuracy_matrix(rows: list[list[float]], acc_seen: list[float] | None = None
                           ) -> str:
    """R[t][j] in percent as an aligned table: one row per learned task t, one column per
    task j (blank above the diagonal), plus the accuracy on all seen classes per row."""
    n = max((len(r) for r in rows), default=0)
    seen = list(acc_seen or [])
    head = ["after\\on"] + [f"t{j}" for j in range(n)] + (["seen"] if seen else [])
    body = []
    for t, row in enumerate(rows):
        cells = [f"t{t}"] + [_pct(row[j]) if j < len(row) else "" for j in range(n)]
        if seen:
            cells.append(_pct(seen[t]) if t < len(seen) else "")
        body.append(cells)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = [" ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                      enumerate(zip(r, widths))).rstrip() for r in [head, *body]]
    return "accuracy matrix R[t][j] (%)\n" + "\n".join(lines)


def format_ood_table(table: dict[str, dict[str, float]], title: str = "") -> str:
    """Novel-class detection table: one row per score, AUROC / AUPR / FPR95 in percent."""
    names = {"auroc": "AUROC", "aupr": "AUPR", "fpr95": "FPR95"}
    width = max([5] + [len(s) for s in table])
    lines = [title or "novel-class detection (ID = seen tasks, OOD = future tasks)",
             "score".ljust(width) + "".join(names[m].rjust(8) for m in OOD_METRICS)]
    for score, row in table.items():
        lines.append(score.ljust(width)
                     + "".join(_pct(row.get(m)).rjust(8) for m in OOD_METRICS))
    return "\n".join(lines)


class ConsoleLogger:
    """Human-readable progress on stdout (rank 0 only)."""

    def __init__(self, cfg: ConsoleConfig) -> None:
        self.cfg = cfg
        self.best_uar: dict[int, float] = {}     # per task: the best valid UAR printed so far
        # accuracy matrix rows seen in task-end metrics (incremental runs)
        self.acc_rows: dict[int, list[float]] = {}
        self.acc_seen: dict[int, float] = {}

    @staticmethod
    def _active(run: Any) -> bool:
        return getattr(run, "rank", 0) == 0

    @staticmethod
    def _write(text: str) -> None:
        tqdm.write(text)

    @staticmethod
    def _stage_epochs(run: Any, stage: str) -> int | None:
        recipe = getattr(run, "recipe", None)
        for s in getattr(recipe, "stages", ()) or ():
            if getattr(s, "name", None) == stage:
                return int(s.epochs)
        return None

    @staticmethod
    def _incremental(run: Any) -> bool:
        return int(getattr(run, "num_tasks", 1) or 1) > 1

    @hookimpl
    def clapkit_run_start(self, run: Any) -> None:
        if not self._active(run):
            return
        recipe = getattr(run, "recipe", None)
        name = getattr(getattr(recipe, "run", None), "name", "run")
        n_cls = len(getattr(run, "class_names", []) or [])
        tasks = (f", {getattr(run, 'num_tasks', 1)} tasks" if self._incremental(run) else "")
        self._write(f"=== run {name}: {n_cls} classes{tasks}, "
                    f"output {getattr(run, 'out_dir', '?')} ===")
        alpha = getattr(getattr(recipe, "run", None), "mixup_alpha", 0.0)
        if isinstance(alpha, (int, float)) and alpha > 0:
            self._write(f"note: run.mixup_alpha = {alpha:g}: train WAR/UAR score each mixed "
                        "image against its first label (its weight lam ~ Beta(a, a) varies "
                        "per batch), so they swing from epoch to epoch; valid and test "
                        "figures are on unmixed images")
        resumed = getattr(run, "resumed_from", None)
        if resumed:
            where = ", ".join(f"{k} {resumed[k]}" for k in ("task", "stage", "epoch", "phase")
                              if k in resumed)
            self._write(f"=== resumed from checkpoints/last.pt ({where}); the tables below "
                        "include the tasks finished before the interruption ===")

    @hookimpl
    def clapkit_task_start(self, run: Any, task: int, classes: list[int]) -> None:
        if not self._active(run) or not self._incremental(run):
            return
        names = getattr(run, "class_names", []) or []
        shown = [names[c] if 0 <= c < len(names) else str(c) for c in classes[:8]]
        more = f", ... (+{len(classes) - 8})" if len(classes) > 8 else ""
        self._write(f"=== task {task + 1}/{getattr(run, 'num_tasks', '?')} (task {task}): "
                    f"{len(classes)} new classes: {', '.join(shown)}{more} ===")

    @hookimpl
    def clapkit_stage_start(self, run: Any, task: int, stage: str, trainable: list[str]) -> None:
        if not self._active(run):
            return
        epochs = self._stage_epochs(run, stage)
        head = ", ".join(trainable[:4]) + (f", ... (+{len(trainable) - 4})"
                                           if len(trainable) > 4 else "")
        where = f"task {task} | " if self._incremental(run) else ""
        self._write(f"--- {where}stage {stage}"
                    + (f" | {epochs} epoch(s)" if epochs is not None else "")
                    + f" | {len(trainable)} trainable tensor(s): {head or 'none'} ---")

    @hookimpl
    def clapkit_epoch_end(self, run: Any, task: int, stage: str, epoch: int,
                          metrics: dict[str, Any]) -> None:
        if not self._active(run):
            return
        self._write(format_epoch_line(task, stage, epoch, self._stage_epochs(run, stage),
                                      metrics, show_task=self._incremental(run)))
        conf = metrics.get("valid/confusion")
        uar = metrics.get("valid/uar")
        new_best = (isinstance(uar, (int, float)) and not math.isnan(float(uar))
                    and float(uar) > self.best_uar.get(task, -math.inf))
        if new_best:
            self.best_uar[task] = float(uar)  # type: ignore[arg-type]
        if self.cfg.confusion and conf and (new_best or self.cfg.confusion_every_epoch):
            conf = seen_confusion(conf, run, task)
            why = "new best valid UAR" if new_best else "this epoch"
            self._write(f"valid confusion matrix ({why}; rows = true, columns = predicted):")
            self._write(format_confusion(conf, self._names(run, len(conf)),
                                         self.cfg.name_width))

    @staticmethod
    def _names(run: Any, n: int) -> list[str] | None:
        names = list(getattr(run, "class_names", None) or [])
        return names[:n] if len(names) >= n else None

    @hookimpl
    def clapkit_stage_end(self, run: Any, task: int, stage: str) -> None:
        if self._active(run):
            where = f"task {task} | " if self._incremental(run) else ""
            self._write(f"--- {where}stage {stage} done ---")

    @hookimpl
    def clapkit_task_end(self, run: Any, task: int, metrics: dict[str, Any]) -> None:
        if not self._active(run):
            return
        per_task = sorted(((int(k.split("/", 1)[1]), v) for k, v in metrics.items()
                           if k.startswith("acc_task/")))
        if self._incremental(run):
            line = (f"=== task {task} done: accuracy on seen classes "
                    f"{_pct(metrics.get('acc_seen'))}")
            if per_task:
                line += " | per task " + " ".join(f"{j}:{_pct(v)}" for j, v in per_task)
        else:
            line = (f"=== end of training (model of the last epoch): valid WAR "
                    f"{_pct(metrics.get('valid/war'))} UAR {_pct(metrics.get('valid/uar'))}")
        if "test/uar" in metrics:
            line += (f" | test WAR {_pct(metrics.get('test/war'))} "
                     f"UAR {_pct(metrics.get('test/uar'))}")
        self._write(line + " ===")
        conf = metrics.get("valid/confusion")
        if self.cfg.confusion and conf:
            conf = seen_confusion(conf, run, task)
            when = (f"end of task {task}" if self._incremental(run)
                    else "end of training, model of the last epoch")
            self._write(f"valid confusion matrix ({when}; rows = true, columns = predicted):")
            self._write(format_confusion(conf, self._names(run, len(conf)),
                                         self.cfg.name_width))
        if self._incremental(run) and per_task:
            self._incremental_report(task, metrics, per_task)

    def _incremental_report(self, task: int, metrics: dict[str, Any],
                            per_task: list[tuple[int, Any]]) -> None:
        """The accuracy matrix so far, task-aware accuracy, ECE and the OOD table."""
        full = metrics.get("accuracy_matrix")
        if isinstance(full, list) and full and all(isinstance(r, list) for r in full):
            self.acc_rows = {t: list(r) for t, r in enumerate(full)}
        else:
            self.acc_rows[task] = [v for _, v in per_task]
        self.acc_seen[task] = metrics.get("acc_seen", math.nan)
        last = max(self.acc_rows)
        rows = [self.acc_rows.get(t, []) for t in range(last + 1)]
        seen = [self.acc_seen.get(t, math.nan) for t in range(last + 1)]
        self._write(format_accuracy_matrix(rows, seen))
        extra = [(label, metrics[k]) for k, label in
                 (("task_aware_acc", "task-aware acc"), ("ece", "ECE"))
                 if k in metrics]
        if extra:
            self._write(" | ".join(f"{label} {_pct(v)}" for label, v in extra))
        table = parse_ood_metrics(metrics)
        if table:
            self._write(format_ood_table(
                table, f"novel-class detection after task {task} (ID = tasks 0..{task}, "
                       "OOD = future tasks)"))

    @hookimpl
    def clapkit_checkpoint_saved(self, run: Any, path: str) -> None:
        if self.cfg.checkpoints and self._active(run):
            self._write(f"checkpoint saved: {path}")

    @hookimpl
    def clapkit_run_end(self, run: Any, summary: dict[str, Any]) -> None:
        if not self._active(run):
            return
        self._write("=== run summary ===")
        inc = [(label, summary[k]) for k, label in
               (("avg_incremental_acc", "avg incremental acc"), ("last_acc", "last acc"),
                ("forgetting", "forgetting"), ("bwt", "BWT"),
                ("avg_task_aware_acc", "avg task-aware acc"),
                ("last_task_aware_acc", "last task-aware acc"), ("last_ece", "last ECE"))
               if k in summary]
        if inc:
            self._write(" | ".join(f"{label} {_pct(v)}" for label, v in inc))
        if "best/valid_war" in summary or "best/valid_uar" in summary:
            self._write(f"best valid WAR {_pct(summary.get('best/valid_war'))} "
                        f"UAR {_pct(summary.get('best/valid_uar'))}")
        which = summary.get("final/checkpoint")
        at = f" (weights of {which}.pt)" if which else ""
        if "final/test_uar" in summary:
            self._write(f"final test WAR {_pct(summary.get('final/test_war'))} "
                        f"UAR {_pct(summary['final/test_uar'])}{at}")
        if "final/valid_uar" in summary:  # must stay the last line that mentions UAR
            self._write(f"final valid UAR {_pct(summary['final/valid_uar'])} | "
                        f"WAR {_pct(summary.get('final/valid_war'))}{at}")


def build(cfg: ConsoleConfig, ctx: BuildContext) -> ConsoleLogger:
    """Compact per-epoch lines, banners and the validation confusion matrix on stdout."""
    return ConsoleLogger(cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("logger", "console", build, config=ConsoleConfig)
