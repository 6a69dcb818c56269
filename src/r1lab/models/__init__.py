"""The model side of the engine: loading, the fast decoder forward, training log-probs, precision, LoRA."""
