"""Rollout environment noise: errors the policy cannot train away, so that a re-check can pay.

    r1lab grpo recipes/micro/r1_zero_noisy.yaml      # step_noise: 0.15
    python -m r1lab.micro.step_noise runs/micro/base/final 1.0    # does a re-check repair a corrupted step?

On the clean micro tasks R1-Zero trains step errors away, so re-checking ("wait , <step>")
never pays and fades (README, R1-Zero). With `step_noise: p`, while a rollout is sampled, the
units digit of each first-attempt column step (the `2` of `9+3=12`) is replaced with
probability p by a wrong digit (the right one +-1, the corpus's own kind of slip) and the model
continues from the corrupted text. Steps written after `wait ,` (re-checks) are never corrupted,
so a re-check is the one way to a right answer after a corrupted step that the faithfulness
reward also pays. The replaced tokens were chosen by the environment, not the policy: the
sampler reports their positions (`Completion.forced`) and `rollout.pack` masks them out of the
loss, the KL and the ratio. Evaluation never adds noise.

`StepNoise` is the sampler's token hook; `pending_step_value` is the pure rule it applies;
`noise_metrics` measures whether reflection is targeted (re-check rate right after a corrupted
step against after a clean one). `recheck_probe` asks what a re-check is worth to a model: it
starts solutions with a clean or a corrupted first step, each with or without a forced "wait ,"
after it, and scores how the model goes on.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from r1lab.micro.tasks.base import REFLECTION_WORD

# An open column step at the end of the text: optional "wait ," (a re-check), the left-hand
# side as the micro tasks write it (`5+2+1`, `12-7-1`, `4*6+4`), "=", and the result digits
# written so far. The lookbehind stops a match from starting inside a longer expression.
_LEFT_SIDE = rf"(?:\b({REFLECTION_WORD})\s*,\s*)?(?<![\d+*-])(\d{{1,3}}(?:[-+*]\d{{1,3}}){{1,3}})="
_OPEN_STEP = re.compile(_LEFT_SIDE + r"(\d{0,2})$")
_STEP = re.compile(_LEFT_SIDE + r"(\d{1,3})")  # a complete step, anywhere
_FOLLOWED_BY_RECHECK = re.compile(rf"\s*,\s*{REFLECTION_WORD}\b")
_TAIL_TOKENS = 32  # tokens decoded to find the open step: >= the longest "wait , lhs=dd" in characters


def evaluate_lhs(lhs: str) -> int:
    """The value of a step's left-hand side: + and - of products, e.g. ``4*6+4`` -> 28.

    >>> evaluate_lhs("12-7-1"), evaluate_lhs("4*6+4"), evaluate_lhs("5+2+1")
    (4, 28, 8)
    """
    total = 0
    for sign, term in re.findall(r"([-+]?)([\d*]+)", lhs):
        product = 1
        for factor in term.split("*"):
            product *= int(factor)
        total += -product if sign == "-" else product
    return total


def pending_step_value(text: str) -> int | None:
    """The value of the step open at the end of `text` if the next digit written is its units
    digit and the step is a first attempt (not a re-check after "wait ,"); else None.

    >>> pending_step_value("<think> 9+3=1"), pending_step_value("<think> 9+3=12 , 5+2+1=")
    (12, 8)
    >>> pending_step_value("<think> 9+3="), pending_step_value("9+3=13 , wait , 9+3=1") is None
    (None, True)
    """
    match = _OPEN_STEP.search(text)
    if match is None or match.group(1):
        return None
    value = evaluate_lhs(match.group(2))
    if value < 0 or len(match.group(3)) != len(str(value)) - 1:
        return None
    return value


class StepNoise:
    """A sampler token hook (r1lab.sampling.generate's `token_hook`): corrupts the units digit
    of first-attempt column steps with probability `p`. One instance per generate call; its
    draws are seeded, so a rollout is reproducible."""

    def __init__(self, p: float, tokenizer, seed: int):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"step_noise must be in [0, 1), got {p}")
        self.p, self.tokenizer = p, tokenizer
        self.rng = random.Random(seed)
        digit_ids = {d: tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)}
        if any(i is None or i == tokenizer.unk_token_id or tokenizer.decode([i]) != str(d)
               for d, i in digit_ids.items()):
            raise ValueError("step_noise needs a tokenizer with one token per digit 0-9 "
                             "(e.g. the micro or Qwen tokenizers)")
        self.digit_ids = digit_ids
        self.is_digit = frozenset(digit_ids.values())

    def __call__(self, ids: Sequence[int], token: int) -> int | None:
        """The token to write instead of `token` (sampled after `ids`), or None to keep it."""
        if token not in self.is_digit or not self.p:
            return None
        value = pending_step_value(self.tokenizer.decode(list(ids[-_TAIL_TOKENS:]), skip_special_tokens=True))
        if value is None or self.rng.random() >= self.p:
            return None
        return self.digit_ids[(value % 10 + self.rng.choice((-1, 1))) % 10]


class StepNoiseHook:
    """Step noise as a GRPO rollout hook (r1lab.grpo.rollout.RolloutHook), switched on by the
    `step_noise` setting: a `StepNoise` per generate call, and `noise_metrics` each step."""

    def __init__(self, p: float):
        self.p = p

    def token_hook(self, tokenizer, seed: int) -> StepNoise:
        # one noise stream per call: under torchrun the corruptions depend on the process's share
        return StepNoise(self.p, tokenizer, seed=seed)

    def metrics(self, scored, tokenizer) -> dict[str, float]:
        return noise_metrics(scored, tokenizer)


def step_outcomes(text: str, corrupted_ends: Sequence[int]) -> list[tuple[bool, bool]]:
    """(corrupted, followed by a re-check) for each first-attempt step of `text`.

    `corrupted_ends`: character offsets just after each corrupted digit (the step's value ends
    there). Re-check steps themselves are not counted.

    >>> step_outcomes("9+3=13 , wait , 9+3=12 , 1+0+1=2 , so 22", [6])
    [(True, True), (False, False)]
    """
    corrupted = set(corrupted_ends)
    out = []
    for match in _STEP.finditer(text):
        if match.group(1):
            continue
        out.append((match.end() in corrupted, _FOLLOWED_BY_RECHECK.match(text, match.end()) is not None))
    return out


def noise_metrics(scored, tokenizer) -> dict[str, float]:
    """Whether reflection is targeted at the injected errors, over a step's completions (a
    grpo.rollout.Scored). Rates with nothing to count this step are left out, not logged as 0.

    noise/corrupted: share of completions with a corrupted step. noise/recheck_after_corrupted
    and noise/recheck_after_clean: share of first-attempt steps followed by "wait ," when the
    step was corrupted / not (clean steps include the model's own slips). noise/reflection_corrupted
    and noise/reflection_clean: share of completions with a re-check, with / without a
    corruption. noise/faithful: share whose answer follows from their steps. With an accuracy
    reward: noise/accuracy_corrupted and noise/accuracy_clean, and noise/shortcut: share of
    corrupted completions with a right answer that does not follow from the steps (the
    unfaithful repair the prototype found).
    """
    from r1lab.evaluation.scoring import has_reflection
    from r1lab.rewards.rules import faithfulness_reward

    flat = [c for group in scored.completions for c in group]
    g = len(scored.completions[0]) if scored.completions else 1
    columns = {k: [row.get(k) for row in scored.rows for _ in range(g)] for k in {k for r in scored.rows for k in r}}
    faithful = faithfulness_reward([c.text for c in flat], **columns)
    accuracy = scored.per_reward.get("accuracy", [None] * len(flat))
    steps: list[tuple[bool, bool]] = []
    by = {True: [], False: []}  # corrupted? -> [(reflection, accuracy, faithful)]
    for c, acc, faith in zip(flat, accuracy, faithful):
        ends = [len(tokenizer.decode(list(c.token_ids[:i + 1]), skip_special_tokens=True)) for i in c.forced]
        steps += step_outcomes(c.text, ends)
        by[bool(c.forced)].append((has_reflection(c.text, (REFLECTION_WORD,)), acc, faith))
    shares = {
        "noise/corrupted": _share([bool(c.forced) for c in flat]),
        "noise/recheck_after_corrupted": _share([r for bad, r in steps if bad]),
        "noise/recheck_after_clean": _share([r for bad, r in steps if not bad]),
        "noise/reflection_corrupted": _share([r for r, _, _ in by[True]]),
        "noise/reflection_clean": _share([r for r, _, _ in by[False]]),
        "noise/faithful": _share([f for f in faithful if f is not None]),
        "noise/accuracy_corrupted": _share([a for _, a, _ in by[True] if a is not None]),
        "noise/accuracy_clean": _share([a for _, a, _ in by[False] if a is not None]),
        "noise/shortcut": _share([bool(a and not f) for _, a, f in by[True] if a is not None and f is not None]),
    }
    return {k: v for k, v in shares.items() if v is not None}


def _share(values: Sequence) -> float | None:
    """Mean of booleans/floats; None when empty (no such steps this batch, not a rate of 0)."""
    return sum(values) / len(values) if values else None


PROBE_VARIANTS = ("clean", "clean+wait", "corrupted", "corrupted+wait")


def probe_prefix(task, problem, variant: str, rng: random.Random) -> str:
    """The start of a solution for `recheck_probe`: its first column step, right or with the units
    digit +-1, and for the "+wait" variants a forced re-check opening after it.

    >>> from r1lab.micro import tasks
    >>> p = tasks.get_task("addition").problem_from_row(
    ...     {"prompt": "Compute 19 + 3.", "answer": "22", "operands": [19, 3]})
    >>> [probe_prefix(tasks.get_task("addition"), p, v, random.Random(0)) for v in PROBE_VARIANTS]
    [' <think> 9+3=12 ,', ' <think> 9+3=12 , wait ,', ' <think> 9+3=13 ,', ' <think> 9+3=13 , wait ,']
    """
    lhs, value = task.step(task.columns(problem)[0], 0)
    if variant.startswith("corrupted"):
        value = value - value % 10 + (value % 10 + rng.choice((-1, 1))) % 10
    return f" <think> {lhs}={value} ," + (f" {REFLECTION_WORD} ," if variant.endswith("wait") else "")


def recheck_probe(model, tokenizer, task_name: str = "addition", num_problems: int = 100, n: int = 8,
                  temperature: float = 1.0, seed: int = 0, template: str = "micro") -> dict[str, dict[str, float]]:
    """{variant: {accuracy, faithful}} of the model's continuations of `probe_prefix` starts, on
    train-split problems of levels 2-3 (at least two columns). A re-check pays when
    corrupted+wait is more accurate than corrupted, and a model that can't tell the two apart
    also needs clean+wait to cost little against clean."""
    from r1lab.micro import tasks
    from r1lab.rewards.rules import accuracy_reward, faithfulness_reward
    from r1lab.sampling.generate import SamplingParams, generate
    from r1lab.templates import render_prompt

    task = tasks.get_task(task_name)
    problems = tasks.generate(task_name, "train", num_problems, seed=seed, levels=(2, 3))
    params = SamplingParams(max_new_tokens=96, temperature=temperature, n=n, stop=("</answer>",), seed=seed)
    out = {}
    for variant in PROBE_VARIANTS:
        rng = random.Random(seed)
        starts = [probe_prefix(task, p, variant, rng) for p in problems]
        groups = generate(model, tokenizer, [render_prompt(template, p.prompt, tokenizer) + s
                                             for p, s in zip(problems, starts)], params)
        texts = [s + c.text for s, group in zip(starts, groups) for c in group]
        rows = [p.to_row() for p in problems for _ in range(n)]
        columns = {k: [r.get(k) for r in rows] for k in rows[0]}
        right, faithful = accuracy_reward(texts, **columns), faithfulness_reward(texts, **columns)
        out[variant] = {"accuracy": sum(x or 0 for x in right) / len(right),
                        "faithful": sum(x or 0 for x in faithful) / len(faithful)}
    return out


if __name__ == "__main__":
    import sys

    import torch

    from r1lab.models.loading import load_model_and_tokenizer

    torch.set_num_threads(1)
    model, tok = load_model_and_tokenizer(sys.argv[1])
    temperature = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    for name, scores in recheck_probe(model, tok, temperature=temperature).items():
        print(f"T={temperature} {name:15s} accuracy {scores['accuracy']:.1%}  faithful {scores['faithful']:.1%}")
