"""``clapkit_predict``: what plugins add to a prediction row is printed under the class
line (strings as ``key: value``, lists joined with `` | ``); the row's own keys come first."""

from __future__ import annotations

from clapkit.hookspecs import clapkit_predict
from clapkit.predict import BASE_KEYS, format_predictions


def test_added_keys_are_printed_under_the_class_line():
    row = {"input": "a.png", "predicted": "cat", "probability": 0.75,
           "probabilities": {"cat": 0.75, "dog": 0.25}, "face_detected": None,
           "caption": "a cat on a mat", "matches": ["a cat", "the mat"]}
    lines = format_predictions([row], top=2)
    assert lines == ["a.png: cat (75.0%)   [cat 75.0%, dog 25.0%]",
                     "    caption: a cat on a mat", "    matches: a cat | the mat"]
    assert "face_detected" in BASE_KEYS and "caption" not in BASE_KEYS


def test_the_hook_is_declared_with_the_predictions_argument():
    import inspect
    assert list(inspect.signature(clapkit_predict).parameters) == ["predictions"]
