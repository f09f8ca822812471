"""Geometry on the unit sphere shared by heads and losses: cosine logits and slerp.

Kept in the core so that plugins (``cosine``, ``iec`` heads, ...) share one definition of the
maths instead of importing each other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Above this cosine two directions count as parallel and slerp falls back to normalised lerp
#: (sin(omega) -> 0 makes the slerp weights 0/0 there).
PARALLEL_DOT = 1.0 - 1e-6


def cosine_logits(z: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """cos(z_b, t_c): text ``[C,D]`` -> ``[B,C]``, ``[B,C,D]`` -> ``[B,C]``,
    ``[S,B,C,D]`` -> ``[S,B,C]``."""
    z = F.normalize(z, dim=-1)
    text = F.normalize(text, dim=-1)
    if text.dim() == 2:
        return z @ text.t()
    return torch.einsum("bd,...bcd->...bc", z, text)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from direction ``a`` (t=0) to direction ``b`` (t=1).

    Both inputs are L2-normalised first (they broadcast against each other); the result has unit
    norm. Near-parallel pairs use normalised lerp, which is the limit of slerp there, and the
    angle is computed from a masked dot product so that no NaN gradient leaks out of ``acos``
    at |dot| = 1. Exactly antiparallel pairs have no unique great circle; they also take the
    normalised-lerp path (which passes through 0 at t = 0.5 -- a measure-zero case).
    """
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    a, b = torch.broadcast_tensors(a, b)
    dot = (a * b).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    degenerate = dot.abs() > PARALLEL_DOT
    safe_dot = torch.where(degenerate, torch.zeros_like(dot), dot)
    omega = torch.acos(safe_dot)
    sin_omega = torch.sin(omega)
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    wa = torch.sin((1.0 - t) * omega) / sin_omega
    wb = torch.sin(t * omega) / sin_omega
    spherical = wa * a + wb * b
    linear = F.normalize((1.0 - t) * a + t * b, dim=-1)
    return torch.where(degenerate, linear, spherical)


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
