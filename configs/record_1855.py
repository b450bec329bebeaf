"""PR #1855 as run, the leaderboard's top (val_bpb 1.0611, 3 seeds; records/track_10min_16mb/
2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611, train_seed0.log): #1787 (through
#1797) with SmearGate v2 and its BOS fix (x_t += lambda sigmoid(W x_t[:12]) x_{t-1}, never into a
BOS position), LQER asymmetric (rank 4 on the 3 tensors of largest quantization error, factors int2
x int4 in groups of 64), per-group compression (int8 codes by role through lrzip -z -L 9, rows of
tok_emb / c_q / fc in L1 nearest-neighbour order, brotli-11 lgwin 24 for the rest; needs the lrzip
binary), and nine hyperparameters over #1787 (the README's table, each marked "9hp" below): Adam
beta2 0.99, TTT Adam beta2 0.99, TTT wd 0.5, TTT LoRA rank 80, warmdown over the last 85%, MLP clip
11.5, embedding clip 14, sparse-gate scale 0.5, phased-TTT prefix 2500 documents (phases at
833 / 1666 / 2500). LoRA alpha 144 and warm A are the script's defaults (#1787's). `--dry-run`
prints the log's model_params:35945671 (#1787's 35,945,658 + the smear gate's 12 weights and lambda).
Not in pgolf_jax: the fused LeakyReLU^2 MLP and softcapped-CE Triton kernels (speed; ce_chunked
is the memory-lean loss). The README's "Partial RoPE + YaRN" is not what ran: the log has
rope_yarn False.
Data: `python run.py data download --variant sp8192_caseops --train-shards 80`; `apt-get install lrzip`."""

BASE = "record_1787.py"
OVERRIDES = {
    "model.smear_gate": "v2",  # SMEAR_GATE_ENABLED=1, GATE_WINDOW=12
    "model.smear_gate_bos_fix": True,
    "model.sparse_gate.scale": 0.5,  # 9hp: SPARSE_ATTN_GATE_SCALE
    "optim.beta2": 0.99,  # 9hp: BETA2 (the Adam groups: tied embedding, scalars)
    "train.warmdown_frac": 0.85,  # 9hp: WARMDOWN_FRAC
    "eval.lora_ttt.beta2": 0.99,  # 9hp: TTT_BETA2
    "eval.lora_ttt.wd": 0.5,  # 9hp: TTT_WEIGHT_DECAY
    "eval.lora_ttt.rank": 80,  # 9hp: TTT_LORA_RANK (alpha stays 144: scale 144 / 80)
    "eval.lora_ttt.phase_prefix_docs": 2500,  # 9hp: PHASED_TTT_PREFIX_DOCS
    "quant.mlp_clip_sigmas": 11.5,  # 9hp: MLP_CLIP_SIGMAS
    "quant.embed_clip_sigmas": 14.0,  # 9hp: EMBED_CLIP_SIGMAS
    "quant.lqer_rank": 4,
    "quant.lqer_top_k": 3,
    "quant.lqer_asym": True,
    "quant.compressor": "pergroup",
    "quant.pergroup.level": 9,
    "quant.pergroup.lgwin": 24,
    "quant.pergroup.reorder": True,
    "quant.pergroup.transpose": True,
}
