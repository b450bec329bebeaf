"""#2114's residual A/B, delta arm (spec 3.1): the UT7 model at rank 256 for 240 steps (lr warm-up
20, warmdown 60), seed 42, U/V at int6 (the ablation's GPTQ_BITS): x <- x + rs b. #2114: val_bpb
1.58600 (vs contraction 1.84039). --dry-run: 20,197,418 parameters, as its log."""

BASE = "ut7_rlma320.py"
OVERRIDES = {
    "model.ut_shared.residual": "delta",
    "model.rlma.rank": 256,
    "train.iterations": 240,
    "train.lr_warmup_steps": 20,
    "train.warmdown_iters": 60,
    "quant.attn_bits": 6,
    "quant.mlp_bits": 6,
}
