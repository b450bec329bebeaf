"""#1589 experiment 1: the reference baseline (9L x 512, sp1024, seq 1024, 524,288 tokens/step,
600 s on one GPU with 8-step accumulation), the control every other #1589 preset changes one module of."""

BASE = "../baseline_sp1024.py"
OVERRIDES = {}
