"""CLAP4CLIP training-step benchmark on precomputed features (issue 11).

Times forward + backward of everything above the frozen encoder -- ``task_tokens`` ->
``vga`` -> ``variational`` text adapters, the router, cosine logits averaged over the
Monte-Carlo samples, the demo recipe's losses cross-entropy + ``prior_kl`` + ``lasp`` (its
template prior stood in by random unit vectors) -- for a batch of B image features and
the text features of the seen classes (10 per task), at the last task of a run with
``tasks`` tasks (all earlier pairs/tokens grown through ``on_task_start``). The router is
``uniform`` with every task drawing ``num_samples`` (the reference without anchor routing,
and the most work: anchor routing shares the samples out among the tasks).

Grid: num_samples (5, 10, 20, 40) x tasks (2, 5, 10, 20) x hierarchy off/on, VGA context
``per_batch`` (the reference's behaviour: one decoder pass over the batch) and, with
``--context per_sample|both``, the batch-independent default (B decoder passes in one call;
its cost grows with B, see the printed rows). Step time is the median over ``--steps``
timed steps after ``--warmup``; peak memory is CUDA's peak on a GPU, else the row's peak RSS
above the RSS at its start (Linux: the peak is reset per row through ``/proc/self/
clear_refs``; elsewhere the growth of ru_maxrss, a lower bound when an earlier row peaked
higher).

``--json FILE`` writes one JSON object per row: tasks, num_samples, hierarchical, context,
step_s, peak_mb, threads (torch threads used: by default the faster of 1 and all CPU
threads, chosen per row on a few extra steps), omp_wait_policy, amp (``--amp``: the step under bfloat16
autocast on CPU / float16 on CUDA, as a recipe with ``run.use_amp``; default off, float32).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

# GNU OpenMP threads spin between parallel regions by default; on a shared, busy machine a
# spinning thread holds the core its partner needs and 2 threads run several times slower
# than 1 (measured here: 0.29 s vs 0.05 s per step at load ~5). PASSIVE lets them sleep.
# Read when torch loads its OpenMP runtime, hence before the import; a value set by the
# caller wins, and each row records the one in force. (Only as a script: importing this
# module must not change the environment of the importing process.)
if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import attrs  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clapkit.geometry import cosine_logits  # noqa: E402
from clapkit.interfaces import HeadOutput, StepContext  # noqa: E402
from clapkit_plugins.adapters.task_tokens import TaskTokens  # noqa: E402
from clapkit_plugins.adapters.variational import Variational, VariationalConfig  # noqa: E402
from clapkit_plugins.adapters.vga import VGA, VGAConfig  # noqa: E402
from clapkit_plugins.losses.lasp import Lasp, LaspConfig  # noqa: E402
from clapkit_plugins.losses.prior_kl import PriorKL, PriorKLConfig  # noqa: E402
from clapkit_plugins.routers.uniform import UniformRouter  # noqa: E402


class Stack(torch.nn.Module):
    """The trainable part of a CLAP4CLIP step, composed as the pipeline composes it."""

    def __init__(self, dim: int, context: str, hierarchical: bool, global_samples: int,
                 n_tasks: int, per_task: int) -> None:
        super().__init__()
        self.tokens = TaskTokens(dim, 0.02)
        self.vga = VGA(dim, VGAConfig(context=context))
        self.variational = Variational(dim, VariationalConfig(
            hierarchical=hierarchical, global_samples=global_samples))
        self.kl = PriorKL(PriorKLConfig())
        self.lasp = Lasp(LaspConfig(), F.normalize(torch.randn(n_tasks * per_task, dim), dim=-1))
        for t in range(n_tasks):
            for m in (self.tokens, self.vga, self.variational):
                m.on_task_start(t, per_task * (t + 1))
        self.scale = 100.0

    def forward(self, text, z, step):
        out = self.tokens(text, z, step)
        step = attrs.evolve(step, queries=out.queries)
        out = self.vga(out.text, z, step)
        res = self.variational(out.text, z, step)
        head = HeadOutput.from_logits(cosine_logits(z, res.text) * self.scale, res.sample_mask)
        return head, res


def _proc_kb(field: str) -> int | None:
    """A ``/proc/self/status`` field in kB (None where there is no procfs)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> int | None:
    """Reset the process's peak RSS (Linux: ``clear_refs`` 5) and return the current RSS in
    kB, so that VmHWM afterwards is this row's own peak; None where that is unavailable."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _proc_kb("VmRSS")


def thread_choice(step_once, args) -> int:
    """``--threads N`` as given; 0 (default): the faster of 1 and all CPU threads on this
    row, by the median of 5 steps each after one warmup step (a loaded 2-core machine can
    be several times slower with 2 OpenMP threads than with 1; an idle one is faster)."""
    if args.threads:
        return args.threads
    best, best_t = 1, float("inf")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for n in sorted({1, cpus or 1}):
        torch.set_num_threads(n)
        step_once()
        t = statistics.median(step_once() for _ in range(5))
        if t < best_t:
            best, best_t = n, t
    return best


def run_row(tasks: int, samples: int, hierarchical: bool, context: str, args) -> dict:
    torch.manual_seed(0)
    d, b, per = args.dim, args.batch, args.classes_per_task
    c = tasks * per
    stack = Stack(d, context, hierarchical, args.global_samples, tasks, per).train()
    router = UniformRouter("each")
    text = F.normalize(torch.randn(c, d), dim=-1)
    toc = torch.arange(c) // per
    dev = torch.device(args.device)
    stack.to(dev)
    text, toc = text.to(dev), toc.to(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    base_kb = reset_peak_rss()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    g = torch.Generator(device=dev).manual_seed(1)
    amp = (torch.autocast(dev.type, dtype=torch.bfloat16 if dev.type == "cpu" else torch.float16)
           if args.amp else contextlib.nullcontext())

    def step_once() -> float:
        z = torch.randn(b, d, device=dev, generator=g)
        label = torch.randint((tasks - 1) * per, c, (b,), device=dev, generator=g)
        present = torch.unique(toc[label])                          # the current task
        step = StepContext(task=tasks - 1, seen_classes=c, num_samples=samples,
                           training=True, task_of_class=toc, tasks_present=present,
                           label=label)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        with amp:
            step = attrs.evolve(step, allocation=router(z, step))
            head, res = stack(text, z, step)
            outputs = {"distributions": {"variational": res.distribution},
                       "aux": {f"variational.{k}": v for k, v in res.aux.items()}}
            loss = (F.cross_entropy(head.logits.float(), label)
                    + stack.kl(outputs, {"step": step}) + stack.lasp(outputs, {"step": step}))
        stack.zero_grad(set_to_none=True)
        loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0

    threads = thread_choice(step_once, args) if dev.type == "cpu" else torch.get_num_threads()
    torch.set_num_threads(threads)
    for _ in range(args.warmup):
        step_once()
    times = [step_once() for _ in range(args.steps)]
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    elif base_kb is not None and _proc_kb("VmHWM") is not None:
        peak = max(0, _proc_kb("VmHWM") - base_kb) / 1024
    else:
        peak = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return {"tasks": tasks, "num_samples": samples, "hierarchical": hierarchical,
            "context": context, "step_s": round(statistics.median(times), 5),
            "peak_mb": round(peak, 1), "threads": threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""), "amp": bool(args.amp)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write one JSON object per row to this file")
    p.add_argument("--samples", type=int, nargs="+", default=[5, 10, 20, 40])
    p.add_argument("--tasks", type=int, nargs="+", default=[2, 5, 10, 20])
    p.add_argument("--hierarchy", choices=["off", "on", "both"], default="both")
    p.add_argument("--context", choices=["per_batch", "per_sample", "both"],
                   default="per_batch")
    p.add_argument("--global-samples", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes-per-task", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: per row, the faster of 1 and all CPU threads)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true",
                   help="bfloat16 (CPU) / float16 (CUDA) autocast, as run.use_amp; default float32")
    args = p.parse_args(argv)
    hier = {"off": [False], "on": [True], "both": [False, True]}[args.hierarchy]
    contexts = ["per_batch", "per_sample"] if args.context == "both" else [args.context]
    rows = []
    out = args.json.open("w") if args.json else None
    print(f"{'context':<11}{'hier':>5}{'tasks':>6}{'S':>4}{'step_s':>9}{'peak_mb':>9}")
    try:
        for context in contexts:
            for h in hier:
                for tasks in args.tasks:
                    for s in args.samples:
                        row = run_row(tasks, s, h, context, args)
                        rows.append(row)
                        print(f"{context:<11}{str(h):>5}{tasks:>6}{s:>4}"
                              f"{row['step_s']:>9.4f}{row['peak_mb']:>9.1f}", flush=True)
                        if out:
                            out.write(json.dumps(row) + "\n")
                            out.flush()
    finally:
        if out:
            out.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
