"""Frozen copies of modules whose weights are *buffers*.

A copy kept for distillation (the previous task's text adapters) or as a momentum encoder
must be saved and moved with the model, yet never be selected by a stage's ``train`` globs
nor reach an optimizer: buffers are exactly that.
"""

from __future__ import annotations

import copy

from torch import nn


def params_to_buffers(module: nn.Module) -> nn.Module:
    """Turn every parameter of ``module`` (in place) into a buffer of the same name."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:                 # None entries (bias=False) stay as they are
                del m._parameters[name]
                m.register_buffer(name, p.detach().clone())
    return module


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with its parameters as buffers (see the module docstring)."""
    return params_to_buffers(copy.deepcopy(module))
