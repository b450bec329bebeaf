"""The jitted train step, the training loop and its checkpoints."""
