"""#1589 neural cellular automaton ("Turing tarpit", spec 4.9): a 16-channel 1-D cell grid, 50
update steps (MLP hidden 128; cells update with probability 0.5 in training) from a fixed-seed
state, whose final state is the block weights; the rule on Adam lr 1e-3, clip 1.0, as the PR.
569,672 parameters (24,832 in the rule)."""

BASE = "baseline.py"
OVERRIDES = {"model.weight_source": "nca", "model.nca.steps": 50, "model.nca.channels": 16, "model.nca.hidden": 128,
             "model.nca.update_prob": 0.5, "optim.adamw_lr": 1e-3, "optim.grad_clip_norm": 1.0}
