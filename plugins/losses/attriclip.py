"""AttriCLIP's two extra loss terms (Wang et al., CVPR 2023), read from the declared aux
outputs of an ``attriclip`` prompt (section named by ``prompt``):

* ``attriclip_key_match``: pull every image's raw feature towards the keys it selected,
  ``mean_{b,i} (1 - cos(q_b, key_{b,i}))`` -- the only signal the keys get (top-k selection
  is not differentiable); the paper's weight 0.5.
* ``attriclip_ortho``: keep the attribute prompts apart, the mean squared off-diagonal cosine
  of the flattened bank prompts ``[M, L*W]``, ``sum_{i != j} cos(P_i, P_j)^2 / (M (M-1))``
  (cosine, so the term constrains directions only and leaves the prompts' scale to the
  classification loss); the paper's weight 0.1.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F

from clapkit import hookimpl
from clapkit.errors import ClapkitError
from clapkit.functional import off_diagonal
from clapkit.interfaces import BuildContext, Loss


@attrs.frozen
class AttriClipLossConfig:
    """``prompt``: the recipe name of the attriclip prompt whose aux outputs are read."""

    prompt: str = "attr"


def read_aux(outputs: dict[str, Any], section: str, key: str) -> torch.Tensor:
    """``aux.<section>.<key>`` from the step outputs (flat ``"section.key"`` or nested)."""
    aux = outputs.get("aux") or {}
    flat = f"{section}.{key}"
    if flat in aux:
        return aux[flat]
    nested = aux.get(section)
    if isinstance(nested, dict) and key in nested:
        return nested[key]
    raise ClapkitError(f"step output aux.{flat} is missing: is prompt '{section}' an "
                       f"attriclip prompt? (aux outputs present: {', '.join(aux) or 'none'})")


def key_match(query: torch.Tensor, selected_keys: torch.Tensor) -> torch.Tensor:
    """``mean (1 - cos(q_b, k_{b,i}))`` over images b and their k selected keys."""
    if selected_keys.shape[-2] == 0:
        return selected_keys.sum() * 0.0 + query.sum() * 0.0
    cos = F.cosine_similarity(query.unsqueeze(-2), selected_keys, dim=-1)   # [B,k]
    return (1.0 - cos).mean()


def prompt_orthogonality(prompts: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal cosine between the M bank prompts ``[M,...]``."""
    if prompts.shape[0] < 2:
        return prompts.sum() * 0.0
    flat = F.normalize(prompts.reshape(prompts.shape[0], -1), dim=-1)
    return off_diagonal(flat @ flat.t()).pow(2).mean()


class KeyMatchLoss(Loss):
    """AttriCLIP key matching: selected keys -> the image feature."""

    def __init__(self, prompt: str) -> None:
        super().__init__()
        self.prompt = prompt
        self.needs = (f"aux.{prompt}.query", f"aux.{prompt}.selected_keys")

    def forward(self, outputs, batch) -> torch.Tensor:
        return key_match(read_aux(outputs, self.prompt, "query"),
                         read_aux(outputs, self.prompt, "selected_keys"))


class OrthoLoss(Loss):
    """AttriCLIP prompt orthogonality over the attribute bank."""

    def __init__(self, prompt: str) -> None:
        super().__init__()
        self.prompt = prompt
        self.needs = (f"aux.{prompt}.bank_prompts",)

    def forward(self, outputs, batch) -> torch.Tensor:
        return prompt_orthogonality(read_aux(outputs, self.prompt, "bank_prompts"))


def build_key_match(cfg: AttriClipLossConfig, ctx: BuildContext) -> KeyMatchLoss:
    """AttriCLIP key matching: 1 - cos(image feature, selected keys)."""
    return KeyMatchLoss(cfg.prompt)


def build_ortho(cfg: AttriClipLossConfig, ctx: BuildContext) -> OrthoLoss:
    """AttriCLIP prompt orthogonality: squared cosines between bank prompts."""
    return OrthoLoss(cfg.prompt)


def _example_outputs(ctx: Any, batch: int = 6) -> dict[str, Any]:
    """Aux tensors of the shapes an attriclip prompt publishes (for the contract suite):
    ``query [B,D]``, ``selected_keys [B,k,D]``, ``bank_prompts [M,L,W]``."""
    g = torch.Generator().manual_seed(2)
    d = ctx.embed_dim
    p = AttriClipLossConfig().prompt

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).requires_grad_()

    return {"aux": {f"{p}.query": r(batch, d), f"{p}.selected_keys": r(batch, 3, d),
                    f"{p}.bank_prompts": r(10, 4, 16)}}


@hookimpl
def clapkit_register(registrar):
    registrar.add("loss", "attriclip_key_match", build_key_match, config=AttriClipLossConfig,
                  example_outputs=_example_outputs)
    registrar.add("loss", "attriclip_ortho", build_ortho, config=AttriClipLossConfig,
                  example_outputs=_example_outputs)
