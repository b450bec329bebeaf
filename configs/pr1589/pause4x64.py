"""#1589 pause tokens, 4 every 64 (spec 4.4): sequences of 1024 real tokens run as 1088 positions."""

BASE = "baseline.py"
OVERRIDES = {"model.pause_tokens": 4, "model.pause_interval": 64}
