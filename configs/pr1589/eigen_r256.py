"""#1589 Eigenweight, uniform rank 256 (spec 4.5): every block linear y = ((x V^T) * sigma) U^T."""

BASE = "baseline.py"
OVERRIDES = {"model.linear": "lowrank", "model.lowrank.rank": 256}
