"""Prompt templates: how a problem becomes the text the policy continues.

- ``r1_zero``: the R1-Zero template, verbatim from the paper (v1 Table 1).
- ``micro``: a compact form of it for the micro world, where every prompt token costs CPU time
  in every rollout and every training forward; micro base models are pretrained on this form.
- ``chat``: the tokenizer's own chat template (a user turn, then the generation prompt).
- ``raw``: the prompt as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from r1lab.errors import R1labError

R1_ZERO = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>. User: {prompt}. Assistant:"
)
MICRO = "User: {prompt} Assistant:"


@dataclass(frozen=True)
class Template:
    name: str
    text: str | None  # None: use the tokenizer's chat template

    def render(self, prompt: str, tokenizer=None) -> str:
        if self.text is not None:
            return self.text.replace("{prompt}", prompt)
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise R1labError("template 'chat' needs a tokenizer with a chat template")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )


TEMPLATES = {
    "r1_zero": Template("r1_zero", R1_ZERO),
    "micro": Template("micro", MICRO),
    "chat": Template("chat", None),
    "raw": Template("raw", "{prompt}"),
}


def render_prompt(template: str, prompt: str, tokenizer=None) -> str:
    if template not in TEMPLATES:
        raise R1labError(f"unknown template '{template}' (templates: {', '.join(TEMPLATES)})")
    return TEMPLATES[template].render(prompt, tokenizer)
