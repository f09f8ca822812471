"""`variational` (place text): CLAP4CLIP's probabilistic adapters (seed 000 section 3).

Per task t: ``mu_t = Linear``, ``sigma_t = softplus(Linear) * 0.999 + 0.001``;
``q = Normal(mu(x), sigma(x))`` on the (VGA-adapted) text ``x`` of the task's classes, and
the output samples are ``x + eps`` with ``eps ~ q`` (``rsample``), ``[S,B,C,D]``. The head
averages the logits over samples.

- Samples per task: the router's ``step.allocation`` (else ``step.num_samples`` for every
  task). Ragged counts are padded to the largest and marked in ``sample_mask [S,C]``; a
  task the router gave 0 samples (anchor routing at test time) is scored at its mean
  ``x + mu`` as one sample.
- Growth (``on_task_start``): the pair of a new task is ``current``; the previous one joins
  the stacked ``old`` parameters (``old_mu_weight [T-1,D,D]`` ...). Stages pick them with
  globs (``adapters.variational.current.*`` while learning a task, ``adapters.variational.*``
  in finetuning). ``init = "text"`` sets the new pair's weights from the seen classes'
  template-mean text features (mu: ``M^T M / D`` with ``M [C_seen,D]`` the per-class mean
  over templates of the L2-normalised features, sigma: the same of the unbiased variance
  over templates) -- the reference's ``init_new_heads`` (its divisor is the embed dim D, not
  the class count; a parity test rebuilds it); biases keep nn.Linear's init; ``"random"``
  keeps nn.Linear's init. ``template_set`` = "cifar18" / "imagenet80" picks the
  reference's lists (``templates``: your own).
- ``hierarchical = true``: a global pair (``global_``) first draws ``global_samples`` samples
  ``x_g = x + eps_g``; every task pair then samples around each of them: ``S x S_g`` samples.
  ``prev_global_mean`` (for ``distill``) applies the previous task's global pair to the
  input the previous task's text adapters give (``distill_input = "previous"``, as the
  reference's ``previous_vga`` + ``previous_task_tokens``; a parity test rebuilds it).
  (Its input is the adapted text including the task-token term; the reference leaves the
  token term out of the global input.)
- All tasks go through one grouped matmul (classes gathered into a padded ``[T, M]`` grid);
  a batch-independent input is computed once: ``[1,C,D]`` in (``per_batch`` VGA) gives
  ``[S,1,C,D]`` out (heads broadcast it); ``[C,D]`` or a stride-0 ``[B,C,D]`` gives an
  expanded ``[S,B,C,D]`` view.

Declared outputs: ``distributions.<name>`` = q (task level, over the seen classes, batch
dims first); ``aux.<name>.*``: ``noise_mean [C_seen,D]`` (mean of the real eps over samples
and batch, for ``lasp``/``ortho``), ``mean`` (q's loc), ``prev_mean`` (loc of the previous
task's snapshot on the same input, old classes only, for ``distill``; from task 1 on with
``keep_previous``), ``trainable_tasks [T]`` (bool: the task pairs whose weights train in
this stage -- the tasks a ``scope = "per_task"`` loss covers),
``global_loc``/``global_scale``/``global_mean`` with the hierarchy, ``prev_global_mean``
(the previous global adapter's loc on the same input, old classes only),
``prior_loc``/``prior_scale`` with ``prior = "data"`` (the task pairs applied to the mean input of a random ``context_size`` share of the batch items whose label
belongs to the current task -- with ``per_batch`` VGA every item has the same input).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal

from clapkit import hookimpl
from clapkit.errors import ClapkitError
from clapkit.functional import step_randn
from clapkit.interfaces import Adapter, BuildContext, StepContext, TextAdapterOutput
from clapkit.text_prompts import (TemplateChoice, check_templates, template_features,
                                  template_set_ok)
from clapkit.validators import size

DEFAULT_TEMPLATES = ["a photo of a {}.", "a bad photo of a {}.", "a photo of the large {}.",
                     "a photo of the small {}.", "a rendering of a {}.", "itap of a {}."]


def _templates_ok(inst: object, attribute: attrs.Attribute, value: list[str]) -> None:
    check_templates(value)



@attrs.frozen
class VariationalConfig(TemplateChoice):
    """``hierarchical``/``global_samples``: global adapter and its sample count;
    ``init``: "random" or "text" (template statistics of ``templates``, or of the shipped
    list ``template_set`` = "cifar18" | "imagenet80" | a file: the reference uses its
    dataset's list, 18 CIFAR / 80 ImageNet-R templates);
    ``keep_previous``: snapshot the previous task's pairs for ``distill``;
    ``distill_input`` (with the hierarchy): what the previous global adapter is applied to
    for ``prev_global_mean`` -- "previous" (the reference: this adapter's input as the
    previous task's text adapters computed it, e.g. its VGA with its task tokens, so the
    drift of those is distilled too) or "current" (the present input: clapkit's earlier
    behaviour);
    ``prior``: "standard" (N(0,I), nothing extra) or "data" (``prior_loc``/``prior_scale``
    from a context subset of ``context_size`` share of the current task's items);
    ``sigma_init``: start every new pair (and the global one) at this sigma (sigma layer
    weight 0, bias = softplus^-1((sigma_init - 0.001) / 0.999)); unset = nn.Linear's init
    as the reference, which gives sigma ~ 0.69 per dim -- noise of norm ~0.69 sqrt(D),
    far larger than the unit text features, which a head that re-normalises the samples
    (``cosine``) sees as noise."""

    hierarchical: bool = False
    global_samples: int = attrs.field(default=1, validator=size(10_000))
    init: Literal["random", "text"] = attrs.field(
        default="random", validator=attrs.validators.in_(("random", "text")))
    templates: list[str] = attrs.field(factory=lambda: list(DEFAULT_TEMPLATES),
                                       validator=_templates_ok)
    template_set: str = attrs.field(default="", validator=template_set_ok)
    keep_previous: bool = True
    distill_input: Literal["previous", "current"] = attrs.field(
        default="previous", validator=attrs.validators.in_(("previous", "current")))
    prior: Literal["standard", "data"] = attrs.field(
        default="standard", validator=attrs.validators.in_(("standard", "data")))
    context_size: float = attrs.field(default=0.67, validator=[attrs.validators.gt(0.0),
                                                               attrs.validators.le(1.0)])
    sigma_init: float | None = attrs.field(default=None, validator=attrs.validators.optional(
        attrs.validators.gt(0.001)))


def sigma_of(pre: torch.Tensor) -> torch.Tensor:
    """The reference's positive scale: ``softplus(pre) * 0.999 + 0.001``."""
    return F.softplus(pre) * 0.999 + 0.001


class Pair(nn.Module):
    """One mu/sigma pair of Linear layers (``sigma_init``: see VariationalConfig)."""

    def __init__(self, dim: int, sigma_init: float | None = None) -> None:
        super().__init__()
        self.mu = nn.Linear(dim, dim)
        self.sigma = nn.Linear(dim, dim)
        if sigma_init is not None:
            pre = (sigma_init - 0.001) / 0.999
            with torch.no_grad():
                self.sigma.weight.zero_()
                self.sigma.bias.fill_(pre + math.log(-math.expm1(-pre)))   # softplus^-1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mu(x), sigma_of(self.sigma(x))


def task_grid(tasks: torch.Tensor, n_tasks: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Padded grouping of classes by task: ``grid [T,M]`` (class index, ``n`` = padding)
    and ``flat_pos [n]`` (each class's position in the flattened grid)."""
    n = tasks.numel()
    order = torch.sort(tasks, stable=True).indices
    counts = torch.bincount(tasks, minlength=n_tasks)
    m = int(counts.max()) if n else 0
    start = torch.cumsum(counts, 0) - counts
    st = tasks[order]
    pos = torch.arange(n, device=tasks.device) - start[st]
    grid = torch.full((n_tasks, m), n, dtype=torch.long, device=tasks.device)
    grid[st, pos] = order
    flat_pos = torch.empty(n, dtype=torch.long, device=tasks.device)
    flat_pos[order] = st * m + pos
    return grid, flat_pos, m


def grouped_linear(x: torch.Tensor, grid: torch.Tensor, flat_pos: torch.Tensor,
                   weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-task Linear on ``x [L,n,D]``: class c uses ``weight[task(c)]`` -> ``[L,n,D]``."""
    lead, n, d = x.shape
    padded = torch.cat([x, x.new_zeros(lead, 1, d)], dim=1)[:, grid]     # [L,T,M,D]
    y = torch.einsum("ltmd,ted->ltme", padded, weight) + bias[None, :, None, :]
    return y.reshape(lead, -1, y.shape[-1])[:, flat_pos]


def tasks_linear(x: torch.Tensor, tasks: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor) -> torch.Tensor:
    """Per-task Linear on ``x [L,n,D]`` with ``weight [T,E,D]`` for the tasks ``0..T-1`` of
    ``tasks [n]``. The usual layout -- classes ordered by task, the same number per task --
    is a view ``[L,T,M,D]`` and one batched matmul (no gather, no padding copy, no scatter
    back); any other layout goes through the padded grid."""
    k, n = weight.shape[0], tasks.numel()
    m = n // k if k else 0
    if m * k == n and m and torch.equal(
            tasks, torch.arange(k, device=tasks.device).repeat_interleave(m)):
        lead, _, d = x.shape
        xt = x.reshape(lead, k, m, d).transpose(0, 1).reshape(k, lead * m, d)  # view if L=1
        y = torch.baddbmm(bias[:, None, :], xt, weight.transpose(-1, -2))     # [T,L*M,E]
        return y.reshape(k, lead, m, -1).transpose(0, 1).reshape(lead, n, -1)
    grid, flat_pos, _ = task_grid(tasks, k)
    return grouped_linear(x, grid, flat_pos, weight, bias)


class _Reparameterised(torch.autograd.Function):
    """``loc + scale * xi`` for ``xi [S, *loc.shape]`` with a fused backward: the gradients
    are ``sum_s g`` and ``sum_s g * xi`` (autograd of ``addcmul`` makes an extra scaling
    pass over the ``[S,...]`` samples, the largest tensor of the step)."""

    @staticmethod
    def forward(ctx, loc: torch.Tensor, scale: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(xi)
        return torch.addcmul(loc, scale, xi)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        (xi,) = ctx.saved_tensors
        g_loc = g.sum(0) if ctx.needs_input_grad[0] else None
        g_scale = (g * xi).sum(0) if ctx.needs_input_grad[1] else None
        return g_loc, g_scale, None


class Variational(Adapter):
    """Per-task (and optional global) Gaussian adapters on the class text features."""

    place = "text"
    aux_keys = ("noise_mean", "mean", "prev_mean", "trainable_tasks", "global_loc", "global_scale",
                "global_mean", "prev_global_mean", "prior_loc", "prior_scale")

    def __init__(self, dim: int, cfg: VariationalConfig,
                 template_stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.dim, self.cfg = int(dim), cfg
        #: the pipeline hands ``step.previous_input`` (see Adapter) for the distillation
        self.reads_previous_input = bool(cfg.hierarchical and cfg.keep_previous
                                         and cfg.distill_input == "previous")
        self.current = Pair(dim, cfg.sigma_init)
        for name in ("old_mu_weight", "old_mu_bias", "old_sigma_weight", "old_sigma_bias"):
            self.register_parameter(name, None)
        for name in ("prev_mu_weight", "prev_mu_bias", "prev_global_weight",
                     "prev_global_bias"):
            self.register_buffer(name, None)
        self.global_ = Pair(dim, cfg.sigma_init) if cfg.hierarchical else None
        if template_stats is not None:
            self.register_buffer("tmpl_mean", template_stats[0], persistent=False)
            self.register_buffer("tmpl_var", template_stats[1], persistent=False)
            self._init_from_text(self.current, seen=template_stats[0].shape[0])
        self._n_old = 0
        self._snap_versions: tuple[int, ...] = ()

    # -- growth --------------------------------------------------------------------------

    @property
    def num_tasks(self) -> int:
        return self._n_old + 1

    def _init_from_text(self, pair: Pair, seen: int) -> None:
        """The reference's ``init_new_heads``: ``W = M^T M / D`` over the seen classes."""
        if not hasattr(self, "tmpl_mean"):
            return
        with torch.no_grad():
            for lin, feats in ((pair.mu, self.tmpl_mean[:seen]), (pair.sigma,
                                                                  self.tmpl_var[:seen])):
                lin.weight.copy_(feats.t() @ feats / feats.shape[1])

    def on_task_start(self, task: int, seen_classes: int) -> None:
        """Add pairs up to task ``task``: the current pair joins ``old``; snapshot the state
        at the end of the previous task (for ``distill``)."""
        if task == 0 and self.num_tasks == 1:
            self._init_from_text(self.current, seen_classes)
        while self.num_tasks < task + 1:
            if self.cfg.keep_previous:
                w, b = self.all_weights("mu")
                self.prev_mu_weight, self.prev_mu_bias = w.detach().clone(), b.detach().clone()
                if self.global_ is not None:
                    self.prev_global_weight = self.global_.mu.weight.detach().clone()
                    self.prev_global_bias = self.global_.mu.bias.detach().clone()
            cur = self.current
            for kind in ("mu", "sigma"):
                lin = getattr(cur, kind)
                new_w, new_b = lin.weight.detach()[None], lin.bias.detach()[None]
                ow, ob = getattr(self, f"old_{kind}_weight"), getattr(self, f"old_{kind}_bias")
                if ow is not None:
                    new_w, new_b = torch.cat([ow.detach(), new_w]), torch.cat([ob.detach(), new_b])
                setattr(self, f"old_{kind}_weight", nn.Parameter(new_w.clone(), requires_grad=False))
                setattr(self, f"old_{kind}_bias", nn.Parameter(new_b.clone(), requires_grad=False))
            self._n_old += 1
            self._snap_versions = self._old_versions()
            self.current = Pair(self.dim, self.cfg.sigma_init).to(cur.mu.weight.device)
            self._init_from_text(self.current, seen_classes)

    def _old_versions(self) -> tuple[int, ...]:
        """In-place update counters of the old pairs (optimizers and loads bump them)."""
        return tuple(p._version for p in (self.old_mu_weight, self.old_mu_bias)
                     if p is not None)

    def all_weights(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``[T,D,D]`` and ``[T,D]`` of every task's ``kind`` ("mu"/"sigma") layer."""
        lin = getattr(self.current, kind)
        w, b = lin.weight[None], lin.bias[None]
        ow = getattr(self, f"old_{kind}_weight")
        if ow is None:
            return w, b
        return torch.cat([ow, w]), torch.cat([getattr(self, f"old_{kind}_bias"), b])

    # -- forward -------------------------------------------------------------------------

    def task_params(self, x: torch.Tensor, tasks: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """mu, sigma of every class's task pair on ``x [...,n,D]``.

        The current task's classes go through the current pair (one Linear), the older
        tasks' through one grouped matmul over the stacked old weights (no weight copies,
        no Python loop over tasks)."""
        n_tasks = int(tasks.max()) + 1
        if n_tasks > self.num_tasks:
            raise ClapkitError(f"variational: the seen classes span {n_tasks} tasks but only "
                               f"{self.num_tasks} adapter pairs exist (on_task_start not called?)")
        lead, (n, d) = x.shape[:-2], x.shape[-2:]
        flat = x.reshape(-1, n, d)
        cur = tasks == self._n_old
        n_cur = int(cur.sum())
        if n_cur == n:                                     # only the current task
            mu, pre = self.current.mu(flat), self.current.sigma(flat)
        else:
            contiguous = n_cur == 0 or bool(cur[n - n_cur:].all())
            perm = (torch.arange(n, device=x.device) if contiguous
                    else torch.cat([torch.nonzero(~cur)[:, 0], torch.nonzero(cur)[:, 0]]))
            xo, xc = flat[:, perm[: n - n_cur]], flat[:, perm[n - n_cur:]]
            t_old = tasks[perm[: n - n_cur]]
            k = int(t_old.max()) + 1
            parts = []
            for kind in ("mu", "sigma"):
                y = tasks_linear(xo, t_old, getattr(self, f"old_{kind}_weight")[:k],
                                 getattr(self, f"old_{kind}_bias")[:k])
                if n_cur:
                    y = torch.cat([y, getattr(self.current, kind)(xc)], dim=1)
                if not contiguous:
                    y = y[:, torch.argsort(perm)]
                parts.append(y)
            mu, pre = parts
        return mu.reshape(*lead, n, d), sigma_of(pre).reshape(*lead, n, d)

    def forward(self, text: torch.Tensor, z: torch.Tensor,
                step: StepContext | None = None) -> TextAdapterOutput:
        b = z.shape[0]
        if text.dim() == 2:
            text = text.expand(b, *text.shape)
        if text.dim() != 3:
            raise ClapkitError(f"variational: text must be [C,D] or [B,C,D], got "
                               f"{tuple(text.shape)}")
        c, d = text.shape[-2:]
        n = step.seen(c) if step is not None else c
        toc = step.task_of_class if step is not None else None
        tasks = (toc[:n].to(text.device) if toc is not None
                 else torch.zeros(n, dtype=torch.long, device=text.device))
        shared = text.shape[0] == 1 or text.stride(0) == 0               # batch-independent
        x_all = text[:1] if shared else text                              # [B',C,D]
        x = x_all[:, :n]
        n_tasks = int(tasks.max()) + 1 if n else 1
        alloc = self._allocation(step, n_tasks, text.device)
        s = int(alloc.max())
        aux: dict[str, torch.Tensor] = {}
        if self.global_ is not None:
            mu_g, sig_g = self.global_(x)
            aux.update(global_loc=mu_g, global_scale=sig_g, global_mean=mu_g)
            old_g = self._old_classes(tasks)
            if self.prev_global_weight is not None and old_g:
                src = x[..., :old_g, :]
                if self.reads_previous_input and step is not None and \
                        step.previous_input is not None:
                    src = step.previous_input[..., :old_g, :]
                aux["prev_global_mean"] = F.linear(src, self.prev_global_weight,
                                                   self.prev_global_bias).detach()
            eps_g = step_randn((self.cfg.global_samples, *mu_g.shape), mu_g, step)
            x = x + (mu_g + sig_g * eps_g)                                   # [G,B',n,D]
        mu, sigma = self.task_params(x, tasks)
        q = Normal(mu, sigma, validate_args=False)     # sigma >= 0.001 by construction
        # q.rsample written out (loc + scale * xi) so that the samples x + eps are one
        # fused op and the mean noise needs no [S,...] product.
        xi = step_randn((s, *mu.shape), mu, step)     # [S,(G),B',n,D]; seeded per evaluation
        per_class = alloc[tasks]                                            # [n]
        if bool((per_class == 0).any()):        # a task given no samples: scored at its mean
            xi = xi * (per_class > 0).to(xi.dtype)[:, None]
        samples = _Reparameterised.apply(x + mu, sigma, xi)
        real = torch.arange(s, device=text.device)[:, None] < per_class.clamp_min(1)[None, :]
        if bool(real.all()):
            xi_mean = xi.mean(0)
        else:
            w = real.to(xi.dtype).view(s, *([1] * (xi.dim() - 3)), n, 1)
            xi_mean = (xi * w).sum(0) / w.sum(0).clamp_min(1)
        noise_mean = mu + sigma * xi_mean                                  # [(G),B',n,D]
        aux["noise_mean"] = noise_mean.reshape(-1, n, d).mean(0)
        aux["mean"] = mu
        aux["trainable_tasks"] = self.trainable_tasks(text.device)
        old_n = self._old_classes(tasks)
        if self.prev_mu_weight is not None and old_n:
            if self._old_versions() == self._snap_versions and \
                    bool((tasks[:old_n] < self._n_old).all()):
                # old pairs untouched since the snapshot: identical weights, same input
                aux["prev_mean"] = mu[..., :old_n, :].detach()
            else:
                aux["prev_mean"] = self._prev_mean(x[..., :old_n, :], tasks[:old_n])
        if self.cfg.prior == "data":
            aux["prior_loc"], aux["prior_scale"] = self._data_prior(x, tasks, step)
        if self.global_ is not None:
            samples = samples.flatten(0, 1)                                # [S*G,B',n,D]
            real = real.repeat_interleave(self.cfg.global_samples, dim=0)
        if n < c:                                     # unseen classes pass unchanged
            rest = x_all[:, n:].expand(samples.shape[0], *x_all[:, n:].shape)
            out = torch.cat([samples, rest], dim=-2)
        else:                                         # no copy of the [S,...] samples
            out = samples
        if shared and text.shape[0] != 1:             # keep the batch dim of the input
            out = out.expand(out.shape[0], b, c, d)
        mask = None
        if not bool(real.all()):
            mask = torch.cat([real, real.new_ones(real.shape[0], c - n)], dim=1)
        return TextAdapterOutput(text=out, distribution=q, aux=aux, sample_mask=mask)

    def trainable_tasks(self, device: torch.device) -> torch.Tensor:
        """Bool ``[T]``: which task pairs' weights train now (requires_grad)."""
        old = (self.old_mu_weight.requires_grad or self.old_sigma_weight.requires_grad
               if self.old_mu_weight is not None else False)
        cur = self.current.mu.weight.requires_grad or self.current.sigma.weight.requires_grad
        return torch.tensor([old] * self._n_old + [cur], dtype=torch.bool, device=device)

    def _allocation(self, step: StepContext | None, n_tasks: int,
                    device: torch.device) -> torch.Tensor:
        if step is not None and step.allocation is not None:
            alloc = step.allocation.to(device).long()[:n_tasks]
            if alloc.numel() < n_tasks or int(alloc.max()) < 1:
                raise ClapkitError(f"variational: router allocation {alloc.tolist()} does not "
                                   f"give samples to the {n_tasks} seen tasks")
            return alloc
        s = step.num_samples if step is not None else 1
        return torch.full((n_tasks,), int(s), dtype=torch.long, device=device)

    def _old_classes(self, tasks: torch.Tensor) -> int:
        """Number of leading seen classes that belong to tasks before the current one."""
        if self.prev_mu_weight is None:
            return 0
        return int((tasks < self.prev_mu_weight.shape[0]).sum())

    def _prev_mean(self, x: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            n_tasks = int(tasks.max()) + 1
            flat = x.reshape(-1, *x.shape[-2:])
            y = tasks_linear(flat, tasks, self.prev_mu_weight[:n_tasks],
                             self.prev_mu_bias[:n_tasks])
            return y.reshape(x.shape)

    def _data_prior(self, x: torch.Tensor, tasks: torch.Tensor, step: StepContext | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Task pairs on the mean input of a random context subset of the current task's
        items (the whole batch when labels are unknown)."""
        flat = x.reshape(-1, *x.shape[-3:]) if x.dim() == 4 else x[None]   # [G,B',n,D]
        bsz = flat.shape[1]
        pick = torch.ones(bsz, dtype=torch.bool, device=x.device)
        if step is not None and step.label is not None and bsz > 1 and \
                step.task_of_class is not None:
            lab_task = step.task_of_class.to(x.device)[step.label.to(x.device)]
            pick = lab_task == step.task
            if pick.any():
                keep = torch.rand(bsz, device=x.device) < self.cfg.context_size
                pick = pick & keep if (pick & keep).any() else pick
            else:
                pick = torch.ones_like(pick)
        ctx_x = flat[:, pick].mean(1)                                      # [G,n,D]
        mu, sigma = self.task_params(ctx_x, tasks)
        return mu, sigma


def template_stats(ctx: BuildContext, templates: Sequence[str]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class: mean and unbiased variance over templates of the L2-normalised text
    features (the reference's ``frozen_text_features_individual.mean(1)`` / ``.var(1)``)."""
    feats = template_features(ctx, templates, "variational: init = \"text\"")
    if feats.shape[1] < 2:
        raise ClapkitError("variational: init = \"text\" needs at least 2 templates (the "
                           "sigma layer starts from their variance)")
    return feats.mean(1), feats.var(1, unbiased=True)


def build(cfg: VariationalConfig, ctx: BuildContext) -> Variational:
    """CLAP4CLIP variational adapters: per-task Gaussian mu/sigma, optional global level."""
    stats = None
    if cfg.init == "text":
        stats = template_stats(ctx, cfg.template_list())
    return Variational(ctx.embed_dim, cfg, stats)


@hookimpl
def clapkit_register(registrar):
    registrar.add("adapter", "variational", build, config=VariationalConfig, place="text")
