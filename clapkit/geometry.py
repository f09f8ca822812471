"""Geometry on the unit sphere shared by heads and losses: cosine logits and slerp.

Kept in the core so that plugins (``cosine``, ``iec`` heads, ...) share one definition of the
maths instead of importing each other.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

class _SharedTextCosine(torch.autograd.Function):
    """``cos(z_b, t_n)`` for unit ``z [B,D]`` and rows ``t [N,D]`` -> ``[N,B]``, with a fused
    backward: ``dL/dt_n = (sum_b g_nb z_b - (sum_b g_nb cos_nb) t_n / |t_n|) / |t_n|`` is one
    ``addmm`` onto one scaled copy of ``t``, where autograd of ``dots / norm`` makes four
    passes over the ``[N,D]`` rows (the samples of a Monte-Carlo head are the largest tensor
    of a CLAP4CLIP step). Not twice differentiable."""

    @staticmethod
    def forward(ctx, zn: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if rows.dtype != zn.dtype:                           # as einsum would: one dtype
            work = torch.promote_types(rows.dtype, zn.dtype)
            zn, rows = zn.to(work), rows.to(work)
        norm = torch.linalg.vector_norm(rows, dim=-1, keepdim=True)
        inv = norm.clamp_min(1e-12).reciprocal()            # F.normalize's eps
        cos = (rows @ zn.t()) * inv                          # [N,B]
        ctx.save_for_backward(zn, rows, inv, cos, norm > 1e-12)
        return cos

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        zn, rows, inv, cos, live = ctx.saved_tensors
        gd = g * inv                                         # [N,B] d/d(dots)
        work = gd.dtype                                      # autocast: rows may be half
        g_z = (gd.t() @ rows.to(work)).to(zn.dtype) if ctx.needs_input_grad[0] else None
        g_rows = None
        if ctx.needs_input_grad[1]:
            # below the clamp the norm is a constant: only the dots term remains
            coef = (g * cos).sum(-1, keepdim=True) * (inv * inv * live)
            g_rows = (rows.to(work) * -coef).addmm_(gd, zn.to(work)).to(rows.dtype)
        return g_z, g_rows


def cosine_logits(z: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """cos(z_b, t_c): text ``[C,D]`` -> ``[B,C]``, ``[B,C,D]`` -> ``[B,C]``,
    ``[S,B,C,D]`` -> ``[S,B,C]``; a batch dim of 1 broadcasts (``[S,1,C,D]`` -> ``[S,B,C]``).

    Text with more than one row per class (Monte-Carlo samples, per-item text) is not
    normalised: the dot products are divided by the text norms (clamped at 1e-12 as
    ``F.normalize`` does), the same values without an extra ``[...,C,D]`` tensor and its
    backward passes. Text shared by the batch (batch dim 1, or an ``expand`` over B with
    stride 0) is read once per class, so an ``[S,B,C,D]`` view never materialises
    ``S*B*C*D`` values.
    """
    z = F.normalize(z, dim=-1)
    if text.dim() == 2:
        return z @ F.normalize(text, dim=-1).t()
    if text.shape[-3] == 1 or text.stride(-3) == 0:       # same text for every item of B
        flat = text.squeeze(-3) if text.shape[-3] == 1 else text.select(-3, 0)  # [...,C,D]
        lead = flat.shape[:-1]
        cos = _SharedTextCosine.apply(z, flat.reshape(-1, flat.shape[-1]))     # [N,B]
        return cos.reshape(*lead, z.shape[0]).transpose(-1, -2)                # [...,B,C]
    dots = torch.matmul(text, z.unsqueeze(-1)).squeeze(-1)  # [..., B, C] (batched matvec)
    return dots / torch.linalg.vector_norm(text, dim=-1).clamp_min(1e-12)


def _sinc(x: torch.Tensor) -> torch.Tensor:
    """sin(x)/x, exact at 0 (``torch.sinc`` is the normalised sin(pi x)/(pi x))."""
    return torch.sinc(x / math.pi)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from direction ``a`` (t=0) to direction ``b`` (t=1).

    Both inputs are L2-normalised first (they broadcast against each other); the result has
    unit norm. Accurate over the whole angle range in float32 (half precision is computed in
    float32):

    - the angle is ``2 atan2(|b - a|, |b + a|)``, exact near 0 and near pi where ``acos`` of
      the dot product loses half the digits;
    - up to pi/2 the weights are written with sinc, ``sin(x th)/sin(th) = x sinc(x th) /
      sinc(th)``, which has no 0/0 as th -> 0 (the limit is the straight line);
    - beyond pi/2 the result is ``cos(t th) a + sin(t th) v`` with ``v`` the unit direction
      of ``b`` perpendicular to ``a``, taken from ``b + a`` (exact by Sterbenz' lemma when b
      is near -a; the normalisation enters as a small correction), so near-antiparallel
      pairs keep their great circle;
    - exactly antiparallel pairs have no unique great circle: one is chosen
      deterministically (towards the axis where ``a`` is smallest), never a zero vector.

    Both branches are evaluated on safe inputs, so gradients stay finite everywhere.
    """
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    work = torch.promote_types(out_dtype, torch.float32)
    a, b = torch.broadcast_tensors(a.to(work), b.to(work))
    na = a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    nb = b.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    t = torch.as_tensor(t, dtype=work, device=a.device)
    # b_hat +- a_hat from the raw sums (exact by Sterbenz' lemma for near-unit inputs near
    # +-each other) plus the small normalisation corrections; normalising first would round
    # each component and bury a 1e-5 rad gap under 6e-8 noise
    ca, cb = (1.0 / na - 1.0) * a, (1.0 / nb - 1.0) * b
    s, d = (b + a) + (cb + ca), (b - a) + (cb - ca)
    a, b = a / na, b / nb                     # as F.normalize does it
    ns, nd = s.norm(dim=-1, keepdim=True), d.norm(dim=-1, keepdim=True)
    theta = 2.0 * torch.atan2(nd, ns)
    obtuse = nd > ns                                             # theta > pi/2
    # up to pi/2: sinc weights
    th = torch.where(obtuse, torch.zeros_like(theta), theta)
    sinc_th = _sinc(th)
    near = ((1.0 - t) * _sinc((1.0 - t) * th) / sinc_th) * a + (t * _sinc(t * th) / sinc_th) * b
    # beyond pi/2: rotate a towards v, the part of b_hat + a_hat perpendicular to a
    perp = s - (s * a).sum(dim=-1, keepdim=True) * a
    k = a.abs().argmin(dim=-1, keepdim=True)
    axis = torch.zeros_like(a).scatter(-1, k, 1.0)
    anyperp = axis - a.gather(-1, k) * a                         # exactly antiparallel
    degenerate = ~(perp.norm(dim=-1, keepdim=True) > 0)
    v = F.normalize(torch.where(degenerate, anyperp, perp), dim=-1)
    th_far = torch.where(obtuse, theta, torch.full_like(theta, math.pi))
    far = torch.cos(t * th_far) * a + torch.sin(t * th_far) * v
    return torch.where(obtuse, far, near).to(out_dtype)


class LogitScale(torch.nn.Module):
    """The multiplier of cosine logits, stored as a log (a Parameter when learned).

    ``temperature > 0`` gives ``1/temperature``; 0 takes the backbone's CLIP logit scale (or
    100, CLIP's trained value, when no backbone is known).
    """

    def __init__(self, temperature: float, backbone_scale: float | None,
                 learn: bool = False) -> None:
        super().__init__()
        scale = (1.0 / temperature if temperature > 0
                 else backbone_scale if backbone_scale is not None else 100.0)
        log_scale = torch.tensor(float(scale)).log()
        if learn:
            self.log_scale = torch.nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @classmethod
    def from_context(cls, temperature: float, ctx: object, learn: bool = False) -> LogitScale:
        """Scale for a head built in ``ctx`` (a BuildContext): its backbone's when 0."""
        backbone = getattr(ctx, "backbone", None)
        bb_scale = float(backbone.logit_scale.detach()) if backbone is not None else None
        return cls(temperature, bb_scale, learn)

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp()
