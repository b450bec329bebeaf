"""#1589 depth recurrence: layers 3,4,5 each repeated in place (12 effective layers)."""

BASE = "recur34x2.py"
OVERRIDES = {"model.loop_end": 5}
