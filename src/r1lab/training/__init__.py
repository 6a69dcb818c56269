"""The training loop shared by SFT, pretraining, reward models and GRPO, its data, checkpoints and processes."""
