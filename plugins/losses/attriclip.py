"""AttriCLIP's two extra loss terms (Wang et al., CVPR 2023), read from the declared aux
outputs of an ``attriclip`` prompt (section named by ``prompt``):

* ``attriclip_key_match``: pull every image's feature towards the keys it selected,
  ``mean_{b,i} (1 - cos(q_b, key_{b,i}))`` -- the only signal the keys get (top-k selection
  is not differentiable). The reference's ``cosine_loss`` on its normalised image feature is
  this mean (``test_attriclip_parity.py``).
* ``attriclip_ortho``: keep the attribute prompts apart. ``form = "encoded"`` (default): the
  mean absolute off-diagonal cosine between the text features of the M bank prompts each
  encoded alone (``aux.bank_text [M,D]``), ``sum_{i != j} |cos(t_i, t_j)| / (M (M-1))``, the
  reference's ``loss_m``. ``form = "raw"``: the mean *squared* off-diagonal cosine of the
  flattened raw prompt vectors ``[M, L*W]`` (clapkit's earlier form: no text-tower pass).

The CIFAR-100 script of the reference weighs them 0.7 and 0.3, its ImageNet-100 script 0.5
and 0.1.
"""

from __future__ import annotations

from typing import Any, Literal

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


@attrs.frozen
class AttriClipOrthoConfig:
    """``prompt``: the attriclip prompt's recipe name; ``form``: ``encoded`` (|cos| of the
    encoded bank prompts, the reference) or ``raw`` (cos^2 of the raw prompt vectors)."""

    prompt: str = "attr"
    form: Literal["encoded", "raw"] = attrs.field(
        default="encoded", validator=attrs.validators.in_(("encoded", "raw")))


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
    """Mean squared off-diagonal cosine between the M raw bank prompts ``[M,...]``."""
    if prompts.shape[0] < 2:
        return prompts.sum() * 0.0
    flat = F.normalize(prompts.reshape(prompts.shape[0], -1), dim=-1)
    return off_diagonal(flat @ flat.t()).pow(2).mean()


def encoded_orthogonality(bank_text: torch.Tensor) -> torch.Tensor:
    """Mean absolute off-diagonal cosine between the M encoded bank prompts ``[M,D]``."""
    if bank_text.shape[0] < 2:
        return bank_text.sum() * 0.0
    t = F.normalize(bank_text.float(), dim=-1)
    return off_diagonal(t @ t.t()).abs().mean()


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

    def __init__(self, prompt: str, form: str = "encoded") -> None:
        super().__init__()
        self.prompt, self.form = prompt, form
        self.key = "bank_text" if form == "encoded" else "bank_prompts"
        self.needs = (f"aux.{prompt}.{self.key}",)

    def forward(self, outputs, batch) -> torch.Tensor:
        value = read_aux(outputs, self.prompt, self.key)
        if self.form == "encoded":
            return encoded_orthogonality(value)
        return prompt_orthogonality(value)


def build_key_match(cfg: AttriClipLossConfig, ctx: BuildContext) -> KeyMatchLoss:
    """AttriCLIP key matching: 1 - cos(image feature, selected keys)."""
    return KeyMatchLoss(cfg.prompt)


def build_ortho(cfg: AttriClipOrthoConfig, ctx: BuildContext) -> OrthoLoss:
    """AttriCLIP prompt orthogonality: |cos| between the encoded bank prompts (or cos^2 of
    the raw prompt vectors)."""
    return OrthoLoss(cfg.prompt, cfg.form)


def _example_outputs(ctx: Any, batch: int = 6) -> dict[str, Any]:
    """Aux tensors of the shapes an attriclip prompt publishes (for the contract suite):
    ``query [B,D]``, ``selected_keys [B,k,D]``, ``bank_prompts [M,L,W]``, ``bank_text
    [M,D]``."""
    g = torch.Generator().manual_seed(2)
    d = ctx.embed_dim
    p = AttriClipLossConfig().prompt

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).requires_grad_()

    return {"aux": {f"{p}.query": r(batch, d), f"{p}.selected_keys": r(batch, 3, d),
                    f"{p}.bank_prompts": r(10, 4, 16), f"{p}.bank_text": r(10, d)}}


@hookimpl
def clapkit_register(registrar):
    registrar.add("loss", "attriclip_key_match", build_key_match, config=AttriClipLossConfig,
                  example_outputs=_example_outputs)
    registrar.add("loss", "attriclip_ortho", build_ortho, config=AttriClipOrthoConfig,
                  example_outputs=_example_outputs)
