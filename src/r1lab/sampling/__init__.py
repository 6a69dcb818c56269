"""Generation only: r1lab's batched sampler and the optional vLLM backend."""
