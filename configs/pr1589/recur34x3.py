"""#1589 depth recurrence: layers 3,4 each run three times in place (13 effective layers)."""

BASE = "recur34x2.py"
OVERRIDES = {"model.num_loops": 2}
