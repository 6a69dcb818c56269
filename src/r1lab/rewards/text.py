"""Readability rewards: R1's language-consistency reward, and an n-gram repetition penalty."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from r1lab.errors import R1labError
from r1lab.rewards.columns import column, completion_text

RewardFn = Callable[..., list[float | None]]

# Unicode blocks of the scripts we tell apart. Python's `re` has no \p{Script}, so ranges.
_LATIN = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff"
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_KANA = "\u3040-\u309f\u30a0-\u30ff"
_HANGUL = "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"
_CYRILLIC = "\u0400-\u04ff"
_GREEK = "\u0370-\u03ff"
_KNOWN = _LATIN + _HAN + _KANA + _HANGUL + _CYRILLIC + _GREEK
_WORD_RE = re.compile(
    f"(?P<han>[{_HAN}])|(?P<kana>[{_KANA}])"  # no spaces between words: one character, one word
    f"|(?P<latin>[{_LATIN}]+)|(?P<hangul>[{_HANGUL}]+)|(?P<cyrillic>[{_CYRILLIC}]+)"
    f"|(?P<greek>[{_GREEK}]+)|(?P<other>(?:(?![{_KNOWN}])[^\\W\\d_])+)"
)
_LATEX_COMMAND_RE = re.compile(r"\\[A-Za-z]+")  # \frac, \sqrt: notation, not English words

TARGET_SCRIPTS = {
    "en": {"latin"}, "latin": {"latin"},
    "zh": {"han"}, "ja": {"han", "kana"}, "ko": {"hangul"}, "ru": {"cyrillic"},
}


def _reasoning(text: str) -> str:
    """The chain of thought: inside <think> ... </think>, or the whole text when there is none."""
    start = text.find("<think>")
    begin = 0 if start < 0 else start + len("<think>")
    end = text.find("</think>", begin)
    return text[begin:] if end < 0 else text[begin:end]


def language_share(text: str, target: str) -> float:
    """Share of the words of `text` written in `target`'s script (R1 Eq. 7's ratio).

    A word is a run of letters of one script (each Han or kana character counts as a word);
    digits, punctuation, LaTeX commands and Greek letters (maths symbols: pi, theta) are not
    words. The check is by script, not language: "en" counts any Latin-script word, which is
    what catches R1-Zero's language mixing (English reasoning drifting into Chinese). A text
    with no words at all is consistent (1.0): a purely numeric trace mixes no languages.

    >>> language_share("the answer is 答", "en"), language_share("x = 3 + 4", "en")
    (0.75, 1.0)
    """
    scripts = TARGET_SCRIPTS[target]
    words = in_target = 0
    for match in _WORD_RE.finditer(_LATEX_COMMAND_RE.sub(" ", text)):
        if match.lastgroup == "greek":
            continue
        words += 1
        in_target += match.lastgroup in scripts
    return 1.0 if words == 0 else in_target / words


def make_language_consistency_reward(target: str = "en") -> RewardFn:
    """R1's language-consistency reward for a default target language (see `language_share`)."""
    if target not in TARGET_SCRIPTS:
        raise R1labError(f"unknown target language {target!r}; choose from {sorted(TARGET_SCRIPTS)}")

    def language_consistency_reward(completions: list[str], language: list[str] | None = None,
                                    **columns: Any) -> list[float | None]:
        """Share of target-language words in the reasoning (R1 Eq. 7), in [0, 1].

        The reasoning is the text inside <think> ... </think> (the whole completion when there
        is no such block). A ``language`` column overrides the target per example; an unknown
        language there scores None.

        >>> language_consistency_reward(["<think> so 2+2 = 四 </think> <answer>4</answer>"])
        [0.5]
        """
        scores: list[float | None] = []
        for completion, lang in zip(completions, column(language, len(completions))):
            lang = target if lang is None else str(lang)
            if lang not in TARGET_SCRIPTS:
                scores.append(None)
                continue
            scores.append(language_share(_reasoning(completion_text(completion)), lang))
        return scores

    return language_consistency_reward


language_consistency_reward = make_language_consistency_reward()


def make_repetition_penalty(ngram_size: int = 3, max_penalty: float = -1.0) -> RewardFn:
    """The n-gram repetition penalty (open-r1's, after Yeo et al. 2025) for given parameters."""
    if ngram_size < 1:
        raise R1labError(f"repetition penalty ngram_size must be >= 1, got {ngram_size}")
    if max_penalty > 0:
        raise R1labError(f"repetition penalty max_penalty must be <= 0, got {max_penalty}")

    def repetition_penalty_reward(completions: list[str], **columns: Any) -> list[float | None]:
        """-(1 - distinct n-grams / n-grams) * |max_penalty| over lower-cased whitespace words.

        0.0 for a text shorter than one n-gram. "a b c a b c" has trigrams abc, bca, cab, abc:
        3 distinct of 4, so the penalty is -(1 - 3/4) = -0.25.

        >>> repetition_penalty_reward(["a b c a b c", "a b", "one two three four"])
        [-0.25, 0.0, 0.0]
        """
        scores: list[float | None] = []
        for completion in completions:
            words = completion_text(completion).lower().split()
            ngrams = [tuple(words[i : i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
            if not ngrams:
                scores.append(0.0)
                continue
            scores.append((1.0 - len(set(ngrams)) / len(ngrams)) * max_penalty + 0.0)  # + 0.0: no -0.0
        return scores

    return repetition_penalty_reward


repetition_penalty_reward = make_repetition_penalty()
