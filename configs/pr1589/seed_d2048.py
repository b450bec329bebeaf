"""#1589 seed model (spec 4.9): block weights theta = theta0 + P phi with phi in R^2048 trained (Adam
lr 0.01, clip 1.0) and theta0, P (16.5 M x 2048) regenerated chunk-wise from a fixed PRNG seed
every step, never stored (0 bytes in the artifact). 546,888 parameters. The PR never reached its
first eval ("too slow"): every step draws 2 x 16.5 M x 2048 normals. Measured on 2 CPU cores at
4 layers x 256 (1.8 M generated weights, 4,096 tokens a step): ~105 s a step, against ~0.6 s for the
same GPT with stored weights."""

BASE = "baseline.py"
OVERRIDES = {"model.weight_source": "seed", "model.seed.dim": 2048, "model.seed.chunk": 10_000,
             "model.seed.generator_seed": 42, "optim.adamw_lr": 0.01, "optim.grad_clip_norm": 1.0}
