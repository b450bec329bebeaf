"""#1589 pause tokens, 8 every 32 (spec 4.4): 1280 positions per 1024 real tokens."""

BASE = "baseline.py"
OVERRIDES = {"model.pause_tokens": 8, "model.pause_interval": 32}
