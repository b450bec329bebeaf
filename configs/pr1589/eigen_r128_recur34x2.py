"""#1589 Eigenweight rank 128 with layers 3,4 repeated in place twice (11 effective layers)."""

BASE = "eigen_r128.py"
OVERRIDES = {"model.block_schedule": "repeat_in_place", "model.num_loops": 1, "model.loop_start": 3,
             "model.loop_end": 4}
