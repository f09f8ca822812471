"""Shape checks at component boundaries name the plugin, the section and both shapes."""

from __future__ import annotations

import pytest
import torch

from clapkit.shapes import ComponentShapeError, check_shape


def test_matching_shape_passes_through():
    x = torch.zeros(4, 64)
    assert check_shape(x, (("B", 4), ("D", 64)), section="adapters.t", plugin="p",
                       what="output") is x
    assert check_shape(torch.zeros(2, 3, 64), [[3, 64], [None, 3, 64]], section="prompts.a",
                       plugin="coop", what="text") is not None


def test_wrong_shape_names_plugin_section_and_both_shapes():
    with pytest.raises(ComponentShapeError) as err:
        check_shape(torch.zeros(4, 8, 64), (("B", 4), ("D", 64)), section="adapters.temporal",
                    plugin="temporal_transformer", what="video adapter output (stream face)")
    msg = str(err.value)
    assert msg == ("[adapters.temporal] temporal_transformer: video adapter output (stream "
                   "face) has shape [4, 8, 64], expected [B=4, D=64]")


def test_alternatives_and_non_tensors():
    with pytest.raises(ComponentShapeError, match=r"expected \[C=3, D\] or \[B, C=3, D\]"):
        check_shape(torch.zeros(5, 64), [[("C", 3), ("D", None)], [("B", None), ("C", 3),
                                                                     ("D", None)]],
                    section="prompts.desc", plugin="handcrafted", what="text features")
    with pytest.raises(ComponentShapeError, match="is a tuple, expected a tensor"):
        check_shape((1, 2), (2,), section="head", plugin="cosine", what="logits")
