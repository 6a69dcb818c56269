"""Reading the batch a reward gets: completions and dataset columns as aligned lists."""

from __future__ import annotations

from typing import Any


def completion_text(completion: Any) -> str:
    """The completion as text: TRL passes strings, or for chat data a list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return "" if completion is None else str(completion)


def column(values: Any, n: int) -> list[Any]:
    """A per-example column, or n Nones when it is absent (or a scalar, which we don't trust)."""
    if isinstance(values, (list, tuple)) and len(values) == n:
        return list(values)
    return [None] * n


def example_rows(n: int, columns: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per example with every per-example column (non-list kwargs are left out)."""
    per_example = {k: v for k, v in columns.items() if isinstance(v, (list, tuple)) and len(v) == n}
    return [{k: v[i] for k, v in per_example.items()} for i in range(n)]


def think_prefixed(completions: list[Any], columns: dict[str, Any]) -> list[str]:
    """Completions as text, with "<think>" put back where the prompt already opened it.

    The R1 README forces generation to start with "<think>\\n", so that tag then sits at the
    end of the prompt, not in the completion. A prompt column (TRL's ``prompts`` or the
    dataset's ``prompt``) whose text ends with "<think>" marks those examples.
    """
    texts = [completion_text(c) for c in completions]
    prompts = columns.get("prompts", columns.get("prompt"))
    for i, prompt in enumerate(column(prompts, len(texts))):
        if isinstance(prompt, str) and prompt.rstrip().endswith("<think>"):
            texts[i] = "<think>" + texts[i]
    return texts
