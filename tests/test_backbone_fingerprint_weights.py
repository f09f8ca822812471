"""The backbone fingerprint (the feature-cache key) follows the weights: in-place edits and
optimizer steps change it, a device move or a no-op load does not."""

from __future__ import annotations

import torch

from clapkit_plugins.backbones.open_clip import TINY_MODEL, OpenClipBackbone, OpenClipConfig


def _bb(seed: int = 0) -> OpenClipBackbone:
    return OpenClipBackbone(OpenClipConfig(model=TINY_MODEL, seed=seed))


def test_in_place_edit_changes_the_fingerprint():
    bb = _bb()
    fp = bb.fingerprint()
    assert bb.fingerprint() == fp                       # stable while nothing moves
    with torch.no_grad():
        bb.model.visual.conv1.weight.add_(0.01)
    fp2 = bb.fingerprint()
    assert fp2 != fp
    with torch.no_grad():
        bb.model.visual.conv1.weight.sub_(0.01)         # back to the same bytes? (float: close)
    assert bb.fingerprint() != fp2


def test_optimizer_steps_change_the_fingerprint():
    bb = _bb()
    fp = bb.fingerprint()
    params = list(bb.model.visual.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=0.1)
    out = bb.encode_image(torch.randn(2, 3, bb.image_size, bb.image_size)).sum()
    out.backward()
    opt.step()
    assert bb.fingerprint() != fp


def test_copying_other_weights_in_gives_their_identity_and_a_no_op_keeps_it():
    a, b = _bb(0), _bb(1)
    fa, fb = a.fingerprint(), b.fingerprint()
    assert fa != fb
    with torch.no_grad():
        for pa, pb in zip(a.model.parameters(), b.model.parameters()):
            pa.copy_(pb)
    moved = a.fingerprint()
    assert moved != fa
    c = _bb(0)
    fc = c.fingerprint()
    c.load_state_dict(c.state_dict())                   # same weights: same key
    assert c.fingerprint() == fc
    c.to("cpu")
    assert c.fingerprint() == fc
