"""Greedy batches under a padded token budget, shared by SFT batching and GRPO's micro-batches."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def padded_batches(order: Iterable[int], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices of `order`, cut into consecutive batches whose padded size (rows x the longest
    row) stays within `budget`; a row longer than the budget gets a batch of its own.

    >>> padded_batches([1, 3, 0, 2], [5, 2, 9, 3], 10)
    [[1, 3], [0], [2]]
    """
    batches, current, longest = [], [], 0
    for i in order:
        length = int(lengths[i])
        if current and (len(current) + 1) * max(longest, length) > budget:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, length)
    if current:
        batches.append(current)
    return batches
