"""#1589 SURGE-M v2, single pass (spec 4.10): logits = softcap(base logits + head(norm(correction)));
the PR's best single-pass setting, lr_meta 1e-3 and UV init std 0.05 (1.4408 bpb in 2400 s)."""

BASE = "surge_m_v2_twopass.py"
OVERRIDES = {"model.surge_m.mode": "single", "optim.adamw_lr": 1e-3, "model.surge_m.uv_init_std": 0.05}
