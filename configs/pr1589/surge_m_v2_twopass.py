"""#1589 SURGE-M v2, two-pass (spec 4.10): the d 256 GPT (9 layers, 4 heads, 4 KV heads) with layer 4
as the SURGE layer (chunks of 64, d_err 64, d_state 64), its correction re-run through layers 5-8;
the meta-network on AdamW (lr_meta 3e-4, wd 0.01, betas (0.9, 0.999), clip 1.0; the PR also clips
all gradients at 1.0), UV init std 0.01. The PR's best: 1.4313 bpb in 2400 s (against the d 256
baseline's 1.4351 in 600 s). 5,131,174 parameters (140,162 in the meta-network)."""

BASE = "baseline.py"
OVERRIDES = {"model.family": "surge_m", "model.model_dim": 256, "model.num_heads": 4, "model.num_kv_heads": 4,
             "model.surge_m.mode": "two_pass", "model.surge_m.layer": 4, "model.surge_m.chunk": 64,
             "model.surge_m.d_err": 64, "model.surge_m.d_state": 64, "model.surge_m.uv_init_std": 0.01,
             "optim.adamw_lr": 3e-4, "optim.adamw_wd": 0.01, "optim.adamw_beta2": 0.999, "optim.adamw_clip": 1.0,
             "optim.grad_clip_norm": 1.0, "train.max_wallclock_seconds": 2400.0}
