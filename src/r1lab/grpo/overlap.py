"""Rollouts one update ahead: step t+1's groups are sampled while step t trains.

With ``max_off_policy_steps: 1`` GRPO stops alternating strictly. When step t's rollout is ready,
the policy's weights (before step t's update) are copied into `RolloutAhead.behind` and a
background thread samples and scores step t+1's groups from that copy while the main thread
trains step t. Step t+1 then trains on completions from weights one update old; the update
corrects for it as for any sampler other than the trainer: old log-probs from the training
forward, truncated importance weights pi_trainer / pi_sampler on each token (grpo/importance.py,
``tis`` with cap 2; logged as vllm/logp_diff_mean, vllm/logp_diff_max, vllm/is_capped_fraction).

What stays on the main thread: advantages, packing, the reference's log-probs (so a reference
refresh never races the thread), evaluation and checkpoints. No step is sampled ahead across a
checkpoint: the step after a save samples from the current weights, as a run resumed from that
checkpoint does, so a killed run still resumes exactly. Each group samples from its own seeded
stream, so which thread samples it changes nothing. The cost: one more copy of the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from r1lab.grpo.reference import frozen_copy


class RolloutAhead:
    """A background thread that samples the next step from a copy of the weights (see the module)."""

    def __init__(self, policy, collect: Callable[[Any, int], Any]):
        self.behind = frozen_copy(policy)
        self.collect = collect  # (model, step) -> that step's collected groups
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="rollout-ahead")
        self.pending: tuple[int, Future] | None = None

    def start(self, step: int, policy) -> None:
        """Sample `step` in the background from `policy`'s weights as they are now."""
        self.behind.load_state_dict(policy.state_dict())
        self.pending = (step, self.pool.submit(self.collect, self.behind, step))

    def take(self, step: int):
        """`step`'s groups if they were sampled ahead (waiting for the thread), else None."""
        if self.pending is None or self.pending[0] != step:
            return None
        _, future = self.pending
        self.pending = None
        return future.result()  # an error in the thread is raised here, in the training loop

    def close(self) -> None:
        if self.pending is not None:
            self.pending[1].cancel()
        self.pool.shutdown(wait=True)
