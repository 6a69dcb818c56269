"""Evaluation metrics by the paper's protocol: pass@1 over k samples, unbiased pass@k, cons@k.

Pure functions over plain Python values, tested against hand-computed numbers.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from math import comb

# Phrases that mark a model re-checking itself (the paper's "aha": "Wait, wait. Wait.").
REFLECTION_PHRASES = ("wait", "let me check", "recheck", "re-check", "double-check", "double check",
                      "let me verify", "hmm")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k) for n samples with c correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def pass_at_1(correct: Sequence[bool]) -> float:
    """The paper's pass@1: the mean correctness over the k samples of one problem."""
    return sum(map(bool, correct)) / len(correct) if correct else 0.0


def cons_at_k(answers: Sequence[str | None], correct: Sequence[bool]) -> float:
    """Majority vote over the extracted answers of one problem's k samples.

    `answers[i]` is sample i's answer in canonical form (None: no answer, which does not vote);
    `correct[i]` whether that answer is right. A tie between the most common answers scores the
    share of tied answers that are right (the expected score of breaking the tie at random), so
    the result does not depend on the order of the samples.
    """
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    winners = [a for a, count in votes.items() if count == top]
    right = {a for a, ok in zip(answers, correct) if a is not None and ok}
    return sum(a in right for a in winners) / len(winners)


def has_reflection(text: str, phrases: Sequence[str] = REFLECTION_PHRASES) -> bool:
    return _phrase_pattern(tuple(phrases)).search(text) is not None


def reflection_rate(texts: Sequence[str], phrases: Sequence[str] = REFLECTION_PHRASES) -> float:
    """Share of texts with at least one reflection phrase (whole words, any case)."""
    if not texts:
        return 0.0
    pattern = _phrase_pattern(tuple(phrases))
    return sum(pattern.search(t) is not None for t in texts) / len(texts)


_PATTERNS: dict[tuple[str, ...], re.Pattern] = {}


def _phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern:
    if phrases not in _PATTERNS:
        alternatives = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
        _PATTERNS[phrases] = re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)
    return _PATTERNS[phrases]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
