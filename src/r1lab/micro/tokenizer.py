"""The micro world's tokenizer: a small byte-level BPE trained with the `tokenizers` library.

Byte-level, so any text round-trips (a user's prompt, a model's odd output); digits are split
one per token, so column arithmetic is learnable by a tiny model; the reasoning tags are single
tokens. It is saved as a standard Hugging Face tokenizer with a ChatML chat template, and loads
back with plain ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
SPECIAL_TOKENS = (EOS, "<|im_start|>", "<|im_end|>")
# Single tokens for the format tags: shorter sequences, and the format is one decision, not five.
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>", "<summary>", "</summary>")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and wrap it as a Hugging Face fast tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )


def micro_corpus_sample(n: int = 4000, seed: int = 0) -> Iterator[str]:
    """Texts the micro tokenizer is trained on: worked solutions of every task, the prompt
    templates, and the phrases of reflection, so all of them get compact tokens."""
    from r1lab.micro import tasks
    from r1lab.templates import TEMPLATES

    rng = random.Random(seed)
    style = tasks.TraceStyle(p_step_error=0.1, p_fix_error=0.5, p_check_ok=0.05)
    for name in tasks.DEFAULT_TASKS:
        task = tasks.TASKS[name]
        for problem in tasks.generate(name, "train", n // len(tasks.DEFAULT_TASKS), seed=seed, levels=task.levels[1:4]):
            yield problem.prompt + " " + task.solution(problem, rng, style)
    for template in TEMPLATES.values():
        if template.text:
            yield template.text
    yield "wait, let me check. Wait, recheck. Hmm, let me verify this step again."
