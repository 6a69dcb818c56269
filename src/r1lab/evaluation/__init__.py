"""Evaluation by the paper's protocol (pass@1, pass@k, cons@k) and its scoring functions."""
