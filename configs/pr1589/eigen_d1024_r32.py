"""#1589 Eigenweight v2: width 1024 at rank 32 (a wider ambient space for the same factor budget)."""

BASE = "baseline.py"
OVERRIDES = {"model.linear": "lowrank", "model.lowrank.rank": 32, "model.model_dim": 1024}
