"""`iec` head: the Instance-Enhanced Classifier of the enhanced CLIP-CAER (seed 002, section 5).

Each class prototype is pulled towards the sample on the unit sphere,
``t_mix(k) = slerp(t_desc(k), z, lambda_slerp)``, and the logits are
``cos(z, t_mix(k)) / temperature``. ``lambda_slerp = 0`` gives exactly the ``cosine`` head on
the anchor view (same temperature, same arithmetic), which is how the seed's
``--slerp-weight 0`` disables IEC.

Which view is the anchor: in the reference implementation (CLIP-CAER-NEW,
``models/Generate_Model.py``) IEC slerps the *hand-crafted descriptive* features and the
classification then uses only ``t_mix``; the learnable soft prompts enter the loss through the
MI term, and classify directly only when IEC is off. Recipes reproduce that with
``desc_view = "desc"`` (the head's own ``view`` may stay ``"soft"``). ``text_weight`` > 0 blends
in the head's view: ``logits = (1-w) * cos(z, t_mix) / T + w * cos(z, t_view) / T``, for runs
that want the soft prompts in the classifier as well. ``desc_view = ""`` slerps the head's view.
"""

from __future__ import annotations

import attrs
import torch

from clapkit import hookimpl
from clapkit.errors import ClapkitError
from clapkit.geometry import LogitScale, cosine_logits, slerp
from clapkit.interfaces import BuildContext, Head, HeadOutput

_unit = [attrs.validators.ge(0.0), attrs.validators.le(1.0)]


@attrs.frozen
class IECHeadConfig:
    """``lambda_slerp`` in [0,1] (0 disables IEC); ``temperature``: logits = cos / T, 0 = the
    backbone's logit_scale; ``desc_view``: prompt view used as t_desc ("" = the head's view);
    ``text_weight``: share of the head-view cosine logits blended in."""

    lambda_slerp: float = attrs.field(default=0.5, validator=_unit)
    temperature: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    desc_view: str = ""
    text_weight: float = attrs.field(default=0.0, validator=_unit)
    learn_scale: bool = False


def instance_enhanced(anchor: torch.Tensor, z: torch.Tensor, lam: float) -> torch.Tensor:
    """``slerp(anchor, z, lam)`` with ``z [B,D]`` broadcast against anchor ``[C,D]``,
    ``[B,C,D]`` or ``[S,B,C,D]``; returns ``[B,C,D]`` or ``[S,B,C,D]`` (float32)."""
    if lam == 0.0:
        return anchor
    anchor, zb = anchor.float(), z.float().unsqueeze(-2)   # acos needs fp32 under AMP; [B,1,D]
    if anchor.dim() == 2:
        return slerp(anchor.unsqueeze(0), zb, lam)
    if anchor.dim() == 3:
        return slerp(anchor, zb, lam)
    return slerp(anchor, zb.unsqueeze(0), lam)


class IECHead(Head):
    """cos(z, slerp(t_desc, z, lambda)) / temperature."""

    def __init__(self, scale: LogitScale, cfg: IECHeadConfig) -> None:
        super().__init__()
        self.lambda_slerp = float(cfg.lambda_slerp)
        self.desc_view = cfg.desc_view
        self.text_weight = float(cfg.text_weight)
        self.scale = scale   # the cosine head's scale, so lambda 0 reduces to it exactly

    def _anchor(self, text: torch.Tensor, views: dict[str, torch.Tensor] | None) -> torch.Tensor:
        if not self.desc_view:
            return text
        if not views or self.desc_view not in views:
            raise ClapkitError(f"head 'iec': desc_view '{self.desc_view}' is not among the "
                               f"prompt views ({', '.join(views or {}) or 'none'})")
        return views[self.desc_view]

    def forward(self, z, text, views=None) -> HeadOutput:
        scale = self.scale()
        mixed = instance_enhanced(self._anchor(text, views), z, self.lambda_slerp)
        # slerp runs in float32; back to z's dtype (a bfloat16 module, autocast) for the dots
        logits = cosine_logits(z, mixed.to(z.dtype)) * scale
        if self.text_weight > 0.0:
            logits = ((1.0 - self.text_weight) * logits
                      + self.text_weight * (cosine_logits(z, text) * scale))
        return HeadOutput.from_logits(logits)


def build(cfg: IECHeadConfig, ctx: BuildContext) -> IECHead:
    """Instance-Enhanced Classifier: cosine to slerp(t_desc, z, lambda) prototypes."""
    return IECHead(LogitScale.from_context(cfg.temperature, ctx, cfg.learn_scale), cfg)


@hookimpl
def clapkit_register(registrar):
    registrar.add("head", "iec", build, config=IECHeadConfig)
