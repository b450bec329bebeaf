"""The #1809 record stack's ablation at CPU scale (RESULTS.md's first table, as a sweep):
configs/record_cpu.py (4L x 256 looped to 8 virtual layers from 35% of training, SP1024 sample,
200 steps of 2,048 tokens, GPTQ int6 / int8 embedding, brotli); each row switches one piece off
(or, for the last two, an earlier record's piece on). #1809's own evidence is its record run
(1.0810 on 8xH100), not an ablation, so REFERENCE is empty: the comparison is between rows."""

BASE = "../configs/record_cpu.py"
OVERRIDES = {}
VARIANTS = {
    "full": {},
    "qk_gain_1.5": {"model.qk_gain_init": 1.5},
    "no_partial_rope": {"model.rope_dims": 0},
    "relu2": {"model.activation": "relu2"},
    "mlp_2x": {"model.mlp_mult": 2.0},
    "no_ln_scale": {"model.ln_scale": False},
    "no_xsa": {"model.xsa_last_n": 0},
    "plain_skips": {"model.skip_gates_enabled": False},
    "no_recurrence": {"model.num_loops": 0},
    "no_parallel_residual": {"model.parallel_residual_start": -1},
    "no_ortho_init": {"model.ortho_init": False},
    "classic_ns5": {"optim.ns_coefficients": "ns5", "optim.ns_aol": False, "optim.muon_backend_steps": 5},
    "plain_ns": {"optim.gram_ns_min_aspect": 0.0},
    "no_muoneq_r": {"optim.muon_row_normalize": False},
    "no_wd": {"optim.muon_wd": 0.0, "optim.embed_wd": 0.0, "optim.adam_wd": 0.0},
    "min_lr_0": {"train.min_lr": 0.0},
    "no_ema": {"train.ema_decay": 0.0},
    "no_grad_clip": {"optim.grad_clip_norm": 0.0},
    "smear_v1": {"model.smear_gate": "v1"},
    "bigram_hash": {"model.bigram_vocab_size": 2048},
}
SEEDS = [1337]
CONTROL = "full"
CONTROL_SEEDS = [1337, 1338, 1339]
