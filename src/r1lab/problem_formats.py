"""A user's problems as r1lab reads them: named preparers, column mapping, chat prompts, BOS.

A dataset row becomes a problem with a ``prompt`` (a string, or a conversation: a list of
``{role, content}`` messages as in TRL's conversational datasets) and an ``answer`` string that
the accuracy reward and evaluation compare with (math-verify reads it). Every other column is kept,
so a reward function sees it by name. The preparer is picked by ``data.format``:

- ``gsm8k``: the answer column holds a worked solution ending in ``#### 72``; the number after
  ``####`` is the answer, thousands commas removed (``#### 1,200`` -> ``1200``). Columns
  ``question``/``answer`` by default.
- ``math``: the answer column holds a solution (MATH, NuminaMath, OpenR1-Math); the answer is the
  content of its ``\\boxed{}`` (``\\frac{1}{2}``), as math-verify reads it. Columns
  ``problem``/``solution`` by default.
- ``plain``: the answer column as it is (``prompt`` or ``problem``, and ``answer``, by default).

Rows whose answer can't be extracted (no ``####``, no single ``\\boxed{}``) are left out with a
warning; a file where none can is an error naming it. Stages that score every row (evaluation,
rejection sampling) ask for `every_answer`: there a row without an answer is an error. Errors are
one line naming the file and the 1-based row. `r1lab.problems.load_problems`, the one loader every
stage calls, reads a user's file through `prepare_rows` (or generates task problems).

`render_problem` turns a prompt into the text the policy continues, and `tokenize_prompts` into
token ids, with a BOS token exactly when the tokenizer's own encoding adds one (Llama does,
Qwen2.5 has none).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

from r1lab.training.sft_data import bos_to_add
from r1lab.errors import R1labError
from r1lab.files import hub_offline, is_hub_name, read_rows
from r1lab.rewards.answers import extract_answer
from r1lab.templates import render_prompt

logger = logging.getLogger(__name__)

_GSM8K_RE = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


def gsm8k_answer(solution: Any) -> str | None:
    """The number after ``####`` in a GSM8K solution, without thousands commas; None if absent.

    >>> gsm8k_answer("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\\n#### 72")
    '72'
    >>> gsm8k_answer("... #### 1,200") , gsm8k_answer("no marker") is None
    ('1200', True)
    """
    if not isinstance(solution, str):
        return None
    match = _GSM8K_RE.search(solution)
    if not match:
        return None
    answer = match.group(1).replace(",", "").replace("$", "").strip()
    return answer or None


def math_answer(solution: Any) -> str | None:
    r"""The content of a MATH-style solution's ``\boxed{}`` (one answer, braces balanced); else None.

    >>> math_answer(r"So $x = \boxed{\frac{1}{2}}$.")
    '\\frac{1}{2}'
    >>> math_answer("no box here") is None
    True
    """
    if not isinstance(solution, str) or "\\boxed" not in solution and "\\fbox" not in solution:
        return None
    return extract_answer(solution)


def plain_answer(value: Any) -> str | None:
    """The answer column as it is (numbers as text); None when empty.

    >>> plain_answer(72), plain_answer(" x+1 "), plain_answer("") is None
    ('72', 'x+1', True)
    """
    if value is None or isinstance(value, (list, dict)):
        return None
    text = str(value).strip()
    return text or None


# name -> (answer extractor, default prompt columns in order of preference, default answer column)
FORMATS: dict[str, tuple[Callable[[Any], str | None], tuple[str, ...], str]] = {
    "gsm8k": (gsm8k_answer, ("question", "prompt", "problem"), "answer"),
    "math": (math_answer, ("problem", "prompt", "question"), "solution"),
    "plain": (plain_answer, ("prompt", "problem", "question"), "answer"),
}


@dataclass(frozen=True)
class ProblemFormat:
    """How rows of a user's file become problems (the ``data.*`` keys of a recipe)."""

    format: str = "plain"  # gsm8k | math | plain
    prompt_column: str = ""  # empty: the format's default (see FORMATS)
    answer_column: str = ""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown data.format '{self.format}' (formats: {', '.join(FORMATS)})")


def prepare_rows(rows: list[dict], fmt: ProblemFormat, source: str, *, every_answer: bool = False,
                 no_answer_needed: Callable[[dict], bool] | None = None, conversations: bool = True,
                 column_keys: bool = True) -> list[dict]:
    """Problems from raw rows: every column kept, plus ``prompt`` and ``answer`` (a string).

    `source` names the file in errors. A row without a usable prompt is an error; a row whose
    answer the format can't extract is left out (logged), unless every row is, or `every_answer`
    makes it an error. Rows for which `no_answer_needed(row)` is true (code problems, judged by
    their tests) are kept as they are, with a prompt. `conversations=False`: prompts must be text.
    `column_keys`: the error for a missing column names the ``data.*_column`` key that sets it."""
    if not rows:
        raise R1labError(f"{source}: no rows")
    extract, prompt_columns, default_answer = FORMATS[fmt.format]
    prompt_key = fmt.prompt_column or next((c for c in prompt_columns if c in rows[0]), prompt_columns[0])
    answer_key = fmt.answer_column or default_answer
    columns = [(prompt_key, "prompt")]
    if no_answer_needed is None or not no_answer_needed(rows[0]):
        columns.append((answer_key, "answer"))
    for key, what in columns:
        if key not in rows[0]:
            hint = f"; set data.{what}_column" if column_keys else ""
            raise R1labError(f"{source}: row 1 has no column '{key}' for the {what} "
                             f"(columns: {', '.join(rows[0])}){hint}")
    out, dropped = [], 0
    for i, row in enumerate(rows, 1):
        prompt = check_prompt(row.get(prompt_key), f"{source}: row {i} column '{prompt_key}'", conversations)
        if no_answer_needed is not None and no_answer_needed(row):
            out.append({**row, "prompt": prompt})
            continue
        answer = extract(row.get(answer_key))
        if answer is None and every_answer:
            readable = "" if fmt.format == "plain" else f" that data.format={fmt.format} can read"
            raise R1labError(f"{source}: row {i} column '{answer_key}': no answer{readable}")
        if answer is None:
            dropped += 1
            continue
        out.append({**row, "prompt": prompt, "answer": answer})
    if not out:
        raise R1labError(f"{source}: no row has an answer that data.format={fmt.format} can read in column "
                         f"'{answer_key}'")
    if dropped:
        logger.warning("%s: %d of %d rows left out: no answer that data.format=%s can read in column '%s'",
                       source, dropped, len(rows), fmt.format, answer_key)
    return out


def check_prompt(prompt: Any, where: str, conversations: bool = True) -> str | list[dict]:
    """A non-empty string, or a conversation (a non-empty list of {role, content} strings) where
    `conversations` are allowed."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise R1labError(f"{where}: empty prompt")
        return prompt
    if isinstance(prompt, (list, tuple)) and prompt and not conversations:
        raise R1labError(f"{where}: this stage takes prompts as text, not conversations")
    if isinstance(prompt, (list, tuple)) and prompt:
        for message in prompt:
            if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                    and isinstance(message.get("content"), str)):
                raise R1labError(f"{where}: a conversation must be a list of {{role, content}} messages, "
                                 f"got {message!r:.80}")
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    raise R1labError(f"{where}: no prompt text (got {prompt!r:.80})")


def is_conversation(prompt: Any) -> bool:
    return isinstance(prompt, list)


def render_problem(prompt: str | list[dict], template: str, tokenizer=None, system_prompt: str = "") -> str:
    """The text the policy continues. A conversation, or any prompt with template ``chat``, goes
    through the tokenizer's chat template (TRL's convention), after a system message
    `system_prompt` when given and the conversation has none; other templates wrap the text."""
    if not is_conversation(prompt) and template != "chat":
        if system_prompt:
            raise R1labError(f"system_prompt needs template=chat or conversational prompts (template is {template})")
        return render_prompt(template, prompt, tokenizer)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise R1labError("conversational prompts and template 'chat' need a tokenizer with a chat template")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def tokenize_prompts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of rendered prompts: the text's own tokens, with the BOS token in front exactly
    when the tokenizer adds one and the text (e.g. a chat template's output) doesn't start with it."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    bos = bos_to_add(tokenizer)  # the same rule as SFT examples (r1lab.training.sft_data)
    if bos is not None:
        ids = [row if row and row[0] == bos else [bos, *row] for row in ids]
    return ids


REASONING_GYM = "reasoning_gym:"
# reasoning-gym draws entry i from seed + i: held-out rows start this far away from the training ones
HELD_OUT_SEED_OFFSET = 1_000_003


def read_problem_rows(source: str, split: str = "train", subset: str = "", size: int = 0, seed: int = 0) -> list[dict]:
    """Raw rows from a local JSONL/Parquet file or `datasets` folder (tried first), else a hub
    dataset name (``openai/gsm8k``, with `subset` ``main``) through `datasets.load_dataset`, or
    ``reasoning_gym:TASK[,TASK...]``: `size` generated problems per task (split "train" from
    `seed`, any other split from a seed far from it)."""
    if source.startswith(REASONING_GYM):
        return reasoning_gym_rows(source, size or 1000, seed if split == "train" else seed + HELD_OUT_SEED_OFFSET)
    if not is_hub_name(source):
        return read_rows(source, split)
    if hub_offline():
        raise R1labError(f"{source}: no such local file or folder, and the hub is offline (HF_HUB_OFFLINE=1); "
                         "give a local path or download the dataset first")
    import datasets

    try:
        return datasets.load_dataset(source, subset or None, split=split).to_list()
    except Exception as e:  # noqa: BLE001 -- datasets raises many kinds; the user needs one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise R1labError(f"{source}: cannot load dataset split '{split}' from the hub ({first})") from None


def reasoning_gym_rows(spec: str, size: int, seed: int) -> list[dict]:
    """`size` problems of each task of ``reasoning_gym:TASK[,TASK...]``, generated by reasoning-gym:
    ``prompt`` (its question), ``answer``, ``task`` and the generator's entry in
    ``reasoning_gym_entry``, which the ``reasoning_gym`` reward scores against."""
    names = [t.strip() for t in spec[len(REASONING_GYM):].split(",") if t.strip()]
    if not names:
        raise R1labError(f"{spec}: name at least one reasoning-gym task (reasoning_gym:basic_arithmetic,...)")
    try:
        import reasoning_gym
    except ImportError:
        raise R1labError(f"{spec}: needs the reasoning-gym package (pip install reasoning-gym)") from None
    rows = []
    for name in names:
        try:
            dataset = reasoning_gym.create_dataset(name, size=size, seed=seed)
        except (ValueError, KeyError) as e:
            raise R1labError(f"{spec}: reasoning-gym has no task {name!r} ({e})") from None
        rows += [{"prompt": entry["question"], "answer": str(entry["answer"]), "task": name,
                  "reasoning_gym_entry": entry} for entry in dataset]
    return rows
