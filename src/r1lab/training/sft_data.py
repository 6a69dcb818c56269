"""Rows to training examples: tokenising with an exact loss mask, length bucketing, collation.

Two row shapes are accepted, as JSONL, Parquet or a `datasets` folder (see `r1lab.files.read_rows`):

- ``{"prompt": ..., "completion": ...}``: the text is the rendered prompt template, then the
  completion, then EOS. Loss applies to the completion and the EOS only.
- ``{"messages": [{"role": ..., "content": ...}, ...]}``: rendered with the tokenizer's chat
  template. Loss applies to the assistant turns only (their content and end-of-turn token).

Prompt and completion (or each chat turn) are tokenised separately and their ids concatenated,
so the boundary between "no loss" and "loss" is exact rather than guessed from character offsets.
The price is that a merge across the boundary never happens; generation sees the same split
(the prompt is tokenised alone there too), so this is also what the model meets at test time.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from r1lab.errors import R1labError
from r1lab.training.packing import padded_batches
from r1lab.templates import render_prompt

IGNORE_INDEX = -100  # label value that torch's cross entropy skips


@dataclass(frozen=True)
class Example:
    input_ids: tuple[int, ...]
    labels_mask: tuple[int, ...]  # 1 where the token is a training target

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize_rows(rows: Sequence[dict], tokenizer, source: str, max_length: int, template: str = "raw",
                  loss_on_prompt: bool = False) -> list[Example]:
    """Examples for `rows`; a bad row is an `R1labError` naming `source` and the row (1-based).

    Examples longer than `max_length` are cut to it; one left with no loss token is skipped.
    Both counts are printed as one line.
    """
    if not rows:
        raise R1labError(f"{source}: no rows")
    examples, truncated, skipped = [], 0, 0
    for i, row in enumerate(rows, 1):
        pieces = _row_pieces(row, tokenizer, template, f"{source}: row {i}")
        ids, mask = _encode_pieces(pieces, tokenizer)
        if loss_on_prompt:
            mask = [1] * len(ids)
        if len(ids) > max_length:
            truncated += 1
            ids, mask = ids[:max_length], mask[:max_length]
            if not any(mask[1:]):  # position 0 is never predicted, so it can't carry the loss
                skipped += 1
                continue
        examples.append(Example(tuple(ids), tuple(mask)))
    if truncated:
        print(f"{source}: truncated {truncated} of {len(rows)} examples to max_length={max_length}"
              f" ({skipped} skipped: no completion token left)")
    if not examples:
        raise R1labError(f"{source}: every example was longer than max_length={max_length}")
    return examples


def _row_pieces(row: dict, tokenizer, template: str, where: str) -> list[tuple[str, bool]]:
    """The row as consecutive (text, is_target) pieces."""
    if not isinstance(row, dict):
        raise R1labError(f"{where}: expected an object, got {type(row).__name__}")
    if "messages" in row and row["messages"] is not None:
        return _chat_pieces(row["messages"], tokenizer, where)
    if "prompt" not in row or "completion" not in row:
        raise R1labError(f"{where}: needs 'prompt' and 'completion' columns, or 'messages'"
                         f" (has: {', '.join(row) or 'nothing'})")
    prompt, completion = row["prompt"], row["completion"]
    for name, value in (("prompt", prompt), ("completion", completion)):
        if not isinstance(value, str) or not value.strip():
            raise R1labError(f"{where}: empty '{name}'")
    eos = tokenizer.eos_token or ""
    if eos and completion.endswith(eos):
        eos = ""
    return [(render_prompt(template, prompt, tokenizer), False), (completion + eos, True)]


def _chat_pieces(messages, tokenizer, where: str) -> list[tuple[str, bool]]:
    """Split a chat into pieces by rendering prefixes of it.

    For assistant turn i, rendering messages[:i] with the generation prompt gives the text
    before the reply, and messages[:i+1] the text through it: the difference is the reply and
    its end-of-turn token (trailing whitespace after that token is never generated, so no loss).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise R1labError(f"{where}: 'messages' rows need a tokenizer with a chat template")
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise R1labError(f"{where}: 'messages' must be a list of {{role, content}} objects with string values")
    if not any(m["role"] == "assistant" for m in messages):
        raise R1labError(f"{where}: 'messages' has no assistant turn")
    pieces, done = [], ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            if not message["content"].strip():
                raise R1labError(f"{where}: empty assistant content in message {i}")
            before = _render(tokenizer, messages[:i], True, where)
            pieces.append((_suffix(before, done, where), False))
            done = before
        text = _render(tokenizer, messages[: i + 1], False, where)
        new = _suffix(text, done, where)
        if message["role"] == "assistant":
            target = new.rstrip()
            pieces += [(target, True), (new[len(target):], False)]
        else:
            pieces.append((new, False))
        done = text
    return [(text, target) for text, target in pieces if text]


def _render(tokenizer, messages: list[dict], generation_prompt: bool, where: str) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:  # jinja raises its own errors, templates raise anything they like
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise R1labError(f"{where}: chat template failed ({reason})") from None


def _suffix(text: str, prefix: str, where: str) -> str:
    if not text.startswith(prefix):
        raise R1labError(f"{where}: the chat template does not render a conversation's turns as prefixes"
                         " of it, so assistant spans can't be found")
    return text[len(prefix):]


def _encode_pieces(pieces: list[tuple[str, bool]], tokenizer) -> tuple[list[int], list[int]]:
    ids, mask = [], []
    for text, target in pieces:
        piece_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece_ids
        mask += [int(target)] * len(piece_ids)
    bos = bos_to_add(tokenizer)
    if bos is not None and (not ids or ids[0] != bos):
        ids, mask = [bos] + ids, [0] + mask
    return ids, mask


def bos_to_add(tokenizer) -> int | None:
    """The BOS id if this tokenizer adds one by itself (Llama does, Qwen and the micro one don't)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if ids and ids[0] == bos else None


def batches(examples: Sequence[Example], max_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of example indices for one epoch, each with len(batch) * longest <= `max_tokens`.

    Examples are sorted by length (ties broken at random) and packed greedily, so little of a
    batch is padding; the batch order is then shuffled. The same (seed, epoch) gives the same
    batches, which is what lets a resumed run see exactly the data an uninterrupted one would.
    Every epoch has the same number of batches (the packing depends only on the sorted lengths).
    """
    rng = random.Random(f"{seed}:{epoch}")
    keys = [rng.random() for _ in examples]
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i]), keys[i]))
    too_long = next((len(examples[i]) for i in order if len(examples[i]) > max_tokens), None)
    if too_long is not None:
        raise R1labError(f"an example has {too_long} tokens, more than max_tokens_per_batch={max_tokens}")
    result = padded_batches(order, [len(e) for e in examples], max_tokens)
    rng.shuffle(result)
    return result


def collate(examples: Sequence[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels), each [B, L]; labels are -100 off-target.

    labels[b, t] is the token at t (not t+1): the shift happens in the loss, as in transformers.
    """
    width = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for b, e in enumerate(examples):
        ids = torch.tensor(e.input_ids, dtype=torch.long)
        input_ids[b, : len(e)] = ids
        attention_mask[b, : len(e)] = 1
        labels[b, : len(e)] = torch.where(torch.tensor(e.labels_mask, dtype=torch.bool), ids, IGNORE_INDEX)
    return input_ids, attention_mask, labels


def split_examples(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held_out): a seeded random `fraction` of the examples held out (at least one if > 0)."""
    if fraction <= 0:
        return examples, []
    n_eval = max(1, round(len(examples) * fraction))
    if n_eval >= len(examples):
        raise R1labError(f"eval_fraction={fraction} leaves no training examples out of {len(examples)}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])
