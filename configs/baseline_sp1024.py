"""The reference baseline (train_gpt.py defaults): 9L x 512, 8 heads / 4 KV, MLP 2x relu^2,
vocab 1024, 524,288 tokens/step for 20,000 steps capped at 600 s. A GPU job on real FineWeb:
`python run.py data download --variant sp1024` first. Every default in pgolf_jax.config is
the reference's, so this preset overrides nothing."""

OVERRIDES = {}
