r"""Final-answer extraction and equivalence, shared by the rewards and by evaluation.

Both run on untrusted model output under optimisation pressure, so every scan here is linear
in the input, an answer longer than `MAX_ANSWER_CHARS` or nested deeper than `MAX_DEPTH` is
refused before any normalisation or parsing, and math-verify (sympy) only ever runs in a worker
process that is killed when it overruns its time (see `r1lab.rewards._mathverify`).

A policy that hedges gets nothing for it: "3 or 5" and two different boxes give no answer at
all; ``3 \lor 5``, ``3 \vee 5``, ``3 \cup 5`` and other forms math-verify can't read as one
expression are wrong (the prediction is read as LaTeX only, never by math-verify's fallback that
takes the last number in it); a set, list or ``\pm`` never equals a single value; ``\approx``
is wrong unless the reference has it too. Only definite verdicts are cached: a timeout or a busy
worker pool scores False this time and is asked again next time.
"""

from __future__ import annotations

import re
from decimal import Decimal
from functools import lru_cache

from r1lab.rewards import _mathverify

MAX_ANSWER_CHARS = 200  # longer "answers" are refused: no real final answer is that long
MAX_DIGITS = 100  # plain numerals with more digits never match (except by exact string)
MAX_REFERENCE_CHARS = 10_000  # longer references are compared as strings only
MAX_DEPTH = 16  # brackets and braces nested deeper than this: no real answer, and slow to parse
# In a prediction, wrong unless the reference has it too: "or"/"and" between values, and "about".
HEDGES = ("\\lor", "\\vee", "\\land", "\\wedge", "\\approx")

_OPEN, _CLOSE = "<answer>", "</answer>"
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_RE = re.compile(r"[{}\\]")
_BRACKET_RE = re.compile(r"[{}()\[\]]")
_OR_RE = re.compile(r"\bor\b", re.IGNORECASE)
_SPACE_RE = re.compile(r"\s+")
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_COMMAND_RE = re.compile(r"\\[a-zA-Z]+")
_LETTER_RE = re.compile(r"[a-zA-Z]")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


def extract_answer(completion: str) -> str | None:
    r"""The final answer of a completion, or None when there is no single, well-formed one.

    Where the answer is looked for:
    - ``<answer>...</answer>`` tags, when the completion has any. A ``\boxed{}`` inside a tag
      is unwrapped; boxes outside the tags (in the reasoning) are then ignored.
    - otherwise every ``\boxed{...}`` (or ``\fbox{...}``) in the completion, braces balanced.

    None when: no tag or box; a tag not closed, closed twice or nested; a box not closed (a
    truncated completion); two tags or boxes whose contents differ after normalisation (the
    same answer repeated is fine); an empty answer, one over `MAX_ANSWER_CHARS`, one with
    unbalanced braces, or one offering alternatives with the word "or" ("3 or 5").
    The answer comes back in its `normalise`d form ("$1,000.$" -> "1000").

    Commas are kept: "1, -2" is how MATH writes "all solutions", "(1,2)" a point, "1,000" a
    number; math-verify reads a comma list as a set, so "3, 5" never matches a reference "3".

    >>> extract_answer("<think> 2+2 </think> <answer> 4 </answer>")
    '4'
    >>> extract_answer(r"so the answer is \boxed{\frac{1}{2}}.")
    '\\frac{1}{2}'
    >>> extract_answer(r"\boxed{3} or maybe \boxed{5}") is None
    True
    >>> extract_answer("<answer>3 or 5</answer>") is None
    True
    """
    if not isinstance(completion, str):
        return None
    tags = _tag_contents(completion)
    if tags is None:
        return None
    if tags:
        candidates = []
        for content in tags:
            boxes = _box_contents(content)
            if boxes is None:
                return None
            candidates.extend(boxes or [content])
    else:
        candidates = _box_contents(completion)
        if not candidates:
            return None
    if any(not _shape_ok(c, 4 * MAX_ANSWER_CHARS) for c in candidates):  # don't even normalise junk
        return None
    distinct = {normalise(c) for c in candidates}
    if len(distinct) != 1:
        return None
    answer = distinct.pop()
    if not answer or len(answer) > MAX_ANSWER_CHARS or not _balanced(answer) or _OR_RE.search(answer):
        return None
    return answer


def _tag_contents(text: str) -> list[str] | None:
    """Contents of every <answer> tag in order; None if the tags are malformed. Linear time."""
    contents: list[str] = []
    pos = 0
    while True:
        start = text.find(_OPEN, pos)
        if text.find(_CLOSE, pos, len(text) if start < 0 else start) >= 0:
            return None  # a closing tag with no opening one
        if start < 0:
            return contents
        end = text.find(_CLOSE, start)
        if end < 0:
            return None  # never closed
        content = text[start + len(_OPEN) : end]
        if _OPEN in content:
            return None  # nested or doubled opening tag
        contents.append(content)
        pos = end + len(_CLOSE)


def _box_contents(text: str) -> list[str] | None:
    r"""Contents of every top-level \boxed{...}; None if one is unclosed or too long.

    Linear time: the scan of one box stops after `4 * MAX_ANSWER_CHARS` characters (such a
    box makes the whole answer invalid anyway), and the next search starts after the box.
    """
    contents: list[str] = []
    pos = 0
    while (match := _BOX_RE.search(text, pos)) is not None:
        start = match.end()
        end = _closing_brace(text, start, start + 4 * MAX_ANSWER_CHARS)
        if end is None:
            return None
        contents.append(text[start:end])
        pos = end + 1
    return contents


def _closing_brace(text: str, start: int, limit: int) -> int | None:
    """Index of the brace closing the one opened just before `start`, if found before `limit`."""
    depth = 1
    skip_until = -1
    for match in _BRACE_RE.finditer(text, start, min(limit, len(text))):
        i = match.start()
        if i < skip_until:
            continue  # the character escaped by a backslash: \{ \} \\
        char = match.group()
        if char == "\\":
            skip_until = i + 2
        elif char == "{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return i
    return None


def _balanced(text: str) -> bool:
    r"""Braces balance (escaped \{ \} aside): wrapping the answer in \boxed{} can't break out."""
    depth = 0
    skip_until = -1
    for match in _BRACE_RE.finditer(text):
        i, char = match.start(), match.group()
        if i < skip_until:
            continue
        if char == "\\":
            skip_until = i + 2
        else:
            depth += 1 if char == "{" else -1
            if depth < 0:
                return False
    return depth == 0


def _shape_ok(text: str, max_chars: int) -> bool:
    """At most `max_chars` characters and `MAX_DEPTH` levels of brackets: checked before anything
    else reads the text, so nothing after it can be quadratic in a hostile answer."""
    if len(text) > max_chars:
        return False
    depth = 0
    for match in _BRACKET_RE.finditer(text):
        depth += 1 if match.group() in "{([" else -1
        if depth > MAX_DEPTH:
            return False
    return True


def _unwrap_box(text: str) -> str:
    r"""``\boxed{\boxed{5}}`` -> ``5``: strip boxes that span the whole text."""
    for _ in range(MAX_DEPTH):
        if (match := _BOX_RE.match(text)) is None:
            break
        end = _closing_brace(text, match.end(), len(text))
        if end != len(text) - 1:
            break
        text = text[match.end() : end].strip()
    return text


def normalise(answer: str) -> str:
    r"""The form two answers are compared in before any maths: ``$1,000.$`` -> ``1000``.

    Strips whitespace, surrounding ``$``/``$$``/``\(\)``/``\[\]``, a whole-text ``\boxed{}``,
    a trailing full stop, thin spaces (``\,`` ``\!``), and thousands separators in a plain
    number (``1,000`` or ``1{,}000``; ``1,00`` is left alone, it is not a thousands form).
    """
    text = _SPACE_RE.sub(" ", answer).strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
            text = text[len(left) : len(text) - len(right)].strip()
            break
    text = _unwrap_box(text).rstrip(".").strip()
    text = text.replace("\\!", "").replace("\\,", "").replace("{,}", ",")
    if _THOUSANDS_RE.fullmatch(text):
        text = text.replace(",", "")
    return text


def _several_relations(pred: str, ref: str) -> bool:
    r"""math-verify reads ``a = b`` as b, whatever a is: "x=3 \cup x=5", "3 = 5" and
    "\frac{6}{2} = 5" would all be 5. A prediction may have as many "=" as the reference, or one
    whose left side names a variable (``x = 5``, ``f(2) = 7``), not a constant."""
    count = pred.count("=")
    if count <= ref.count("="):
        return False
    return count > 1 or not _LETTER_RE.search(_COMMAND_RE.sub("", pred.partition("=")[0]))


def _plain_number(text: str) -> Decimal | None:
    """A plain decimal numeral as an exact Decimal (no floats: 1e400 can't become inf == inf)."""
    if not _NUMBER_RE.fullmatch(text) or sum(c.isdigit() for c in text) > MAX_DIGITS:
        return None
    return Decimal(text)


def answers_match(predicted: str, reference: str, timeout: float = 5.0) -> bool:
    r"""Whether a predicted final answer is mathematically equivalent to the reference.

    First, before any normalisation: a prediction over 4 x `MAX_ANSWER_CHARS` characters or
    nested deeper than `MAX_DEPTH` -> False (a reference over `MAX_REFERENCE_CHARS` or too deep
    is compared as a string only). Fast paths, all in-process: equal after `normalise` -> True;
    both plain numerals -> compared exactly as Decimals (so "0.5" == "0.50", but "0.333" !=
    "0.3333"); a numeral over `MAX_DIGITS` digits, an answer over `MAX_ANSWER_CHARS`, unbalanced
    braces, a box left inside the answer (a second answer), a hedge (`HEDGES`, the word "or")
    the reference doesn't have, or more "=" than the reference (``3 = 5``) -> False.
    Anything else goes to math-verify (each side wrapped in ``\boxed{}``, reference as gold,
    the prediction read as LaTeX only) in a worker process; past `timeout` seconds the worker is
    killed and the answer is False, but not cached. Safe from any thread, and bounded in time
    whatever the input.

    >>> answers_match("1,000", "1000"), answers_match("0.50", ".5"), answers_match("3", "4")
    (True, True, False)
    """
    if not isinstance(predicted, str) or not isinstance(reference, str):
        return False
    if not _shape_ok(reference, MAX_REFERENCE_CHARS):
        return predicted.strip() == reference.strip()
    if not _shape_ok(predicted, 4 * MAX_ANSWER_CHARS):
        return False
    pred, ref = normalise(predicted), normalise(reference)
    if not pred or not ref:
        return False
    if pred == ref:
        return True
    if len(pred) > MAX_ANSWER_CHARS or not _balanced(pred) or not _balanced(ref) or _BOX_RE.search(pred):
        return False
    if any(hedge in pred and hedge not in ref for hedge in HEDGES) or (_OR_RE.search(pred) and not _OR_RE.search(ref)):
        return False
    if _several_relations(pred, ref):
        return False
    pred_number, ref_number = _plain_number(pred), _plain_number(ref)
    if pred_number is not None and ref_number is not None:
        return pred_number == ref_number
    if _NUMBER_RE.fullmatch(pred) and pred_number is None:
        return False  # a numeral with more than MAX_DIGITS digits
    return _match_in_worker(pred, ref, float(timeout))


def _match_in_worker(pred: str, ref: str, timeout: float) -> bool:
    try:
        return _definite_match(pred, ref, timeout)
    except _Undecided:
        return False


class _Undecided(Exception):
    """math-verify gave no verdict (a timeout, a busy pool, a dead worker): wrong this time only."""


@lru_cache(maxsize=4096)
def _definite_match(pred: str, ref: str, timeout: float) -> bool:
    # A GRPO group repeats answers, so the cache saves most round trips. lru_cache keeps only
    # returned values, so an undecided call (raised) is asked again: a timeout under load must
    # not mark a right answer wrong for the rest of the run.
    verdict = _mathverify.match(pred, ref, timeout)
    if verdict is None:
        raise _Undecided
    return verdict
