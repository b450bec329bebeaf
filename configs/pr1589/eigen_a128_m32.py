"""#1589 Eigenweight v2: attention rank 128 (q, k, v, o), MLP rank 32 (fc, proj)."""

BASE = "baseline.py"
OVERRIDES = {"model.linear": "lowrank", "model.lowrank.attn_rank": 128, "model.lowrank.mlp_rank": 32}
