"""#1589 Hopfield "attractor" energy LM (spec 4.9): a 3-layer causal encoder (d 128, 4 heads), three
refinement steps with a learned alpha, logits gamma (h W e_v^T - ||e_v||^2) over the shared
embeddings; AdamW lr 3e-4, wd 0.1, clip 1.0 on all of it. 638,978 parameters. Not a GPT."""

BASE = "baseline.py"
OVERRIDES = {"model.family": "hopfield", "model.model_dim": 128, "model.num_layers": 3, "model.num_heads": 4,
             "model.num_kv_heads": 4, "model.hopfield.refine_steps": 3, "model.hopfield.refine_alpha": 0.1,
             "optim.adamw_lr": 3e-4, "optim.adamw_wd": 0.1, "optim.grad_clip_norm": 1.0}
