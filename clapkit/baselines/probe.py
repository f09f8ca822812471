"""``clapkit probe``: the linear-probe baseline (CLIP paper, section 3.2; seed 004).

Multinomial logistic regression on the frozen image features of a recipe's backbone (read
from the HDF5 feature cache, built on first use), fitted full-batch with L-BFGS in float64.
The inverse L2 strength ``C`` is chosen on validation data by a log-spaced sweep (see
:class:`~clapkit.baselines.config.ProbeConfig`), the model is refitted on the whole train split
with it, and the test split gets the metrics ``clapkit eval`` reports (top-1/top-5, WAR, UAR,
per-class accuracy, confusion matrix), written to ``OUT/probe.json`` with ``C`` and the sweep.

The objective is scikit-learn's ``LogisticRegression(C=C)`` (multinomial, lbfgs): ``sum_i
CE(W x_i + b, y_i) + ||W||^2 / (2C)``, bias unpenalised; here divided by N for conditioning,
which does not move the minimum.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from ..atomic import atomic_write_json
from ..errors import ClapkitError
from ..plugins import PluginHost
from ..recipe import load_recipe
from .config import ProbeConfig


@attrs.frozen
class LinearModel:
    weight: torch.Tensor     # [K,D] float64
    bias: torch.Tensor       # [K]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.weight.dtype) @ self.weight.t() + self.bias


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float, *,
                 max_iter: int = 500, init: LinearModel | None = None) -> LinearModel:
    """Minimise ``mean_i CE(W x_i + b, y_i) + ||W||^2 / (2 C N)`` with full-batch L-BFGS."""
    x = x.to(torch.float64)
    n, d = x.shape
    w = torch.zeros(num_classes, d, dtype=torch.float64) if init is None else init.weight.clone()
    b = torch.zeros(num_classes, dtype=torch.float64) if init is None else init.bias.clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")
    penalty = 1.0 / (2.0 * c * n)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.t() + b, y) + penalty * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), _one_thread():
        opt.step(closure)
    return LinearModel(w.detach(), b.detach())


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """A [N,D] x [D,K] problem is far below what intra-op threads pay off for; extra threads
    only contend (30x slower measured on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def accuracy(model: LinearModel, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model.logits(x).argmax(1) == y).double().mean()) if len(y) else math.nan


def log_grid(lo: float, hi: float, n: int) -> list[float]:
    return torch.logspace(math.log10(lo), math.log10(hi), n, dtype=torch.float64).tolist()


def search_c(x_tr: torch.Tensor, y_tr: torch.Tensor, x_va: torch.Tensor, y_va: torch.Tensor,
             num_classes: int, cfg: ProbeConfig) -> tuple[float, list[dict[str, float]]]:
    """The ``C`` of best validation accuracy (ties: the stronger regularisation) over a
    coarse log grid, then a fine grid within one coarse step of it; returns it and the
    sweep ``[{"C", "valid_acc"}]``."""
    tried: dict[float, float] = {}

    def sweep(cs: list[float]) -> None:
        prev = None
        for c in cs:                       # ascending C: warm start from the previous fit
            if c in tried:
                continue
            prev = fit_logistic(x_tr, y_tr, num_classes, c, max_iter=cfg.max_iter, init=prev)
            tried[c] = accuracy(prev, x_va, y_va)

    coarse = log_grid(cfg.c_min, cfg.c_max, cfg.grid)
    sweep(coarse)
    best = max(sorted(tried), key=lambda c: tried[c])           # first max = smallest C
    step = (math.log10(cfg.c_max) - math.log10(cfg.c_min)) / (cfg.grid - 1)
    lo = max(cfg.c_min, best / 10 ** step)
    hi = min(cfg.c_max, best * 10 ** step)
    sweep(log_grid(lo, hi, cfg.grid))
    best = max(sorted(tried), key=lambda c: tried[c])
    return best, [{"C": c, "valid_acc": tried[c]} for c in sorted(tried)]


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fit, held_out)`` positions: ``fraction`` of every class (at least one item of each
    class with two or more) held out, drawn with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    held = []
    for c in torch.unique(labels).tolist():
        pos = (labels == c).nonzero().flatten()
        pos = pos[torch.randperm(len(pos), generator=g)]
        k = min(len(pos) - 1, max(1, round(fraction * len(pos)))) if len(pos) > 1 else 0
        held.append(pos[:k])
    out = torch.cat(held) if held else torch.zeros(0, dtype=torch.long)
    mask = torch.zeros(len(labels), dtype=torch.bool)
    mask[out] = True
    return (~mask).nonzero().flatten(), mask.nonzero().flatten()


# --- features from a recipe ----------------------------------------------------------------

@torch.no_grad()
def split_features(prep: Any, split_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen image features ``[N, S*D]`` (frame mean per stream, streams concatenated)
    and class-order labels ``[N]`` of every item of ``split_name``, in item order."""
    from ..evaluation import use_cache
    labels = prep.data.labels[split_name]
    loader = prep.data.eval_loader(split_name, list(range(len(labels))),
                                   cached=use_cache(prep))
    remap = prep.scenario.remap_table()
    feats, ys, idx = [], [], []
    for batch in loader:
        f = batch.get("features")
        if f is None:
            streams = {s: v.to(prep.device) for s, v in batch["streams"].items()}
            f = prep.pipeline.encode_frames(streams)
        feats.append(torch.cat([f[s].float().mean(1).cpu() for s in prep.pipeline.streams], 1))
        ys.append(remap[torch.as_tensor(batch["label"])])
        idx.append(torch.as_tensor(batch["index"]))
    order = torch.argsort(torch.cat(idx))
    return torch.cat(feats)[order], torch.cat(ys)[order]


def run_probe(target: Path, host: PluginHost, *, out: Path | None = None,
              overrides: tuple[str, ...] | list[str] = ()) -> tuple[dict[str, Any], Path]:
    """Fit and evaluate the linear probe of the recipe ``target``; returns the result and
    the path of ``probe.json``."""
    from ..evaluation import metrics_of, prepare
    if not target.is_file():
        raise ClapkitError(f"{target}: no such recipe file")
    recipe = load_recipe(target, host, overrides)
    cfg: ProbeConfig = recipe.probe
    folder = out or Path(recipe.run.out_dir.format(name=recipe.run.name))
    prep = prepare(recipe, host, checkpoint=None, checkpoint_name="none", work_dir=folder,
                   need_split="test")
    if prep.scenario.num_tasks > 1:
        raise ClapkitError(f"{target}: scenario: the linear probe fits every class at once; "
                           "drop [scenario] task_to_cls_num (one task)")
    train, test = prep.data.train_split, prep.data.test_split
    valid = prep.data.valid_split
    x_tr, y_tr = split_features(prep, train)
    x_te, y_te = split_features(prep, test)
    k = prep.scenario.num_classes
    mode = cfg.valid
    if mode == "auto":
        mode = "holdout" if valid == test else "split"
    if mode == "split":
        x_va, y_va = split_features(prep, valid)
        fit_x, fit_y = x_tr, y_tr
        valid_desc = f"split '{valid}'"
    else:
        fit_pos, held = stratified_holdout(y_tr, cfg.valid_fraction, recipe.run.seed)
        fit_x, fit_y, x_va, y_va = x_tr[fit_pos], y_tr[fit_pos], x_tr[held], y_tr[held]
        valid_desc = f"{len(held)} held-out train items ({cfg.valid_fraction:g} per class)"
    mean, std = _stats(fit_x, cfg.standardize)
    best_c, sweep = search_c((fit_x - mean) / std, fit_y, (x_va - mean) / std, y_va, k, cfg)
    mean, std = _stats(x_tr, cfg.standardize)
    model = fit_logistic((x_tr - mean) / std, y_tr, k, best_c, max_iter=cfg.max_iter)
    logits = model.logits((x_te - mean) / std)
    result = metrics_of(logits, y_te, prep.class_names)
    result.update({"target": str(target), "kind": "probe", "split": "test",
                   "split_name": test, "recipe": recipe.run.name, "scale": "fraction",
                   "C": best_c, "l2_strength": 1.0 / best_c, "valid": valid_desc,
                   "train_acc": accuracy(model, (x_tr - mean) / std, y_tr),
                   "sweep": sweep, "feature_dim": int(x_tr.shape[1]),
                   "num_train": int(len(y_tr)), "standardize": cfg.standardize})
    dest = folder / "probe.json"
    atomic_write_json(dest, result)
    return result, dest


def _stats(x: torch.Tensor, standardize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if not standardize:
        return torch.zeros(x.shape[1]), torch.ones(x.shape[1])
    return x.mean(0), x.std(0).clamp_min(1e-6)
