"""#1589 Eigenweight v2, attention rank 96 / MLP rank 48, layers 3,4 repeated in place twice."""

BASE = "baseline.py"
OVERRIDES = {"model.linear": "lowrank", "model.lowrank.attn_rank": 96, "model.lowrank.mlp_rank": 48,
             "model.block_schedule": "repeat_in_place", "model.num_loops": 1, "model.loop_start": 3,
             "model.loop_end": 4}
