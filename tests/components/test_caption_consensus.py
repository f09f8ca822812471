"""Consensus-word recall: the words all reference captions of an image share (less stop
words), whether generated captions name them, and the image_text evaluation's keys and
console line for it. On the caption demo set those words are a named image's colour and
shape, which is what the figure is read as there."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

import clapkit_plugins.loggers.image_text as image_text
from clapkit.metrics_caption import STOP_WORDS, consensus_recall, consensus_words
from clapkit_plugins.datasets.demo_captions import COLOURS, captions_for, draw_item
from clapkit_plugins.datasets.demo_incremental import INCREMENTAL_CLASSES, SHAPES


def test_consensus_words_are_the_words_every_reference_holds():
    refs = ["a red striped circle", "red circle covered in stripes",
            "a photo of a red striped circle"]
    assert consensus_words(refs) == {"red", "circle"}
    assert consensus_words(["A Red, circle.", "the RED circle!"]) == {"red", "circle"}
    assert consensus_words(["a blue square"]) == {"blue", "square"}
    assert consensus_words([]) == set()


def test_stop_words_are_no_consensus():
    # shared only through articles, prepositions and "photo of" filler: nothing agreed on
    refs = ["there is a photo of a cat in the image", "a photo of a dog in the image"]
    assert consensus_words(refs) == set()
    assert {"a", "the", "of", "in", "is", "there", "photo", "picture", "image"} <= STOP_WORDS
    # no colour or shape word of the demo set is a stop word
    assert not (set(COLOURS) | set(SHAPES)) & STOP_WORDS


def test_consensus_recall_counts_images_and_pooled_words():
    refs = {"a": ["a red circle", "red circle on the left"],           # {red, circle}
            "b": ["a blue square", "the blue square"],                 # {blue, square}
            "c": ["a photo of a cat", "there is a dog in the photo"]}  # {}: left out
    cands = {"a": "a red circle", "b": "a blue circle", "c": "nothing at all"}
    got = consensus_recall(cands, refs)
    # images: a complete, b not (c has no consensus) -> 1/2; words: 2 + 1 of 2 + 2 -> 3/4
    assert got == pytest.approx({"consensus_all": 0.5, "consensus_words": 0.75})
    assert consensus_recall({"c": "a cat"}, {"c": refs["c"]}) == {}


def test_consensus_recall_checks_keys_like_the_other_scores():
    with pytest.raises(ValueError, match="no reference caption for 'b'"):
        consensus_recall({"a": "red circle", "b": "x"}, {"a": ["red circle"]})
    with pytest.raises(ValueError, match="no candidate captions"):
        consensus_recall({}, {"a": ["red circle"]})


@pytest.mark.parametrize("seed", range(40))
def test_named_demo_images_share_exactly_their_colour_and_shape(seed):
    rng = random.Random(f"consensus-{seed}")
    for cls in INCREMENTAL_CLASSES:
        _, attrs = draw_item(rng, cls)
        assert attrs["style"] == "named"
        assert consensus_words(captions_for(attrs)) == {attrs["colour"], attrs["shape"]}, attrs


def test_the_seeds_above_cover_every_colour_and_shape():
    seen = set()
    for seed in range(40):
        rng = random.Random(f"consensus-{seed}")
        for cls in INCREMENTAL_CLASSES:
            _, attrs = draw_item(rng, cls)
            seen.add((attrs["colour"], attrs["shape"]))
    assert {c for c, _ in seen} == set(COLOURS) and {s for _, s in seen} == set(SHAPES)


class _Pipe:
    training = False

    def eval(self) -> None:
        pass

    def train(self, mode: bool = True) -> None:
        pass


def test_image_text_evaluation_reports_consensus_recall(monkeypatch, tmp_path, capsys):
    refs = {"0": ["a red circle", "red circle on the left"],
            "1": ["a blue square", "the blue square"]}
    cands = {"0": "a red circle", "1": "a blue circle"}
    lm = SimpleNamespace(kind="blip", image_source="patches")
    monkeypatch.setattr(image_text, "_find_loss",
                        lambda pipe, name: lm if name == "CaptionLmLoss" else None)
    monkeypatch.setattr(image_text, "collect", lambda *a: image_text.Collected(
        image_ids=list(refs), references=refs))
    monkeypatch.setattr(image_text, "retrieval", lambda *a: {})
    monkeypatch.setattr(image_text, "generate_captions", lambda *a: dict(cands))
    plugin = image_text.ImageTextEval(image_text.ImageTextEvalConfig(splits=["test"],
                                                                     examples=0))
    run = SimpleNamespace(rank=0, out_dir=tmp_path)
    evaluation = SimpleNamespace(pipeline=_Pipe(), splits={"test": "test"})
    metrics = plugin.clapkit_task_evaluate(run=run, task=0, evaluation=evaluation)
    assert metrics["test/consensus_all"] == pytest.approx(0.5)
    assert metrics["test/consensus_words"] == pytest.approx(0.75)
    assert {"test/bleu4", "test/cider"} <= set(metrics)
    printed = capsys.readouterr().out
    assert (f"captions (test): BLEU-4 {100 * metrics['test/bleu4']:.1f} | CIDEr "
            f"{100 * metrics['test/cider']:.1f} | naming every word all references share: "
            "50.0 % of images (words 75.0 %)") in printed
    plugin.clapkit_run_end(run=run, summary=metrics)
    assert "test/consensus_all 50.0" in capsys.readouterr().out
