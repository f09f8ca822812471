"""Captioning metrics: corpus BLEU-4 and CIDEr-D against several reference captions.

Both follow the COCO caption evaluation (``pycocoevalcap``), written here in a few dozen
lines of pure Python instead of adding that package: its scorers need Java for the PTB
tokenizer (and METEOR/SPICE), which the CPU-only, offline machines this runs on do not
have, while BLEU and CIDEr-D themselves are small formulas.

* Tokens: lower-cased, punctuation dropped, split on white space (:func:`caption_tokens`;
  the PTB tokenizer does the same for plain captions).
* **BLEU-4** (Papineni et al., 2002), corpus level: clipped n-gram matches and candidate
  n-gram counts are summed over the whole corpus, ``p_n = matches_n / counts_n`` for n=1..4,
  ``BLEU = BP * exp(mean_n log p_n)``, brevity penalty ``BP = min(1, exp(1 - r / c))`` with
  ``c`` the total candidate length and ``r`` the sum of the reference lengths *closest* to
  each candidate (the shorter one on a tie). No smoothing: a corpus without a single matching
  4-gram scores 0 (pycocoevalcap adds 1e-15 / 1e-9 to the counts, a difference below 1e-6).
* **CIDEr-D** (Vedantam et al., 2015; pycocoevalcap's ``Cider``): per n (1..4) a TF-IDF
  vector of n-gram counts, ``idf = log(N_images) - log(max(1, df))`` with ``df`` the number
  of images whose references contain the n-gram; the score of a candidate against one
  reference is ``sum_g min(v_c[g], v_r[g]) * v_r[g] / (|v_c| |v_r|)`` (clipped cosine) times
  the length penalty ``exp(-(l_c - l_r)^2 / (2 sigma^2))``, sigma = 6; averaged over n and
  the references, times 10; the corpus score is the mean over images.
* **Consensus-word recall** (clapkit's own, no paper): the *consensus words* of an image are
  the words every one of its reference captions contains, less :data:`STOP_WORDS`; a caption
  should name at least what all annotators agreed on, and BLEU/CIDEr can stay high for a
  caption that misses one such word (one wrong word costs a few n-grams). ``consensus_all``
  is the share of images whose candidate contains all their consensus words, ``consensus_words``
  the share of all consensus words (pooled over images) the candidates contain. On the
  generated caption demo set the consensus words of a named image are exactly its colour and
  its shape, so ``consensus_all`` says how often a caption gets both right.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence

__all__ = ["caption_tokens", "ngrams", "corpus_bleu", "cider_d", "caption_scores",
           "STOP_WORDS", "consensus_words", "consensus_recall"]

_PUNCT = re.compile(r"[^\w\s]")

#: words no consensus counts: articles, common prepositions and conjunctions, and the
#: "there is a photo of ..." filler that caption templates and annotators share without
#: saying anything about the image
STOP_WORDS = frozenset({
    "a", "an", "the",
    "in", "on", "of", "at", "with", "to", "from", "by", "for", "near", "into",
    "and", "or", "but",
    "is", "are", "there", "this", "it", "its",
    "picture", "photo", "image",
})


def caption_tokens(text: str) -> list[str]:
    """Lower-cased words of ``text`` with punctuation removed."""
    return _PUNCT.sub(" ", text.lower()).split()


def ngrams(words: Sequence[str], n: int) -> Counter:
    """Counts of the ``n``-grams of ``words``."""
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def _check(candidates: Mapping, references: Mapping) -> list:
    keys = list(candidates)
    missing = [k for k in keys if not references.get(k)]
    if missing:
        raise ValueError(f"no reference caption for {missing[0]!r} ({len(missing)} of "
                         f"{len(keys)} candidates without references)")
    if not keys:
        raise ValueError("no candidate captions to score")
    return keys


def corpus_bleu(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]],
                max_n: int = 4) -> float:
    """Corpus BLEU-``max_n`` of one candidate per image id against its references."""
    keys = _check(candidates, references)
    matches, counts = [0] * max_n, [0] * max_n
    cand_len = ref_len = 0
    for k in keys:
        c = caption_tokens(candidates[k])
        refs = [caption_tokens(r) for r in references[k]]
        cand_len += len(c)
        ref_len += min((abs(len(r) - len(c)), len(r)) for r in refs)[1]
        for n in range(1, max_n + 1):
            cn = ngrams(c, n)
            most = Counter()
            for r in refs:
                most |= ngrams(r, n)                  # per n-gram: max count over refs
            matches[n - 1] += sum(min(v, most[g]) for g, v in cn.items())
            counts[n - 1] += sum(cn.values())
    if cand_len == 0 or min(matches) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matches, counts)) / max_n
    bp = min(1.0, math.exp(1 - ref_len / cand_len))
    return bp * math.exp(log_p)


def _tfidf(words: Sequence[str], n: int, df: Counter, log_n: float
           ) -> tuple[dict[tuple, float], float]:
    vec = {g: tf * (log_n - math.log(max(1.0, df[g]))) for g, tf in ngrams(words, n).items()}
    return vec, math.sqrt(sum(v * v for v in vec.values()))


def cider_d(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]],
            max_n: int = 4, sigma: float = 6.0) -> tuple[float, dict[str, float]]:
    """CIDEr-D of one candidate per image id: ``(corpus mean, per-image scores)``. The IDF
    comes from the references of the scored images (as in pycocoevalcap)."""
    keys = _check(candidates, references)
    refs = {k: [caption_tokens(r) for r in references[k]] for k in keys}
    df: Counter = Counter()
    for k in keys:
        df.update({g for r in refs[k] for n in range(1, max_n + 1) for g in ngrams(r, n)})
    log_n = math.log(float(len(keys)))
    per_image: dict[str, float] = {}
    for k in keys:
        c = caption_tokens(candidates[k])
        total = 0.0
        for r in refs[k]:
            penalty = math.exp(-((len(c) - len(r)) ** 2) / (2 * sigma ** 2))
            for n in range(1, max_n + 1):
                vc, nc = _tfidf(c, n, df, log_n)
                vr, nr = _tfidf(r, n, df, log_n)
                dot = sum(min(v, vr.get(g, 0.0)) * vr.get(g, 0.0) for g, v in vc.items())
                if nc and nr:
                    dot /= nc * nr
                total += penalty * dot / max_n
        per_image[k] = 10.0 * total / len(refs[k])
    return sum(per_image.values()) / len(per_image), per_image


def caption_scores(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]]
                   ) -> dict[str, float]:
    """``{"bleu4": ..., "cider": ...}`` for one generated caption per image id."""
    return {"bleu4": corpus_bleu(candidates, references),
            "cider": cider_d(candidates, references)[0]}


def consensus_words(references: Sequence[str]) -> set[str]:
    """The words every reference caption of one image contains, less :data:`STOP_WORDS`:
    what all annotators agreed the image shows (empty without references)."""
    if not references:
        return set()
    common = set(caption_tokens(references[0]))
    for r in references[1:]:
        common &= set(caption_tokens(r))
    return common - STOP_WORDS


def consensus_recall(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]]
                     ) -> dict[str, float]:
    """``{"consensus_all": share of images whose candidate contains every consensus word of
    its references, "consensus_words": share of the consensus words (pooled over images)
    the candidates contain}``. Images without consensus words say nothing and are left out;
    when no image has any, the result is ``{}`` (no figure rather than a made-up 0 or 1)."""
    keys = _check(candidates, references)
    images = complete = named = total = 0
    for k in keys:
        want = consensus_words(references[k])
        if not want:
            continue
        hit = len(want & set(caption_tokens(candidates[k])))
        images += 1
        complete += hit == len(want)
        named += hit
        total += len(want)
    if not images:
        return {}
    return {"consensus_all": complete / images, "consensus_words": named / total}
