"""GRPO: group-relative policy optimisation (DeepSeekMath, DeepSeek-R1) and its later variants.

`r1lab.grpo.losses` holds the pure tensor maths (advantages, KL estimators, the clipped
surrogate, loss aggregations, DAPO's overlong penalty), each variant picked by name from a dict.
"""
