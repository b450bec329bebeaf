"""#1589 Universal Transformer + ACT (spec 4.8): one shared block applied up to 12 times per token,
halting head bias -3, threshold 0.99, ponder cost 0.01."""

BASE = "baseline.py"
OVERRIDES = {"model.topology": "act", "model.num_layers": 1, "model.act.max_steps": 12}
