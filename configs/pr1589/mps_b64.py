"""#1589 tensor-network MPS LM (spec 4.9): a shared core (1024 tokens x 64 x 64) modulated per
position, contracted left to right over a 64-d bond state with LayerNorm; everything on AdamW lr
3e-4, betas (0.9, 0.999), wd 0.01, clip 1.0. 4,238,720 parameters. Not a GPT (model.family=mps)."""

BASE = "baseline.py"
OVERRIDES = {"model.family": "mps", "model.mps.bond_dim": 64, "model.mps.pos_dim": 32, "model.mps.max_len": 1024,
             "optim.adamw_lr": 3e-4, "optim.adamw_wd": 0.01, "optim.adamw_beta2": 0.999, "optim.grad_clip_norm": 1.0}
