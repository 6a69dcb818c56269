"""Format rewards: R1-Zero's "the thinking must be inside <think> ... </think>".

All three accept a prompt that already opened the think block (the R1 README forces
generation to start with "<think>\\n"): when the prompt column ends with "<think>", the tag is
counted as the completion's first (see `r1lab.rewards.columns.think_prefixed`).
No regexes over the completion: tag positions come from ``str.find``/``str.count``, linear
in the length whatever the model writes.
"""

from __future__ import annotations

from typing import Any

from r1lab.rewards.columns import think_prefixed

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
READABLE_TAGS = ("<think>", "</think>", "<summary>", "</summary>", "<answer>", "</answer>")


def _is_strict_format(text: str, tags: tuple[str, ...] = TAGS) -> bool:
    """Each of `tags` (open/close pairs) exactly once, in order, only whitespace outside the blocks."""
    if any(text.count(tag) != 1 for tag in tags):
        return False
    positions = [text.find(tag) for tag in tags]
    if positions != sorted(positions):
        return False
    ends = [position + len(tag) for position, tag in zip(positions, tags)]
    # text before the first block, between consecutive blocks, after the last one
    gaps = [text[: positions[0]]] + [text[ends[i] : positions[i + 1]] for i in range(1, len(tags) - 1, 2)]
    return not any(gap.strip() for gap in gaps) and not text[ends[-1] :].strip()


def format_reward(completions: list[str], **columns: Any) -> list[float | None]:
    """1.0 if the completion is exactly ``<think> ... </think> <answer> ... </answer>``, else 0.0.

    Each tag exactly once, in that order; only whitespace before, between the blocks and after.

    >>> format_reward(["<think> 2+2 </think>\\n<answer>4</answer>", "<answer>4</answer>",
    ...                "<think> a </think> <answer>4</answer> more text"])
    [1.0, 0.0, 0.0]
    """
    return [float(_is_strict_format(text)) for text in think_prefixed(completions, columns)]


def readable_format_reward(completions: list[str], **columns: Any) -> list[float | None]:
    """1.0 for R1's readable format, ``<think> .. </think> <summary> .. </summary> <answer> .. </answer>``.

    R1 (v1 section 2.3.1) makes the cold-start data readable by ending each response with a
    summary of the reasoning; this checks that structure as strictly as `format_reward` checks
    R1-Zero's (each tag once, in order, only whitespace outside the blocks).

    >>> readable_format_reward(["<think> 2+2 </think> <summary> It is 4. </summary> <answer>4</answer>",
    ...                         "<think> 2+2 </think> <answer>4</answer>"])
    [1.0, 0.0]
    """
    return [float(_is_strict_format(text, READABLE_TAGS)) for text in think_prefixed(completions, columns)]


def _is_lenient_format(text: str) -> bool:
    start = text.find("<think>")
    end = text.find("</think>", start + 1) if start >= 0 else -1
    if end < 0:
        return False
    rest = text[end + len("</think>") :]
    answer = rest.find("<answer>")
    return (answer >= 0 and rest.find("</answer>", answer) >= 0) or "\\boxed{" in rest


def lenient_format_reward(completions: list[str], **columns: Any) -> list[float | None]:
    r"""1.0 if a ``<think> ... </think>`` block is followed by an answer tag pair or a ``\boxed{``.

    Text around the blocks is allowed; for models whose answers are boxed prose.

    >>> lenient_format_reward(["Sure. <think> 2+2 </think> so \\boxed{4}.", "\\boxed{4}"])
    [1.0, 0.0]
    """
    return [float(_is_lenient_format(text)) for text in think_prefixed(completions, columns)]


def tag_count_reward(completions: list[str], **columns: Any) -> list[float | None]:
    """0.25 for each of the four tags that appears exactly once (open-r1's partial credit).

    Departure from open-r1: the tags need not sit on their own lines (open-r1 counts
    "<think>\\n", "\\n</think>\\n", "\\n<answer>\\n" and "\\n</answer>"), since R1's template
    writes them inline.

    >>> tag_count_reward(["<think> x </think> <answer>1</answer>", "<think> x", "<answer>1</answer><answer>"])
    [1.0, 0.25, 0.25]
    """
    return [sum(0.25 for tag in TAGS if text.count(tag) == 1) for text in think_prefixed(completions, columns)]
