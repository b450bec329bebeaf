"""#1589 Eigenweight v2: width 768 at rank 48 (a wider ambient space for the same factor budget)."""

BASE = "baseline.py"
OVERRIDES = {"model.linear": "lowrank", "model.lowrank.rank": 48, "model.model_dim": 768}
