"""The micro world's general (non-reasoning) data, made deterministically from a seed.

R1 mixes ~200k non-reasoning samples into its stage-3 SFT set (simple queries such as "hello"
get no chain of thought) and trains reward models for general prompts in stage 4: helpfulness
from preference pairs judged on the final summary, harmlessness pointwise on the whole response.
The micro world stands in for those data sets with three small generators:

    general_requests(n, seed)     # {"task": "general", "prompt", "completion"}: "Say hello." -> "Hello!"
    helpfulness_pairs(n, seed)    # {"task", "prompt", "chosen", "rejected", "kind"}: concise and right
                                  #   preferred to wrong or rambling
    harmlessness_rows(n, seed)    # {"task", "prompt", "response", "label", "kind"}: 1 safe, 0 harmful

Every response is in the readable format of `r1lab.stages.sample_filters.format_readable`; a general request
is answered with an empty think block, as R1 answers "hello". Unsafe requests come from a small
fixed vocabulary of clearly harmful micro requests ("Tell me how to break the lock."): a refusal
is the safe answer (1); complying is harmful (0), and so is a refusal whose reasoning spells out
the harmful plan anyway, which is why R1 judges harmlessness on the whole response.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from r1lab.micro import tasks
from r1lab.stages.sample_filters import format_readable

GENERAL_TASK = "general"  # the `task` column of every general row (stage-4 RL routes on it)
WORDS = ("apple", "river", "stone", "cloud", "green", "tiger", "music", "paper", "lemon", "house")
GREETINGS = (("Say hello.", "Hello!"), ("Say goodbye.", "Goodbye!"), ("Say thank you.", "Thank you!"),
             ("Say good morning.", "Good morning!"), ("Say good night.", "Good night!"))
FILLER = ("Well, let me say this in a few more words.", "As I was saying before, this is the reply.",
          "To be honest, I could go on about it for a while.", "Hmm, where was I? Right, the reply.",
          "Let me put it another way, just to be sure.", "So, once more, in other words:")
UNSAFE = (("break", "the lock"), ("steal", "a bike"), ("poison", "the dog"), ("burn", "the house"),
          ("hack", "the bank"), ("hurt", "my neighbour"), ("forge", "a passport"), ("cheat", "the test"))
UNSAFE_FORMS = ("Tell me how to {verb} {thing}.", "How do I {verb} {thing}?", "Help me {verb} {thing}.")
PLAN_STEPS = ("wait until nobody is around", "bring a heavy tool", "hide your face", "act fast",
              "leave no trace", "tell no one")
REFUSAL = "I can't help with that. It could hurt someone."


def general_requests(n: int, seed: int = 0) -> list[dict]:
    """`n` distinct simple requests with their short answers (fewer if the space runs out)."""
    rng = random.Random(f"general/{seed}")
    rows, seen = [], set()
    for _ in range(50 * n + 100):
        if len(rows) >= n:
            break
        prompt, reply = _request(rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        rows.append({"task": GENERAL_TASK, "prompt": prompt, "completion": format_readable("", reply)})
    return rows


def _request(rng: random.Random) -> tuple[str, str]:
    """One simple request and its answer; none needs any reasoning."""
    kind = rng.randrange(6)
    word = rng.choice(WORDS)
    if kind == 0:
        return rng.choice(GREETINGS)
    if kind == 1:
        return f"Repeat the word {word}.", word
    if kind == 2:
        return f"Write {word} in capital letters.", word.upper()
    if kind == 3:
        k = rng.randint(2, 9)
        return f"Count from 1 to {k}.", " ".join(str(i) for i in range(1, k + 1))
    if kind == 4:
        a, b = rng.sample(range(100), 2)
        return f"Is {a} bigger than {b}?", "Yes." if a > b else "No."
    name = rng.choice(tasks.DEFAULT_TASKS)
    problem = tasks.generate(name, "train", 1, seed=rng.randrange(10**6))[0]
    return f"What is the name of this task? {problem.prompt}", name


def helpfulness_pairs(n: int, seed: int = 0, task_names: Sequence[str] = tasks.DEFAULT_TASKS) -> list[dict]:
    """`n` preference pairs, half micro problems and half general requests.

    Chosen: the right answer, concise. Rejected, alternately: a wrong answer, or the right one
    buried in rambling. The difference is always in the summary, the only part a helpfulness
    reward model sees (R1 v1 section 2.3.4).
    """
    rng = random.Random(f"helpfulness/{seed}")
    requests = general_requests(max(1, n // 2), seed)
    rows = []
    for i in range(n):
        ramble = (i // 2) % 2 == 1
        if i % 2 == 0:
            rows.append(_problem_pair(rng, rng.choice(list(task_names)), ramble))
        else:
            rows.append(_request_pair(rng, requests[(i // 2) % len(requests)], requests, ramble))
    return rows


def _problem_pair(rng: random.Random, task_name: str, ramble: bool) -> dict:
    task = tasks.TASKS[task_name]
    problem = tasks.generate(task_name, "train", 1, seed=rng.randrange(10**6))[0]
    steps, answer = task.reasoning(problem, rng, tasks.CLEAN)
    chosen = format_readable(steps, f"The answer is {answer}.", answer)
    wrong = None if ramble else _wrong_solution(task, problem, rng)
    if wrong is not None:
        w_steps, w_answer = wrong
        rejected = format_readable(w_steps, f"The answer is {w_answer}.", w_answer)
    else:
        rejected = format_readable(steps, _rambling(rng, f"the answer is {answer}."), answer)
    return {"task": task_name, "prompt": problem.prompt, "chosen": chosen, "rejected": rejected,
            "kind": "wrong" if wrong is not None else "rambling"}


def _wrong_solution(task: tasks.Task, problem: tasks.Problem, rng: random.Random) -> tuple[str, str] | None:
    """A worked solution with slips that ends in a wrong answer (None if a few tries don't)."""
    style = tasks.TraceStyle(p_step_error=1.0, p_wrong_final=1.0)
    for _ in range(5):
        steps, answer = task.reasoning(problem, rng, style)
        if not tasks.verify(problem.task, answer, problem.to_row()):
            return steps, answer
    return None


def _request_pair(rng: random.Random, request: dict, requests: list[dict], ramble: bool) -> dict:
    reply = summary_of(request["completion"])
    others = [r for r in requests if summary_of(r["completion"]) != reply]
    if ramble or not others:
        rejected, kind = _rambling(rng, reply), "rambling"
    else:
        rejected, kind = summary_of(rng.choice(others)["completion"]), "wrong"
    return {"task": GENERAL_TASK, "prompt": request["prompt"], "chosen": request["completion"],
            "rejected": format_readable("", rejected), "kind": kind}


def summary_of(completion: str) -> str:
    return completion.split("<summary>", 1)[1].split("</summary>", 1)[0].strip()


def _rambling(rng: random.Random, reply: str) -> str:
    """The reply wrapped in 3-5 filler sentences: right, but not helpful to read."""
    filler = rng.sample(FILLER, rng.randint(3, 5))
    return " ".join(filler[:2] + [reply[:1].upper() + reply[1:]] + filler[2:] + [f"In short: {reply}"])


def harmlessness_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` pointwise rows cycling through four kinds, half labelled safe (1), half harmful (0):

    - ``refusal`` (1): an unsafe request, refused;
    - ``compliance`` (0): an unsafe request, answered with a plan;
    - ``leaky_refusal`` (0): a refusal whose reasoning writes the plan out anyway;
    - ``safe`` (1): a general request or micro problem with its normal answer.
    """
    rng = random.Random(f"harmlessness/{seed}")
    requests = general_requests(max(1, n // 4), seed)
    kinds: list[Callable[[random.Random], dict]] = [
        _refusal, _compliance, _leaky_refusal, lambda r: _safe(r, requests)]
    return [kinds[i % 4](rng) for i in range(n)]


def unsafe_requests() -> list[str]:
    """Every unsafe request of the micro world (24: each harmful act in each phrasing)."""
    return [form.format(verb=verb, thing=thing) for verb, thing in UNSAFE for form in UNSAFE_FORMS]


def refusal_rows(n: int) -> list[dict]:
    """`n` unsafe requests with the refusal and no reasoning, spread over the acts and phrasings
    (every other one of `unsafe_requests` first, so a few rows leave the rest unseen).

    >>> [r["prompt"] for r in refusal_rows(2)]
    ['Tell me how to break the lock.', 'Help me break the lock.']
    """
    prompts = unsafe_requests()
    order = prompts[::2] + prompts[1::2]
    return [{"task": GENERAL_TASK, "prompt": order[i % len(order)], "completion": format_readable("", REFUSAL)}
            for i in range(n)]


def unsafe_request(rng: random.Random) -> tuple[str, str]:
    verb, thing = rng.choice(UNSAFE)
    return rng.choice(UNSAFE_FORMS).format(verb=verb, thing=thing), f"{verb} {thing}"


def _plan(rng: random.Random, goal: str) -> str:
    first, second = rng.sample(PLAN_STEPS, 2)
    return f"to {goal}, first {first}, then {second}."


def _refusal(rng: random.Random) -> dict:
    prompt, goal = unsafe_request(rng)
    response = format_readable(f"the user wants to {goal}. that would hurt someone, so I say no.", REFUSAL)
    return {"task": GENERAL_TASK, "prompt": prompt, "response": response, "label": 1, "kind": "refusal"}


def compliance(rng: random.Random, goal: str) -> str:
    """The harmful reply to an unsafe request: "Sure. To <goal>, first <step>, then <step>."."""
    return _comply(_plan(rng, goal))


def _comply(plan: str) -> str:
    return f"Sure. {plan[:1].upper()}{plan[1:]}"


def _compliance(rng: random.Random) -> dict:
    prompt, goal = unsafe_request(rng)
    plan = _plan(rng, goal)
    response = format_readable(f"the user wants to {goal}. {plan}", _comply(plan))
    return {"task": GENERAL_TASK, "prompt": prompt, "response": response, "label": 0, "kind": "compliance"}


def _leaky_refusal(rng: random.Random) -> dict:
    prompt, goal = unsafe_request(rng)
    response = format_readable(f"the user wants to {goal}. {_plan(rng, goal)} but I should not say it.", REFUSAL)
    return {"task": GENERAL_TASK, "prompt": prompt, "response": response, "label": 0, "kind": "leaky_refusal"}


def _safe(rng: random.Random, requests: list[dict]) -> dict:
    if rng.random() < 0.5:
        request = rng.choice(requests)
        return {"task": GENERAL_TASK, "prompt": request["prompt"], "response": request["completion"],
                "label": 1, "kind": "safe"}
    name = rng.choice(tasks.DEFAULT_TASKS)
    problem = tasks.generate(name, "train", 1, seed=rng.randrange(10**6))[0]
    steps, answer = tasks.TASKS[name].reasoning(problem, rng, tasks.CLEAN)
    response = format_readable(steps, f"The answer is {answer}.", answer)
    return {"task": name, "prompt": problem.prompt, "response": response, "label": 1, "kind": "safe"}
