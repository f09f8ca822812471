"""``caption_lm`` ``vocabulary = "train_captions"``: the head predicts over the token ids of the
training captions only; its loss is the full-vocabulary loss with every other id masked
out, generation sees -inf outside it, and a caption dataset is required."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clapkit.errors import ClapkitError
from clapkit.interfaces import BuildContext
from clapkit.pipeline import Pipeline
from clapkit.sections import LossKeys

TRAIN = ["a red circle", "a blue striped star", "a small red cross"]


def _ctx(bb, texts):
    return BuildContext(backbone=bb, class_names=["a", "b"], task_of_class=[0, 0],
                        streams=("image",), num_frames=1, seed=0, train_texts=list(texts))


def _pipe(make, bb, **lm):
    ctx = _ctx(bb, TRAIN)
    losses = {"itm": make("loss", "itm", ctx, image_tokens="patches"),
              "lm": make("loss", "caption_lm", ctx, share_with="itm", **lm)}
    pipe = Pipeline(backbone=bb, prompts={"text": make("prompt", "handcrafted", ctx)},
                    adapters={}, adapter_places={}, head=None, head_view="text",
                    losses=losses, loss_keys={n: LossKeys() for n in losses},
                    streams=("image",), task_of_class=[0, 0])
    for loss in losses.values():
        loss.bind(pipe)
    return pipe


def _batch(bb, captions):
    torch.manual_seed(0)
    n = len(captions)
    return {"streams": {"image": torch.randn(n, 1, 3, bb.image_size, bb.image_size)},
            "label": torch.zeros(n, dtype=torch.long), "texts": [[c] for c in captions],
            "group": [str(i) for i in range(n)], "index": torch.arange(n), "epoch": 0}


def test_head_holds_the_training_caption_ids(make, tiny_clip):
    lm = _pipe(make, tiny_clip, vocabulary="train_captions").losses["lm"]
    tokens = tiny_clip.tokenize(TRAIN)
    want = sorted(set(tokens[tokens != 0].tolist()))
    assert lm.vocab_ids.tolist() == want
    assert lm.lm_head.out_features == len(want) < 30
    assert "vocab_ids" in lm.state_dict()                    # checkpointed with the head
    full = _pipe(make, tiny_clip).losses["lm"]
    assert full.lm_head.out_features == 49408 and full.vocab_ids is None


def test_loss_is_the_full_vocabulary_loss_masked_to_the_head(make, tiny_clip):
    """Without smoothing: CE over the head's ids == CE over all ids with the others at
    -inf (the same softmax), for the decoder states the loss computes."""
    pipe = _pipe(make, tiny_clip, vocabulary="train_captions", smoothing=0.0)
    lm = pipe.losses["lm"]
    batch = _batch(tiny_clip, TRAIN)
    out = pipe(dict(batch))
    got = lm(out, dict(batch))
    # the same decoder states through next_token_logits (full vocabulary, -inf elsewhere)
    from clapkit_plugins.losses._image_text_batch import image_tokens, text_encoding
    step = dict(batch)
    tokens, states = text_encoding(step, tiny_clip, TRAIN, True)
    images = image_tokens(step, out, tiny_clip, lm.image_source)
    n = int(states.mask.sum(1).max())
    logits = lm.next_token_logits(states.tokens[:, :n - 1], states.mask[:, :n - 1], images)
    assert logits.shape[-1] == 49408
    outside = torch.ones(49408, dtype=torch.bool)
    outside[lm.vocab_ids] = False
    assert bool(torch.isinf(logits[..., outside]).all())
    labels = tokens[:, 1:n]
    want = F.cross_entropy(logits.reshape(-1, 49408), labels.reshape(-1), ignore_index=0)
    assert torch.allclose(got, want, atol=1e-5)


def test_unknown_label_ids_are_left_out(make, tiny_clip):
    lm = _pipe(make, tiny_clip, vocabulary="train_captions").losses["lm"]
    known = lm.vocab_ids[:2]
    unknown = torch.tensor([int(lm.vocab_ids.max()) + 1])
    idx, keep = lm._head_labels(torch.cat([known, unknown]))
    assert keep.tolist() == [True, True, False] and idx[:2].tolist() == [0, 1]


def test_train_captions_needs_captions(make, tiny_clip):
    with pytest.raises(ClapkitError, match="needs a caption dataset"):
        make("loss", "caption_lm", _ctx(tiny_clip, []), vocabulary="train_captions")


def test_vocabulary_benchmark_times_both_heads(capsys, monkeypatch):
    """benchmarks/caption_lm_vocabulary.py runs both sides on the same batch and prints the
    head sizes and the ratio (its timing is for people, not asserted)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "caption_lm_vocabulary.py"
    spec = importlib.util.spec_from_file_location("caption_lm_vocabulary", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(sys, "argv", ["x", "--batch", "4", "--steps", "1", "--warmup", "0"])
    mod.main()
    out = capsys.readouterr().out
    assert "tokenizer       head  49408 ids" in out
    small = int(out.split("train_captions  head")[1].split("ids")[0])
    assert 10 < small < 100
    assert "tokenizer / train_captions:" in out
