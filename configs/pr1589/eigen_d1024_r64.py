"""#1589 Eigenweight v2: width 1024 at rank 64 (a wider ambient space for the same factor budget)."""

BASE = "baseline.py"
OVERRIDES = {"model.linear": "lowrank", "model.lowrank.rank": 64, "model.model_dim": 1024}
