"""Which generated samples become SFT data: the filters of R1's cold start and rejection sampling.

R1 keeps only correct samples (judged by rules, or by a generative judge comparing with the
reference where rules can't decide) and drops chains of thought that mix languages, run into
long paragraphs or hold code blocks (v1 section 2.3.3); the cold-start data was also filtered for
readability. Each filter here looks at one `Sample` and returns a rejection reason, or None to
keep it:

    kept, reasons = apply_filters(samples, ("no_format", "wrong_answer", "mixed_language"),
                                  FilterSettings(), rules_judge)
    reasons  # Counter({"no_format": 3, "wrong_answer": 5, "duplicate": 2})

A sample is rejected by the first filter (in the order given) that objects, so every rejected
sample is counted under exactly one reason, and kept + rejected = samples. Duplicates (the same
completion for the same prompt, whitespace aside) are dropped last, among the samples kept.

The file also holds the anatomy of a completion that the filters read, the readable format the
cold start writes (`format_readable`), and the pure halves of the generative judge
(`judge_prompt`, `parse_verdict`); the judge that runs a model lives in `r1lab.stages.rejection_sample`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from r1lab import task_registry
from r1lab.errors import R1labError
from r1lab.rewards.answers import extract_answer
from r1lab.rewards.rules import is_correct
from r1lab.rewards.text import TARGET_SCRIPTS, language_share

# (completion, row) -> True (right), False (wrong), None (can't decide)
Judge = Callable[[str, dict], "bool | None"]


@dataclass(frozen=True)
class Sample:
    row: dict[str, Any]  # the problem's columns: prompt, answer, task, ...
    completion: str
    finish_reason: str = "eos"  # "eos" | "stop" | "length" (cut off at max_new_tokens)


@dataclass(frozen=True)
class FilterSettings:
    """Thresholds of the filters (a config section of ``cold-start`` and ``rejection-sample``)."""

    language: str = "en"  # target script of the reasoning (see r1lab.rewards.text.TARGET_SCRIPTS)
    min_language_share: float = 0.95  # mixed_language: reject below this share of target-script words
    max_paragraph_chars: int = 1000  # long_paragraph: reject a reasoning paragraph longer than this
    max_completion_chars: int = 0  # too_long: reject longer completions (0: only those cut off)
    min_reasoning_chars: int = 1  # too_short: reject a reasoning shorter than this
    ngram_size: int = 8  # repetition: word n-grams compared
    max_repeat_share: float = 0.5  # repetition: reject when more than this share of n-grams repeat

    def __post_init__(self) -> None:
        if self.language not in TARGET_SCRIPTS:
            raise ValueError(f"unknown language '{self.language}' (languages: {', '.join(TARGET_SCRIPTS)})")
        if not 0 <= self.min_language_share <= 1 or not 0 <= self.max_repeat_share <= 1:
            raise ValueError("min_language_share and max_repeat_share must be in [0, 1]")
        if self.ngram_size < 1 or self.max_paragraph_chars < 1:
            raise ValueError("ngram_size and max_paragraph_chars must be >= 1")
        if self.max_completion_chars < 0 or self.min_reasoning_chars < 0:
            raise ValueError("max_completion_chars and min_reasoning_chars must be >= 0")


# --- the anatomy of a completion -------------------------------------------------------------

def reasoning_part(text: str) -> str:
    """The chain of thought: inside <think> ... </think>, or the whole text when there is none.

    >>> reasoning_part("<think> 2+2=4 </think> <answer>4</answer>")
    ' 2+2=4 '
    """
    start = text.find("<think>")
    begin = 0 if start < 0 else start + len("<think>")
    end = text.find("</think>", begin)
    return text[begin:] if end < 0 else text[begin:end]


def format_readable(reasoning: str, summary: str, answer: str | None = None) -> str:
    """R1's readable format, ``|special_token|<reasoning_process>|special_token|<summary>``, in tags:

        <think> REASONING </think> <summary> SUMMARY </summary> <answer>ANSWER</answer>

    The answer tag is left out when `answer` is None (a general request has no checkable answer);
    a non-reasoning reply has an empty think block (``<think> </think>``), as R1 writes it.

    >>> format_readable("3+4=7 , so 7", "The answer is 7.", "7")
    '<think> 3+4=7 , so 7 </think> <summary> The answer is 7. </summary> <answer>7</answer>'
    """
    think = f"<think> {reasoning.strip()} </think>" if reasoning.strip() else "<think> </think>"
    text = f"{think} <summary> {summary.strip()} </summary>"
    return text if answer is None else f"{text} <answer>{answer}</answer>"


# --- judging correctness ---------------------------------------------------------------------

_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
_MATH_WORDS = frozenset({"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "sqrt", "pi", "inf",
                         "infty", "mod", "gcd", "lcm", "max", "min", "deg"})


def rules_judge(completion: str, row: dict) -> bool | None:
    """Rules first: True/False where they can decide, None where only a reader could.

    Micro tasks are decided by their verifier, maths by `is_correct` (math-verify). A mismatch
    against a reference that reads as prose ("Paris", "2 apples") is left undecided: rules
    can't tell "Paris" from "the city of Paris", which is where R1 asks a generative judge.
    No reference, or no final answer in the completion: None and False.
    """
    verdict = is_correct(completion, row)
    if verdict is not False:
        return verdict
    if task_registry.is_task(row.get("task")) or extract_answer(completion) is None:
        return False
    words = _PROSE_WORD.findall(str(row["answer"]))
    return None if any(w.lower() not in _MATH_WORDS for w in words) else False


JUDGE_PROMPT = (
    "Question: {question}\nReference answer: {reference}\nCandidate answer: {candidate}\n"
    "Does the candidate answer mean the same as the reference answer? Reply yes or no.\nReply:"
)
MAX_CANDIDATE_CHARS = 2000


def judge_prompt(row: dict, completion: str) -> str:
    """The question a generative judge answers about one sample (R1: ground truth and prediction).

    The candidate is the extracted final answer, else the text after the reasoning (capped).
    """
    candidate = extract_answer(completion)
    if candidate is None:
        end = completion.find("</think>")
        candidate = completion[end + len("</think>"):] if end >= 0 else completion
    return JUDGE_PROMPT.format(question=str(row.get("prompt", "")).strip(),
                               reference=str(row.get("answer", "")).strip(),
                               candidate=candidate.strip()[:MAX_CANDIDATE_CHARS])


def parse_verdict(text: str) -> bool | None:
    """A judge's reply: its first word yes/no (true/false, correct/incorrect); None otherwise.

    >>> parse_verdict(" Yes, they match."), parse_verdict("no"), parse_verdict("maybe")
    (True, False, None)
    """
    words = re.findall(r"[a-z]+", text.lower())
    first = words[0] if words else ""
    return {"yes": True, "true": True, "correct": True, "no": False, "false": False, "incorrect": False}.get(first)


# --- the filters: (sample, settings, judge) -> reason or None ----------------------------------

def no_format(sample: Sample, settings: FilterSettings, judge: Judge) -> str | None:
    """One <think> block, nothing before it, and something after it (the answer or summary)."""
    text = sample.completion
    if text.count("<think>") != 1 or text.count("</think>") != 1:
        return "no_format"
    start, end = text.find("<think>"), text.find("</think>")
    if end < start or text[:start].strip() or not text[end + len("</think>"):].strip():
        return "no_format"
    return None


def wrong_answer(sample: Sample, settings: FilterSettings, judge: Judge) -> str | None:
    """The judge says wrong: "wrong_answer"; the judge can't tell: "unjudged" (dropped too)."""
    verdict = judge(sample.completion, sample.row)
    if verdict is None:
        return "unjudged"
    return None if verdict else "wrong_answer"


def mixed_language(sample: Sample, settings: FilterSettings, judge: Judge) -> str | None:
    """The reasoning's share of target-script words is below `min_language_share` (R1 Eq. 7's ratio)."""
    share = language_share(reasoning_part(sample.completion), settings.language)
    return "mixed_language" if share < settings.min_language_share else None


def long_paragraph(sample: Sample, settings: FilterSettings, judge: Judge) -> str | None:
    """A paragraph of the reasoning (blocks split by blank lines) is over `max_paragraph_chars`."""
    paragraphs = re.split(r"\n\s*\n", reasoning_part(sample.completion))
    return "long_paragraph" if any(len(p.strip()) > settings.max_paragraph_chars for p in paragraphs) else None


_CODE_LINE = re.compile(
    r"^[ \t]*(?:def \w+\s*\(|class \w+\s*[:(]|import \w|from [\w.]+ import |#include\b|public (?:static )?\w"
    r"|(?:for|while) [^\n]*:[ \t]*$|return [^\n]*;[ \t]*$|print\()",
    re.MULTILINE,
)


def code_in_reasoning(sample: Sample, settings: FilterSettings, judge: Judge) -> str | None:
    """A ``` fence, or a line that is plainly code (def, class, import, for ...:), in the reasoning.

    Code in the answer is fine (a code task's answer is code); R1 drops it from the thinking.
    """
    reasoning = reasoning_part(sample.completion)
    return "code_in_reasoning" if "```" in reasoning or _CODE_LINE.search(reasoning) else None


def repeat_share(text: str, n: int) -> float:
    """Share of word n-grams that repeat an earlier one: 1 - distinct / total (0 below n words).

    >>> repeat_share("a b c a b c", 3)  # abc, bca, cab, abc: 3 distinct of 4
    0.25
    """
    words = text.lower().split()
    ngrams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def repetition(sample: Sample, settings: FilterSettings, judge: Judge) -> str | None:
    """More than `max_repeat_share` of the completion's word n-grams repeat (a degenerate loop)."""
    share = repeat_share(sample.completion, settings.ngram_size)
    return "repetition" if share > settings.max_repeat_share else None


def too_long(sample: Sample, settings: FilterSettings, judge: Judge) -> str | None:
    """Cut off at max_new_tokens, or longer than `max_completion_chars` (when set)."""
    over = settings.max_completion_chars > 0 and len(sample.completion) > settings.max_completion_chars
    return "too_long" if sample.finish_reason == "length" or over else None


def too_short(sample: Sample, settings: FilterSettings, judge: Judge) -> str | None:
    """The reasoning (whitespace aside) is shorter than `min_reasoning_chars`."""
    return "too_short" if len(reasoning_part(sample.completion).strip()) < settings.min_reasoning_chars else None


Filter = Callable[[Sample, FilterSettings, Judge], "str | None"]
FILTERS: dict[str, Filter] = {
    "no_format": no_format,
    "too_long": too_long,
    "too_short": too_short,
    "wrong_answer": wrong_answer,
    "mixed_language": mixed_language,
    "long_paragraph": long_paragraph,
    "code_in_reasoning": code_in_reasoning,
    "repetition": repetition,
}
# Cheap checks first: the judge (possibly a model) only sees samples that pass them.
DEFAULT_FILTERS = tuple(FILTERS)


def check_filter_names(names: Sequence[str]) -> None:
    for name in names:
        if name not in FILTERS:
            raise R1labError(f"unknown filter '{name}' (filters: {', '.join(FILTERS)})")


def rejection_reason(sample: Sample, names: Sequence[str], settings: FilterSettings, judge: Judge) -> str | None:
    """The reason of the first filter in `names` that rejects `sample`, or None to keep it."""
    for name in names:
        reason = FILTERS[name](sample, settings, judge)
        if reason is not None:
            return reason
    return None


def dedupe(samples: Sequence[Sample]) -> tuple[list[Sample], int]:
    """Samples without repeats of the same completion (whitespace aside) for the same prompt,
    first occurrence kept; and how many were dropped."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for sample in samples:
        key = (str(sample.row.get("prompt", "")), " ".join(sample.completion.split()))
        if key not in seen:
            seen.add(key)
            kept.append(sample)
    return kept, len(samples) - len(kept)


def apply_filters(samples: Sequence[Sample], names: Sequence[str], settings: FilterSettings,
                  judge: Judge = rules_judge, deduplicate: bool = True) -> tuple[list[Sample], Counter]:
    """(kept samples, Counter of rejection reasons); duplicates among the kept count as "duplicate"."""
    check_filter_names(names)
    kept, reasons = [], Counter()
    for sample in samples:
        reason = rejection_reason(sample, names, settings, judge)
        if reason is None:
            kept.append(sample)
        else:
            reasons[reason] += 1
    if deduplicate:
        kept, dropped = dedupe(kept)
        if dropped:
            reasons["duplicate"] += dropped
    return kept, reasons


def filter_report(samples: Sequence[Sample], names: Sequence[str], settings: FilterSettings,
                  judge: Judge = rules_judge) -> tuple[list[Sample], dict]:
    """`apply_filters` per task, and the statistics a stage writes to ``stats.json``:

    {"samples", "kept", "rejected", "rejected_by_reason": {reason: n}, "per_task": {task: same}}
    where samples = kept + rejected overall and per task.
    """
    by_task: dict[str, list[Sample]] = {}
    for sample in samples:
        by_task.setdefault(str(sample.row.get("task") or "data"), []).append(sample)
    kept_all, total, per_task = [], Counter(), {}
    for task, group in by_task.items():
        kept, reasons = apply_filters(group, names, settings, judge)
        kept_all += kept
        total += reasons
        per_task[task] = _counts(len(group), len(kept), reasons)
    return kept_all, {**_counts(len(samples), len(kept_all), total), "per_task": per_task}


def _counts(samples: int, kept: int, reasons: Counter) -> dict:
    return {"samples": samples, "kept": kept, "rejected": samples - kept,
            "rejected_by_reason": dict(sorted(reasons.items()))}
