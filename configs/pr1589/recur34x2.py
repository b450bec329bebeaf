"""#1589 depth recurrence (spec 4.6): layers 3,4 each repeated in place, 0,1,2,3,3,4,4,5,...,8 (11 effective)."""

BASE = "baseline.py"
OVERRIDES = {"model.block_schedule": "repeat_in_place", "model.num_loops": 1, "model.loop_start": 3,
             "model.loop_end": 4}
