"""r1lab: the DeepSeek-R1 training recipe (GRPO, R1-Zero, the four stages, distillation).

Run ``r1lab --help`` for the commands. The micro world (procedural tasks and tiny models) lets
the whole recipe run on a laptop CPU; the same code trains any Hugging Face causal LM.
"""

__version__ = "0.1.0"
