"""``r1lab init-model``: a random-initialised model of a real architecture, with a tokenizer, offline.

    r1lab init-model shape=qwen2.5-0.5b output_dir=models/qwen2.5-0.5b-random
    r1lab init-model shape=llama-3.2-1b tiny=true output_dir=models/llama-tiny   # same architecture, tiny sizes

For trying a recipe end to end before downloading weights (nothing here touches the network), and
for the recipes' smoke tests. The folder is an ordinary Hugging Face checkpoint: the shape's
architecture (Qwen2 or Llama config: layers, widths, grouped-query heads, RoPE, tied embeddings)
at its published sizes, or with ``tiny=true`` the same architecture at a few hundred thousand
parameters. The tokenizer is built locally: r1lab's micro BPE (about 500 tokens) with the shape's
special tokens and chat-template style (ChatML for Qwen; Llama 3's header tokens, and a BOS token
the tokenizer adds, for Llama). The vocabulary is the tokenizer's, not the shape's (Qwen2.5's
151,936 rows), so the parameter count is the published one less most of the embedding: 0.5B -> 0.36B.
The weights are random: a model made here writes noise, and training it shows the plumbing works,
not what a recipe reaches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from r1lab.recipe import check_choices
from r1lab.errors import R1labError

_QWEN = dict(rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu")
# The published config.json of each model (Hugging Face hub), the fields that set its shape.
SHAPES: dict[str, dict] = {
    "qwen2.5-0.5b": dict(arch="qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, intermediate_size=4864, max_position_embeddings=32768,
                         rope_theta=1000000.0, **_QWEN),
    "qwen2.5-1.5b": dict(arch="qwen2", hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, intermediate_size=8960, max_position_embeddings=32768,
                         rope_theta=1000000.0, **_QWEN),
    "qwen2.5-math-1.5b": dict(arch="qwen2", hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                              num_key_value_heads=2, intermediate_size=8960, max_position_embeddings=4096,
                              rope_theta=10000.0, **_QWEN),
    "llama-3.2-1b": dict(arch="llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, intermediate_size=8192, max_position_embeddings=131072,
                         rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu",
                         rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
}
# Hub names the recipes use -> their shape (for `shape_of`).
HUB_SHAPES: dict[str, str] = {
    "Qwen/Qwen2.5-0.5B": "qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct": "qwen2.5-0.5b",
    "Qwen/Qwen2.5-1.5B": "qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B-Instruct": "qwen2.5-1.5b",
    "Qwen/Qwen2.5-Math-1.5B": "qwen2.5-math-1.5b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": "qwen2.5-math-1.5b",
    "meta-llama/Llama-3.2-1B": "llama-3.2-1b", "meta-llama/Llama-3.2-1B-Instruct": "llama-3.2-1b",
}

LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@dataclass(frozen=True)
class InitModelConfig:
    shape: str = "qwen2.5-0.5b"  # a key of SHAPES
    output_dir: str = "models/random"
    tiny: bool = False  # the shape's architecture at tiny sizes (tests, a first try on a laptop)
    seed: int = 0

    def __post_init__(self) -> None:
        check_choices("shape", self.shape, SHAPES)


def shape_of(model_name: str) -> str:
    """The shape of a hub model a recipe names ("Qwen/Qwen2.5-0.5B-Instruct" -> "qwen2.5-0.5b")."""
    if model_name not in HUB_SHAPES:
        raise R1labError(f"no known shape for model '{model_name}' (known: {', '.join(HUB_SHAPES)})")
    return HUB_SHAPES[model_name]


def tiny_sizes(shape: dict) -> dict:
    """The shape scaled down: 2 layers, 4 query heads of width 16, the shape's query/KV head ratio
    kept (GQA stays GQA), a 4x MLP; positions and RoPE as the shape's."""
    groups = shape["num_attention_heads"] // shape["num_key_value_heads"]
    heads = 4 if 4 % groups == 0 else groups
    return dict(hidden_size=16 * heads, num_hidden_layers=2, num_attention_heads=heads,
                num_key_value_heads=heads // groups, intermediate_size=64 * heads)


def build_tokenizer_for(shape: str):
    """r1lab's micro tokenizer dressed as the shape's family: special tokens, chat template, BOS."""
    from tokenizers.processors import TemplateProcessing

    from r1lab.micro.tokenizer import build_tokenizer, micro_corpus_sample

    tokenizer = build_tokenizer(micro_corpus_sample(400))
    if SHAPES[shape]["arch"] == "llama":
        tokenizer.add_special_tokens({"bos_token": "<|begin_of_text|>", "additional_special_tokens": [
            "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
        bos = tokenizer.bos_token_id
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", bos)])
        tokenizer.chat_template = LLAMA_CHAT_TEMPLATE
    return tokenizer


def build_random_model(shape: str, tokenizer, tiny: bool = False, seed: int = 0):
    """A randomly initialised model of `shape` (a key of SHAPES) for `tokenizer`'s vocabulary."""
    spec = dict(SHAPES[shape])
    arch = spec.pop("arch")
    if tiny:
        spec.update(tiny_sizes(spec))
    config_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if arch == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    config = config_cls(vocab_size=len(tokenizer), bos_token_id=bos, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id, **spec)
    torch.manual_seed(seed)
    model = model_cls(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def main(config: InitModelConfig) -> dict:
    from r1lab.models.loading import count_parameters

    out = Path(config.output_dir)
    if (out / "config.json").exists():
        raise R1labError(f"{out}: already holds a model; choose another output_dir")
    tokenizer = build_tokenizer_for(config.shape)
    model = build_random_model(config.shape, tokenizer, config.tiny, config.seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    params = count_parameters(model)
    print(f"init-model: random {config.shape}{' (tiny)' if config.tiny else ''}, {params / 1e6:.1f}M parameters, "
          f"vocabulary {len(tokenizer)} -> {out}")
    return {"parameters": params, "output_dir": str(out)}
