"""The micro world: built-in tasks, corpus, tokenizer, model sizes and rollout hooks, all plugged into the engine."""
