"""Rule-based rewards (R1 uses no neural reward model for reasoning) and how to combine them.

A reward is a pure function ``fn(completions: list[str], **columns) -> list[float | None]``
(TRL's signature): `columns` are the dataset's columns as lists aligned with `completions`
(``answer=[...]``, ``task=[...]``), unknown ones are ignored, and None means "can't judge this
example". Pick rewards by name from `REWARDS`, or load your own with `load_reward`.
Evaluation imports the same checkers (`extract_answer`, `answers_match`, `is_correct`), so
training and evaluation can't disagree about what counts as right.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import math
import sys
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

from r1lab.errors import R1labError
from r1lab.rewards.calling import (FailurePolicy, RewardInputs, TrainerState, call_reward,
                                   conversational_completions)
from r1lab.rewards.answers import answers_match, extract_answer, normalise
from r1lab.rewards.code_tests import binary_code_reward, code_reward, extract_code, make_code_reward
from r1lab.rewards.gym import reasoning_gym_reward
from r1lab.rewards.formatting import format_reward, lenient_format_reward, readable_format_reward, tag_count_reward
from r1lab.rewards.rules import (
    accuracy_reward,
    cosine_length_reward,
    cosine_scale,
    faithfulness_reward,
    is_correct,
    make_accuracy_reward,
    make_cosine_length_reward,
)
from r1lab.rewards.text import (
    language_consistency_reward,
    language_share,
    make_language_consistency_reward,
    make_repetition_penalty,
    repetition_penalty_reward,
)

logger = logging.getLogger(__name__)

RewardFn = Callable[..., list[float | None]]

REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "format_lenient": lenient_format_reward,
    "format_readable": readable_format_reward,
    "tag_count": tag_count_reward,
    "language_consistency": language_consistency_reward,
    "cosine_length": cosine_length_reward,
    "repetition": repetition_penalty_reward,
    "faithfulness": faithfulness_reward,
    "code": code_reward,
    "code_binary": binary_code_reward,
    "reasoning_gym": reasoning_gym_reward,  # needs `pip install reasoning-gym` (make install has it)
}


def load_reward(spec: str) -> RewardFn:
    """A reward function from a registry name, ``path/to/file.py:function`` or ``package.module:function``.

    A name that is a class is instantiated once, with no arguments (its ``__init__`` is the set-up);
    the instance is then called like a function.

    >>> load_reward("format") is format_reward
    True
    """
    if spec in REWARDS:
        return REWARDS[spec]
    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name:
        raise R1labError(
            f"unknown reward {spec!r}: use one of {sorted(REWARDS)}, 'path/to/file.py:function' "
            "or 'package.module:function'"
        )
    if source.endswith(".py") or "/" in source or "\\" in source:
        module = _module_from_file(spec, Path(source))
    else:
        module = _module_from_name(spec, source)
    fn = getattr(module, name, None)
    if fn is None:
        raise R1labError(f"reward {spec!r}: {source} has no function {name!r}")
    if inspect.isclass(fn):  # a reward class: set up once (load a model, open a client), then called
        fn = fn()
    if not callable(fn):
        raise R1labError(f"reward {spec!r}: {name!r} in {source} is not callable")
    return fn


def _module_from_file(spec: str, path: Path) -> Any:
    if not path.is_file():
        raise R1labError(f"reward {spec!r}: no such file {path}")
    module_name = f"r1lab_user_reward_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise R1labError(f"reward {spec!r}: {path} can't be imported as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # so dataclasses and pickling inside the file work
    try:
        module_spec.loader.exec_module(module)
    except (ImportError, SyntaxError) as e:
        del sys.modules[module_name]
        raise R1labError(f"reward {spec!r}: importing {path} failed: {type(e).__name__}: {e}") from e
    return module


def _module_from_name(spec: str, module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise R1labError(f"reward {spec!r}: can't import module {module_name!r}: {e}") from e


def reward_name(fn: RewardFn) -> str:
    """The name a reward is logged under: its registry name, else its function name."""
    for name, registered in REWARDS.items():
        if fn is registered:
            return name
    return getattr(fn, "__name__", None) or type(fn).__name__


def combine_rewards(
    fns: Sequence[RewardFn | tuple[str, RewardFn]],
    weights: Sequence[float] | None,
    completions: list[str],
    *,
    inputs: RewardInputs | None = None,
    failures: FailurePolicy | None = None,
    **columns: Any,
) -> tuple[list[float], dict[str, list[float | None]]]:
    """The weighted sum of several rewards, and each reward's own scores (for logging).

    `fns` holds reward functions, or ``(name, fn)`` pairs to log them under a name of your own
    (e.g. the spec given to `load_reward`); a bare function is named by `reward_name`.
    total[i] = sum_k weights[k] * scores_k[i] over the rewards whose score is not None (0.0 when
    none can judge example i). Each reward is called as TRL calls it (r1lab.rewards.calling):
    `inputs` carries the prompts, completion ids and trainer state; with conversational prompts
    the completions are passed as messages. A reward that raises stops the run with its traceback,
    unless `failures` (a FailurePolicy with mode "skip") lets the call count as None for the whole
    batch. A reward returning the wrong number of scores, or non-numbers, is a bug in its
    definition: R1labError. NaN/inf scores count as None.

    >>> combine_rewards([accuracy_reward, format_reward], [1.0, 0.5],
    ...                 ["<think> 2+2 </think> <answer>4</answer>"], answer=["4"])[0]
    [1.5]
    """
    weights = [1.0] * len(fns) if weights is None else list(weights)
    if len(weights) != len(fns):
        raise R1labError(f"{len(fns)} reward functions but {len(weights)} reward weights")
    n = len(completions)
    total = [0.0] * n
    per_fn: dict[str, list[float | None]] = {}
    inputs = inputs or RewardInputs()
    passed = completions
    if inputs.prompts is not None and any(isinstance(p, list) for p in inputs.prompts):
        passed = conversational_completions(completions)
    for entry, weight in zip(fns, weights):
        name, fn = entry if isinstance(entry, tuple) else (reward_name(entry), entry)
        if name in per_fn:
            name = f"{name}#{sum(key.split('#')[0] == name for key in per_fn) + 1}"
        scores = _call_reward(fn, name, passed, columns, inputs, failures or FailurePolicy())
        per_fn[name] = scores
        for i, score in enumerate(scores):
            if score is not None:
                total[i] += weight * score
    return total, per_fn


def _call_reward(fn: RewardFn, name: str, completions: list, columns: dict[str, Any], inputs: RewardInputs,
                 failures: FailurePolicy) -> list[float | None]:
    n = len(completions)
    try:
        raw = call_reward(fn, completions, columns, inputs)
    except Exception as e:  # noqa: BLE001 -- re-raised unless reward_failures=skip allows it
        failures.failed(name, e)
        return [None] * n
    failures.succeeded(name)
    try:
        raw = list(raw)
    except TypeError:
        raise R1labError(f"reward {name!r} returned {type(raw).__name__}, not a list of scores") from None
    if len(raw) != n:
        raise R1labError(f"reward {name!r} returned {len(raw)} scores for {n} completions")
    scores: list[float | None] = []
    for score in raw:
        if score is None:
            scores.append(None)
            continue
        try:
            value = float(score)
        except (TypeError, ValueError):
            raise R1labError(f"reward {name!r} returned a non-number score {score!r:.50}") from None
        if not math.isfinite(value):
            logger.warning("reward %r returned %s; scored as None", name, value)
            scores.append(None)
        else:
            scores.append(value)
    return scores


__all__ = [
    "REWARDS", "FailurePolicy", "RewardInputs", "TrainerState", "accuracy_reward", "answers_match",
    "combine_rewards", "cosine_length_reward", "cosine_scale", "extract_answer", "extract_code",
    "format_reward", "is_correct", "language_consistency_reward", "language_share", "lenient_format_reward",
    "load_reward", "make_accuracy_reward", "make_code_reward", "make_cosine_length_reward",
    "make_language_consistency_reward", "make_repetition_penalty", "normalise", "readable_format_reward",
    "repetition_penalty_reward", "reward_name", "tag_count_reward",
]
