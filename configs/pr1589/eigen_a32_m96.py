"""#1589 Eigenweight v2: attention rank 32 (q, k, v, o), MLP rank 96 (fc, proj)."""

BASE = "baseline.py"
OVERRIDES = {"model.linear": "lowrank", "model.lowrank.attn_rank": 32, "model.lowrank.mlp_rank": 96}
