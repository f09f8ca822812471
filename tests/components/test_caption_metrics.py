"""BLEU-4 and CIDEr-D rebuilt by hand on tiny captions (the counts are written out below)."""

from __future__ import annotations

import math

import pytest

from clapkit.metrics_caption import caption_scores, caption_tokens, cider_d, corpus_bleu


def test_tokens_drop_case_and_punctuation():
    assert caption_tokens("A Red, circle.  On the LEFT!") == ["a", "red", "circle", "on",
                                                             "the", "left"]


def test_bleu4_of_an_exact_match_is_one():
    assert corpus_bleu({"a": "a red circle on the left"},
                       {"a": ["a red circle on the left"]}) == pytest.approx(1.0)


def test_bleu4_counts_clipped_ngrams_and_the_closest_reference_length():
    cand = {"x": "a red circle on the left"}                      # 6 words
    refs = {"x": ["a red circle on the right side", "the red circle"]}   # 7 and 3 words
    # unigrams 5/6 (all but "left"), bigrams 4/5, trigrams 3/4, 4-grams 2/3;
    # closest reference length: 7 (|7-6| = 1 < |3-6|) -> BP = exp(1 - 7/6)
    want = math.exp(1 - 7 / 6) * math.exp((math.log(5 / 6) + math.log(4 / 5)
                                           + math.log(3 / 4) + math.log(2 / 3)) / 4)
    assert corpus_bleu(cand, refs) == pytest.approx(want, rel=1e-12)


def test_bleu4_clips_repeated_words_by_the_reference_count():
    # Papineni's example: "the" x7 against references holding it at most twice
    cand = {"x": "the the the the the the the"}
    refs = {"x": ["the cat is on the mat", "there is a cat on the mat"]}
    # unigram precision 2/7; no bigram "the the" in the references -> BLEU-4 is 0
    assert corpus_bleu(cand, refs) == 0.0
    assert corpus_bleu(cand, refs, max_n=1) == pytest.approx(2 / 7)   # BP = 1 (c=7 >= r=7)


def test_bleu4_is_corpus_level_not_a_mean_of_sentences():
    cand = {"a": "a red circle on the left", "b": "blue square in the middle"}
    refs = {"a": ["a red circle on the left"], "b": ["a blue square in the middle"]}
    # a: 6/6, 5/5, 4/4, 3/3; b (5 words): 5/5, 4/4, 3/3, 2/2; r = 6 + 6, c = 6 + 5
    want = math.exp(1 - 12 / 11)
    assert corpus_bleu(cand, refs) == pytest.approx(want, rel=1e-12)
    mean_of_sentences = (1.0 + math.exp(1 - 6 / 5)) / 2
    assert abs(want - mean_of_sentences) > 1e-3


def test_brevity_tie_takes_the_shorter_reference():
    # candidate of 4 words, references of 3 and 5 words: tie -> r = 3, so BP = 1
    cand = {"x": "red circle on left"}
    refs = {"x": ["red circle left", "red circle on left side"]}
    # 1-grams 4/4, 2-grams 3/3 (red circle, circle on, on left), 3-grams 2/2, 4-grams 1/1
    assert corpus_bleu(cand, refs) == pytest.approx(1.0)


def test_cider_d_of_exact_matches():
    # every n-gram occurs in one image's references: idf = log 2 for all; unigram and
    # bigram cosines are 1, no 3- or 4-grams: 10 * (1 + 1 + 0 + 0) / 4
    mean, per = cider_d({"a": "red circle", "b": "blue square"},
                        {"a": ["red circle"], "b": ["blue square"]})
    assert per == pytest.approx({"a": 5.0, "b": 5.0}) and mean == pytest.approx(5.0)


def test_cider_d_ngram_in_every_image_has_no_weight():
    # "a" is in both images' references: idf 0, so the unigram cosine stays 1 over the rest
    mean, _ = cider_d({"a": "a red circle", "b": "a blue square"},
                      {"a": ["a red circle"], "b": ["a blue square"]})
    assert mean == pytest.approx(10 * 3 / 4)


def test_cider_d_clips_counts_and_penalises_length():
    lg = math.log(2)
    _, per = cider_d({"a": "red red circle", "b": "blue square"},
                     {"a": ["red circle"], "b": ["blue square"]})
    # unigrams: v_c = {red: 2lg, circle: lg}, v_r = {red: lg, circle: lg}
    #   clipped dot = min(2lg, lg) lg + lg lg = 2 lg^2; |v_c| = sqrt5 lg, |v_r| = sqrt2 lg
    uni = 2 * lg ** 2 / (math.sqrt(5) * lg * math.sqrt(2) * lg)
    # bigrams: v_c = {red red: lg (df 0 -> log max(1, 0) = 0), red circle: lg}, v_r = {red circle}
    bi = lg ** 2 / (math.sqrt(2) * lg * lg)
    # trigram "red red circle" has no reference trigram: 0; length 3 vs 2, sigma 6
    want = 10 * math.exp(-1 / 72) * (uni + bi) / 4
    assert per["a"] == pytest.approx(want, rel=1e-12)
    assert per["b"] == pytest.approx(5.0)


def test_cider_d_averages_over_references():
    _, one = cider_d({"a": "red circle", "b": "blue square"},
                     {"a": ["red circle"], "b": ["blue square"]})
    _, two = cider_d({"a": "red circle", "b": "blue square"},
                     {"a": ["red circle", "green star"], "b": ["blue square"]})
    # the second reference shares nothing with the candidate: it halves the mean score
    assert two["a"] == pytest.approx(one["a"] / 2)


def test_scores_name_both_metrics_and_refuse_missing_references():
    s = caption_scores({"a": "red circle"}, {"a": ["red circle"]})
    assert set(s) == {"bleu4", "cider"}
    with pytest.raises(ValueError, match="no reference caption for 'b'"):
        caption_scores({"a": "red circle", "b": "x"}, {"a": ["red circle"]})
