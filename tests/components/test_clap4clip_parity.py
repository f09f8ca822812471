"""CLAP4CLIP parity: clapkit's components against the reference computation of
srvCodes/clap4clip (``classifier/continual_clip_variational.py``), rebuilt here from its
formulas (not its code) on identical weights and identical Monte-Carlo noise.

The reference pieces rebuilt: ``prior_text_features`` (per-template normalised features,
their renormalised mean), ``get_attention_mask`` (block mask by task, one token per task),
the VGA call (a torch ``TransformerDecoder`` on the whole batch as memory: clapkit's
``context = "per_batch"``), ``init_new_heads`` (``M^T M / D``, unbiased variance), the
per-task ``Adapter`` pairs, ``forward(test=True)`` logits (samples not re-normalised) and the
training losses of ``fit`` / ``finetuning`` (CE over every sample, KL and LASP per task,
global-mean distillation over the old classes).
"""

import attrs
import pytest
import torch
import torch.nn.functional as F

from clapkit.interfaces import StepContext

TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}.", "itap of a {}.", "art of the {}."]
TOC = torch.tensor([0, 0, 1, 1])            # the ctx fixture's 4 classes in 2 tasks
S, B, BETA = 5, 6, 15.0


# -- the reference, rebuilt ---------------------------------------------------------------

def ref_individual(bb, classes, templates):
    """``frozen_text_features_individual [C,T,D]``: each sentence encoded and normalised."""
    rows = []
    for c in classes:
        sent = [t.format(c.replace("_", " ")) for t in templates]
        with torch.no_grad():
            rows.append(F.normalize(bb.encode_text(bb.tokenize(sent)).float(), dim=-1))
    return torch.stack(rows)


def ref_frozen(individual):
    """``frozen_text_features [C,D]``: the renormalised template mean."""
    return F.normalize(individual.mean(1), dim=-1)


def ref_head_init(individual, seen, var):
    """``init_new_heads``: (mean or unbiased variance over templates) E, W = E^T E / E.shape[1]
    (the layer's [D,D] shape[0], i.e. the embed dim)."""
    e = individual[:seen].var(1) if var else individual[:seen].mean(1)
    w = e.t() @ e
    return w / w.shape[0]


def ref_mask(n_cls, toc):
    """``get_attention_mask`` with expandable tokens: True = blocked."""
    n_tasks = int(toc.max()) + 1
    q = n_cls + n_tasks
    m = torch.zeros(q, q, dtype=torch.bool)
    for i in range(n_tasks):
        for j in range(n_tasks):
            if j != i:
                m[n_cls + i, n_cls + j] = True          # tokens do not see each other
        for c in range(n_cls):
            if toc[c] != i:
                m[n_cls + i, c] = True                  # a token sees its own task's classes
    for c in range(n_cls):
        for k in range(n_cls):
            m[c, k] = bool(toc[k] != toc[c])            # classes: own task block only
        for j in range(n_tasks):
            m[c, n_cls + j] = j != int(toc[c])          # ... and their own task's token
    return m


def ref_pairs(var, kind):
    w, b = var.all_weights(kind)
    return w.detach(), b.detach()


def ref_forward(text, tokens, z, decoder, var, xi, scale, toc):
    """The reference ``forward``: per task i, ``t_i + vga_i + vga[token_i]`` -> ``q_i`` ->
    ``S`` samples ``t_ + eps`` -> ``logit_scale * normalise(z) @ samples^T``. Returns the
    logits ``[S,B,C]``, the per-task (q mean, q scale, eps) and the adapted inputs."""
    n = text.shape[0]
    zn = F.normalize(z, dim=-1)
    query = torch.cat([text, tokens])[None]
    vga = decoder(query, zn[None], tgt_mask=ref_mask(n, toc))[0]
    (wm, bm), (ws, bs) = ref_pairs(var, "mu"), ref_pairs(var, "sigma")
    logits, per_task = [], []
    for i in range(int(toc.max()) + 1):
        cls = torch.nonzero(toc == i)[:, 0]
        t_ = text[cls] + vga[cls] + vga[n + i]
        mu = t_ @ wm[i].t() + bm[i]
        sigma = F.softplus(t_ @ ws[i].t() + bs[i]) * 0.999 + 0.001
        eps = mu + sigma * xi[:, 0, cls]                    # Normal(mu, sigma).rsample
        samples = t_[None] + eps                            # not re-normalised
        logits.append(scale * torch.einsum("bd,scd->sbc", zn, samples))
        per_task.append((cls, mu, sigma, eps))
    return torch.cat(logits, -1), per_task


def ref_kl(mu, sigma):
    """``kl_divergence(q, N(0, I)).mean(0).sum() * 0.001``."""
    kl = 0.5 * (sigma ** 2 + mu ** 2 - 1.0) - sigma.log()
    return kl.mean(0).sum() * 0.001


def ref_lasp(individual, cls, eps):
    """``sims = mean_r mean_templates(P_i @ eps_r^T)``, ``beta * CE(sims, arange)``."""
    p = individual[cls]                                     # [C_i,T,D]
    sims = torch.stack([p @ eps[r].t() for r in range(eps.shape[0])])   # [S,C_i,T,C_i]
    sims = sims.mean(2).mean(0)
    return F.cross_entropy(sims, torch.arange(len(cls))) * BETA


# -- clapkit ------------------------------------------------------------------------------

@pytest.fixture
def chain(make, ctx):
    """The flagship chain (per_batch VGA as the reference, dropout off) grown to task 1."""
    torch.manual_seed(0)
    prompt = make("prompt", "handcrafted", ctx, templates=TEMPLATES)
    tt = make("adapter", "task_tokens", ctx)
    vga = make("adapter", "vga", ctx, ff_dim=32, dropout=0.0, context="per_batch")
    var = make("adapter", "variational", ctx, init="text", templates=TEMPLATES)
    head = make("head", "cosine", ctx, normalize_text=False)
    for t in range(2):
        seen = int((TOC <= t).sum())
        for m in (tt, vga, var):
            m.on_task_start(t, seen)
    with torch.no_grad():                  # trained-looking weights, not the init's symmetry
        for p in (*tt.parameters(), *vga.parameters(), *var.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    return prompt, tt, vga, var, head


def run_chain(chain, z, step, seed=11):
    prompt, tt, vga, var, head = chain
    text = prompt().text
    o1 = tt(text, z, step)
    o2 = vga(o1.text, z, attrs.evolve(step, queries=o1.queries))
    torch.manual_seed(seed)
    o3 = var(o2.text, z, step)
    torch.manual_seed(seed)
    xi = torch.randn(S, 1, text.shape[0], text.shape[1])   # the draw the adapter made
    ho = head(z, o3.text)
    outputs = {"logits": ho.logits, "sample_logits": ho.sample_logits,
               "distributions": {"variational": o3.distribution},
               "aux": {f"variational.{k}": v for k, v in o3.aux.items()}}
    return text, o1.queries, xi, outputs


def _step(training, label=None):
    return StepContext(task=1, seen_classes=4, num_samples=S, training=training,
                       task_of_class=TOC, label=label)


# -- tests --------------------------------------------------------------------------------

def test_class_text_and_head_init_equal_the_reference(chain, ctx):
    prompt, _, _, var, _ = chain
    ind = ref_individual(ctx.backbone, ctx.class_names, TEMPLATES)
    torch.testing.assert_close(prompt().text, ref_frozen(ind), atol=1e-6, rtol=1e-5)
    torch.manual_seed(0)
    v2 = type(var)(var.dim, var.cfg, (ind.mean(1), ind.var(1)))
    v2.on_task_start(0, 2)
    torch.testing.assert_close(v2.current.mu.weight, ref_head_init(ind, 2, False))
    torch.testing.assert_close(v2.current.sigma.weight, ref_head_init(ind, 2, True))
    v2.on_task_start(1, 4)                                  # new task: all seen classes
    torch.testing.assert_close(v2.current.mu.weight, ref_head_init(ind, 4, False))
    torch.testing.assert_close(v2.current.sigma.weight, ref_head_init(ind, 4, True))
    # the adapter's own template statistics are the reference's
    torch.testing.assert_close(var.tmpl_var, ind.var(1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(var.tmpl_mean, ind.mean(1), atol=1e-6, rtol=1e-5)


def test_test_mode_logits_equal_the_reference(chain, make, ctx):
    _, _, vga, var, head = chain
    for m in chain[1:4]:
        m.eval()
    z = torch.randn(B, ctx.embed_dim)
    with torch.no_grad():
        text, tokens, xi, out = run_chain(chain, z, _step(False))
        ref, _ = ref_forward(text, tokens, z, vga.decoder, var, xi, float(head.scale()), TOC)
    torch.testing.assert_close(out["sample_logits"], ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["logits"], ref.mean(0), atol=1e-5, rtol=1e-5)
    # the re-normalising head (normalize_text = true) is a different model, not a rounding
    cos = make("head", "cosine", ctx)
    with torch.no_grad():
        _, _, _, out_c = run_chain(chain[:4] + (cos,), z, _step(False))
    assert (out_c["logits"] - out["logits"]).abs().max() > 1.0


@pytest.mark.parametrize("phase", ["task", "finetune"])
def test_training_losses_equal_the_reference(chain, make, ctx, phase):
    """``fit`` (old pairs frozen: KL/LASP of the new task only) and ``finetuning`` (every
    pair trains: one KL and one LASP term per task, summed); CE on every sample."""
    _, tt, vga, var, head = chain
    if phase == "finetune":
        var.requires_grad_(True)                            # [[stages]] train = variational.*
    y = torch.tensor([0, 1, 2, 3, 2, 0])
    z = torch.randn(B, ctx.embed_dim)
    step = _step(True, label=y)
    text, tokens, xi, out = run_chain(chain, z, step)
    batch = {"step": step, "label": y}
    ce = make("loss", "cross_entropy", ctx, over_samples=True)(out, batch)
    kl = make("loss", "prior_kl", ctx, scope="per_task")(out, batch)
    lasp = make("loss", "lasp", ctx, scope="per_task", beta=BETA, templates=TEMPLATES)(out, batch)

    with torch.no_grad():
        ind = ref_individual(ctx.backbone, ctx.class_names, TEMPLATES)
        logits, per_task = ref_forward(text, tokens.detach(), z, vga.decoder, var, xi,
                                       float(head.scale()), TOC)
        ref_ce = F.cross_entropy(logits.reshape(-1, 4), y[None].expand(S, -1).reshape(-1))
        tasks = [1] if phase == "task" else [0, 1]
        ref_kl_v = sum(ref_kl(per_task[i][1], per_task[i][2]) for i in tasks)
        ref_lasp_v = sum(ref_lasp(ind, per_task[i][0], per_task[i][3]) for i in tasks)
    torch.testing.assert_close(ce.detach(), ref_ce, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kl.detach(), ref_kl_v, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lasp.detach(), ref_lasp_v, atol=1e-5, rtol=1e-5)
    # the other scopes are different losses here (the option is not a no-op)
    seen_kl = make("loss", "prior_kl", ctx, scope="seen")(out, batch)
    if phase == "finetune":
        assert abs(float(seen_kl.detach()) - float(ref_kl_v)) > 1e-4
    (ce + kl + lasp).backward()                             # the terms train the pairs
    assert var.current.mu.weight.grad is not None


def test_distill_equals_the_reference_global_term(make, ctx):
    """``kl_losses.append(F.mse_loss(prev_loc, qdist_g.loc[:n_old]) * 0.3)``: the previous
    global adapter's loc against the current one's, over the OLD classes only."""
    torch.manual_seed(0)
    var = make("adapter", "variational", ctx, hierarchical=True, global_samples=3)
    var.on_task_start(0, 2)
    var.on_task_start(1, 4)                                 # snapshot of task 0's state
    w_prev = var.global_.mu.weight.detach().clone()
    b_prev = var.global_.mu.bias.detach().clone()
    with torch.no_grad():                                   # task 1 trains the global pair
        var.global_.mu.weight.add_(0.1 * torch.randn_like(w_prev))
    x = torch.randn(1, 4, ctx.embed_dim)                    # the global adapter's input
    step = StepContext(task=1, seen_classes=4, num_samples=S, training=True,
                       task_of_class=TOC)
    o = var(x, torch.randn(B, ctx.embed_dim), step)
    outputs = {"aux": {f"variational.{k}": v for k, v in o.aux.items()}}
    got = make("loss", "distill", ctx, target="global")(outputs, {"step": step})
    prev_loc = x[0, :2] @ w_prev.t() + b_prev
    now_loc = x[0] @ var.global_.mu.weight.t() + var.global_.mu.bias
    want = F.mse_loss(prev_loc, now_loc[:2]) * 0.3
    torch.testing.assert_close(got.detach(), want.detach(), atol=1e-6, rtol=1e-5)
    assert o.aux["prev_global_mean"].shape[-2] == 2         # old classes only


def _distill_pipeline(make, ctx, tokens: bool, distill_input: str = "previous"):
    """prompt -> [task_tokens] -> vga (per_batch, no dropout) -> hierarchical variational,
    with the ``distill`` loss on the global term, as one Pipeline (the snapshot lives there)."""
    from clapkit.pipeline import Pipeline
    from clapkit.sections import LossKeys
    torch.manual_seed(0)
    adapters = {}
    if tokens:
        adapters["tokens"] = make("adapter", "task_tokens", ctx)
    adapters["vga"] = make("adapter", "vga", ctx, ff_dim=32, dropout=0.0, context="per_batch")
    adapters["variational"] = make("adapter", "variational", ctx, hierarchical=True,
                                   global_samples=3, distill_input=distill_input)
    distill = make("loss", "distill", ctx, target="global")
    return Pipeline(backbone=ctx.backbone,
                    prompts={"text": make("prompt", "handcrafted", ctx, templates=TEMPLATES)},
                    adapters=adapters, adapter_places={n: "text" for n in adapters},
                    head=make("head", "cosine", ctx, normalize_text=False), head_view="text",
                    losses={"distill": distill}, loss_keys={"distill": LossKeys()},
                    streams=("image",), task_of_class=TOC.tolist(), num_samples=S)


def _train_a_bit(*modules):
    with torch.no_grad():                  # a task's training moves every weight
        for m in modules:
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("tokens", [False, True])
def test_distill_runs_the_previous_vga_and_tokens_as_the_reference(make, ctx, tokens):
    """The reference's distillation (``previous_vga`` on the old classes' text plus
    ``previous_task_tokens``, the result plus the text into the previous global adapter,
    ``0.3 * MSE(prev_loc, loc[:n_old])``), after task 1 moved the VGA, the tokens and the
    global pair. Without tokens clapkit's global input is the reference's exactly; with
    tokens clapkit's global input keeps the token term (docs/fidelity.md), the previous
    tokens being the ones used."""
    import copy
    pipe = _distill_pipeline(make, ctx, tokens)
    ad = pipe.adapters
    pipe.on_task_start(0, 2)
    _train_a_bit(*ad.values())
    prev_decoder = copy.deepcopy(ad["vga"].decoder)
    prev_tokens = ad["tokens"].tokens().detach().clone() if tokens else None
    g = ad["variational"].global_.mu
    w_prev, b_prev = g.weight.detach().clone(), g.bias.detach().clone()
    pipe.on_task_start(1, 4)
    _train_a_bit(*ad.values())                         # task 1 trains VGA, tokens, global
    pipe.train()
    z = torch.randn(B, ctx.embed_dim)
    y = torch.tensor([2, 3, 2, 3, 2, 3])
    step = StepContext(task=1, seen_classes=4, num_samples=S, training=True,
                       task_of_class=TOC, label=y)
    batch = {"features": {"image": z[:, None]}, "label": y, "step": step}
    out = pipe(batch)
    got = pipe.losses["distill"](out, batch)

    with torch.no_grad():
        text = pipe.prompts["text"]().text
        zn = F.normalize(z, dim=-1)
        old = text[:2]
        q = torch.cat([old, prev_tokens]) if tokens else old
        mask = ref_mask(2, TOC[:2]) if tokens else torch.zeros(2, 2, dtype=torch.bool)
        prev_out = prev_decoder(q[None], zn[None], tgt_mask=mask)[0]
        prev_in = old + prev_out[:2] + (prev_out[2] if tokens else 0.0)
        prev_loc = prev_in @ w_prev.t() + b_prev
        now_loc = out["aux"]["variational.global_mean"][..., :2, :]
        want = F.mse_loss(now_loc, prev_loc.expand_as(now_loc)) * 0.3
    torch.testing.assert_close(got.detach(), want, atol=1e-6, rtol=1e-5)
    # the previous VGA differs from the current one: distilling on the present input
    # (distill_input = "current", clapkit's earlier behaviour) is another loss
    cur = _distill_pipeline(make, ctx, tokens, distill_input="current")
    cur.on_task_start(0, 2)
    cur.on_task_start(1, 4)
    cur.load_state_dict({k: v for k, v in pipe.state_dict().items()
                         if not k.startswith("text_snapshot.")}, strict=True)
    assert cur.text_snapshot is None and not any(
        k.startswith("text_snapshot.") for k in cur.state_dict())
    cur.train()
    out_c = cur(batch)
    assert abs(float(cur.losses["distill"](out_c, batch).detach()) - float(got.detach())) > 1e-4


def test_the_text_snapshot_is_frozen_saved_and_restored(make, ctx):
    """Buffers only (no stage glob can train them), in the state dict, and a model rebuilt by
    replaying the task starts loads it strictly (what ``--resume`` does)."""
    pipe = _distill_pipeline(make, ctx, tokens=True)
    pipe.on_task_start(0, 2)
    _train_a_bit(*pipe.adapters.values())
    pipe.on_task_start(1, 4)
    assert set(pipe.text_snapshot) == {"tokens", "vga"}
    assert not any(n.startswith("text_snapshot.") for n, _ in pipe.named_parameters())
    state = pipe.state_dict()
    keys = [k for k in state if k.startswith("text_snapshot.")]
    assert keys and "text_snapshot.tokens.old.0" not in keys      # task 0 had one token
    torch.testing.assert_close(state["text_snapshot.tokens.current"],
                               state["adapters.tokens.old.0"])
    again = _distill_pipeline(make, ctx, tokens=True)
    again.on_task_start(0, 2)
    again.on_task_start(1, 4)
    again.load_state_dict(state, strict=True)
    for k in keys:
        torch.testing.assert_close(again.state_dict()[k], state[k])


@pytest.mark.parametrize("name,tset", [("clap4clip_cifar100.toml", "cifar18"),
                                       ("clap4clip_imagenet_r.toml", "imagenet80")])
def test_flagship_recipes_select_the_reference_behaviour(host, name, tset):
    """The keys the parity tests above run with, as the flagship recipes resolve them."""
    from pathlib import Path

    from clapkit.recipe import load_recipe
    r = load_recipe(Path(__file__).parents[2] / "recipes" / name, host)
    first = next(iter(r.prompts.values()))
    assert first.plugin == "handcrafted" and first.config.template_set == tset
    assert len(first.config.template_list()) == int(tset[-2:])
    var = r.adapters["variational"].config
    assert var.init == "text" and var.template_set == tset
    assert r.head.plugin == "cosine" and r.head.config.normalize_text is False
    assert r.losses["ce"].config.over_samples is True
    assert r.losses["kl"].config.scope == "per_task"
    lasp = r.losses["lasp"].config
    assert lasp.scope == "per_task" and lasp.template_set == tset


def test_template_set_keys_of_the_init_and_lasp(make, ctx):
    """``template_set`` names a shipped list (an error lists them) and excludes
    ``templates``; the lasp prior is then the mean over those 18 templates."""
    from clapkit.text_prompts import resolve_templates
    for kind, name in (("adapter", "variational"), ("loss", "lasp")):
        with pytest.raises(Exception, match=r"imagenet80, cifar18"):
            make(kind, name, ctx, template_set="cifar10")
        with pytest.raises(Exception, match="not both"):
            make(kind, name, ctx, template_set="cifar18", templates=["a {}."])
    cifar = resolve_templates([], "cifar18")
    lasp = make("loss", "lasp", ctx, template_set="cifar18")
    want = ref_individual(ctx.backbone, ctx.class_names, cifar).mean(1)
    torch.testing.assert_close(lasp.prior, want, atol=1e-6, rtol=1e-5)
    var = make("adapter", "variational", ctx, init="text", template_set="cifar18")
    torch.testing.assert_close(var.tmpl_mean, want, atol=1e-6, rtol=1e-5)
