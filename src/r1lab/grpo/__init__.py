"""GRPO: group-relative policy optimisation (DeepSeekMath, DeepSeek-R1) and its later variants.

`r1lab.grpo.losses` and `r1lab.grpo.advantages` hold the pure tensor maths (advantage estimators,
KL estimators, the GRPO/GSPO/CISPO surrogates, loss aggregations, KL-Cov, DAPO's overlong
penalty), each variant picked by name from a dict (docs/algorithms.md).
"""
