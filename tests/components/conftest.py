"""Fixtures for the component tests: a tiny fake backbone and build contexts.

The fake backbone implements the text-side Backbone methods with a word-hash tokenizer, a token
embedding, learned positions, mean pooling up to EOT and a linear projection -- enough to test
prompt styles exactly and fast. The real open_clip tiny model is used where it matters.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import pytest
import torch
from torch import nn

from clapkit.interfaces import Backbone, BuildContext
from clapkit.plugins import get_plugin_host

SOT, EOT, VOCAB, LENGTH = 1, 99, 100, 16


class FakeBackbone(Backbone):
    """Text tower: embedding [V,W] + positions, mean over tokens up to EOT, tanh, Linear(W,D)."""

    def __init__(self, width: int = 8, dim: int = 12, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed_dim, self.image_size = dim, 8
        self.embedding = nn.Embedding(VOCAB, width)
        self.positions = nn.Parameter(torch.randn(LENGTH, width, generator=g) * 0.5)
        self.proj = nn.Linear(width, dim)
        with torch.no_grad():
            self.embedding.weight.copy_(torch.randn(VOCAB, width, generator=g))
            self.proj.weight.copy_(torch.randn(dim, width, generator=g) / width ** 0.5)
            self.proj.bias.zero_()
        self.requires_grad_(False)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), LENGTH, dtype=torch.long)
        for i, t in enumerate(texts):
            words = re.findall(r"\w+|[^\w\s]", t.lower())[:LENGTH - 2]
            ids = [SOT] + [2 + zlib.crc32(w.encode()) % (VOCAB - 3) for w in words] + [EOT]
            out[i, :len(ids)] = torch.tensor(ids)
        return out

    def token_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding(tokens)

    def encode_text_embedded(self, embeddings, tokens, deep_prompts=None) -> torch.Tensor:
        x = embeddings + self.positions[:embeddings.shape[1]]
        eot = tokens.argmax(-1, keepdim=True)
        mask = (torch.arange(tokens.shape[1]).unsqueeze(0) <= eot).unsqueeze(-1).to(x.dtype)
        pooled = (x * mask).sum(1) / mask.sum(1)
        return self.proj(torch.tanh(pooled))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encode_text_embedded(self.token_embedding(tokens), tokens)

    @property
    def logit_scale(self) -> torch.Tensor:
        return torch.tensor(100.0)


CLASSES = ["happy", "sad", "angry_face", "neutral"]


@pytest.fixture
def fake_backbone() -> FakeBackbone:
    return FakeBackbone().eval()


@pytest.fixture
def ctx(fake_backbone) -> BuildContext:
    """A context with the fake backbone (D = 12), four classes and two streams."""
    return BuildContext(backbone=fake_backbone, class_names=list(CLASSES),
                        class_counts=[50, 5, 20, 1], task_of_class=[0, 0, 1, 1],
                        streams=("face", "context"), num_frames=4, seed=7)


@pytest.fixture(scope="session")
def host():
    return get_plugin_host()


@pytest.fixture(scope="session")
def tiny_clip(host):
    """The real open_clip backbone on the repository's tiny random model."""
    from clapkit.config import structure
    entry = host.registries["backbone"].get("open_clip")
    cfg = structure(entry.config_cls, entry.test_options(None), file="<test>", key="backbone")
    return entry.factory(cfg, BuildContext()).eval()


@pytest.fixture(scope="session")
def make(host):
    """``make(kind, name, ctx, **options)``: build a registered component from recipe options
    through its config class (so option validation is exercised too)."""
    from clapkit.config import structure

    def _make(kind: str, name: str, ctx: BuildContext, **options):
        entry = host.registries[kind].get(name)
        cfg = structure(entry.config_cls, options, file="test.toml", key=f"{kind}.{name}")
        return entry.factory(cfg, ctx)

    return _make
