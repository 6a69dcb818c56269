"""reasoning-gym's tasks scored by reasoning-gym's own verifiers: ``rewards=[reasoning_gym]``.

Problems come from ``data.train=reasoning_gym:TASK[,TASK...]`` (`r1lab.problem_formats`): each
row carries its generator's entry in the ``reasoning_gym_entry`` column, and this reward hands the
completion's ``<answer>`` to that task's ``score_answer`` (a float in [0, 1]; partial credit where
the task gives it). Rows from elsewhere score None: the reward doesn't apply to them.
"""

from __future__ import annotations

import logging
from typing import Any

from r1lab.rewards.columns import column, completion_text

logger = logging.getLogger(__name__)


def reasoning_gym_reward(completions: list[Any], reasoning_gym_entry: list[Any] | None = None,
                         **columns: Any) -> list[float | None]:
    """reasoning-gym's score of each completion's ``<answer>`` against its row's entry.

    A completion without an answer tag scores 0.0; a scorer that fails on odd model output
    scores 0.0 (model output must never stop a run); a row with no entry scores None."""
    from reasoning_gym import get_score_answer_fn
    from reasoning_gym.utils import extract_answer

    entries = column(reasoning_gym_entry, len(completions))
    scores: list[float | None] = []
    for completion, entry in zip(completions, entries):
        if not isinstance(entry, dict):
            scores.append(None)
            continue
        answer = extract_answer(completion_text(completion), tag_name="answer")
        if answer is None:
            scores.append(0.0)
            continue
        try:
            score = float(get_score_answer_fn(entry["metadata"]["source_dataset"])(answer, entry))
        except Exception as e:  # noqa: BLE001 -- a scorer tripped by model output scores it 0
            logger.debug("reasoning-gym scorer failed on %r: %s", answer[:80], e)
            score = 0.0
        scores.append(score)
    return scores
