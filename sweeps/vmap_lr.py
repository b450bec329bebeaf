"""A learning-rate sweep that trains as one group (issue 15's speed measurement, see BENCHMARKS.md):
four Muon matrix lrs on configs/cpu.py for 30 steps. The rows differ only in a traced scalar, so
`run.py sweep` compiles one step for all four and trains them together (a loop over that step on
CPU, one jax.vmap-ped program elsewhere or with --group-mode vmap); `--no-vmap` runs the same rows
one process each, for the side-by-side timing."""

BASE = "../configs/cpu.py"
OVERRIDES = {"train.iterations": 30, "train.warmdown_iters": 10, "optim.muon_momentum_warmup_steps": 10}
VARIANTS = {f"lr{lr}": {"optim.matrix_lr": lr} for lr in (0.02, 0.03, 0.04, 0.06)}
SEEDS = [1337]
CONTROL = "lr0.04"
