"""The non-finite guard: one line naming the step and every loss term."""

from __future__ import annotations

import math

import pytest
import torch

from clapkit.engine.guard import NonFiniteError, check_grad_norm, check_loss


def test_finite_values_pass():
    check_loss(torch.tensor(1.5), {"ce": torch.tensor(1.5)}, "step 1")
    check_grad_norm(3.0, {}, "step 1")


def test_nan_loss_names_step_and_terms():
    with pytest.raises(NonFiniteError) as err:
        check_loss(torch.tensor(math.nan), {"ce": torch.tensor(math.nan), "mi": 0.25},
                   "task 0, stage 'prompts', epoch 1, step 7")
    msg = str(err.value)
    assert "\n" not in msg and "step 7" in msg and "stage 'prompts'" in msg
    assert "ce=nan" in msg and "mi=0.25" in msg and "total=nan" in msg


def test_infinite_gradient_norm():
    with pytest.raises(NonFiniteError, match="gradient.*inf.*step 2"):
        check_grad_norm(torch.tensor(math.inf), {"ce": 1.0}, "step 2")
