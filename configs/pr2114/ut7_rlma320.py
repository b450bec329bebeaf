"""PR #2114 as submitted (spec 3.2-3.4): UT7 delta-residual + RLMA rank 320. SP8192, d 1024, 8 heads
x 128 (4 KV heads), FFN 3072 relu^2, tied embedding N(0, 0.02^2); Block_in, one shared block run
K = 6 times with a learned depth embedding, Block_out (parallel attn + MLP blocks, branch scales
0.6, delta residual x + b / sqrt(8)); every linear RLMA W = alpha R + U V at rank 320 (R regenerated
per pass, never stored). Muon lr 0.026 wd 0.04 on U/V, AdamW 3e-3 (wd 0) on the rest, clip 0.2,
lr warm-up 50, warmdown over the last 600 of 2400 steps to a 0.1 floor, no wall-clock cap
(launch_production.sh); 32 x 8192 tokens per step. Eval: 8192-token windows with a 512-token
sliding attention mask on the first 524,288 val tokens. Export: per-row RTN int8 with clip
12.85 std on U, V and the embedding, the rest fp16, zstd-22 (#2114's "GPTQ int8" has no Hessian
step). --dry-run: 23,146,538 parameters, the PR's count (8,388,608 embedding + 14,745,600 U/V +
12,330 scalars: 18 alphas, 6 x 1024 branch scales, 24 q gains, 6 x 1024 depth embedding).
Data: `python run.py data download --variant sp8192`."""

OVERRIDES = {
    "data.data_path": "./data/datasets/fineweb10B_sp8192",
    "data.tokenizer_path": "./data/tokenizers/fineweb_8192_bpe.model",
    "model.vocab_size": 8192,
    "model.num_layers": 3,
    "model.model_dim": 1024,
    "model.num_heads": 8,
    "model.num_kv_heads": 4,
    "model.mlp_mult": 3.0,
    "model.activation": "relu2",
    "model.tied_embed_init_std": 0.02,
    "model.topology": "ut_shared",
    "model.ut_shared.iterations": 6,
    "model.ut_shared.residual": "delta",
    "model.linear": "rlma",
    "model.rlma.rank": 320,
    "optim.matrix_lr": 0.026,
    "optim.muon_wd": 0.04,
    "optim.scalar_lr": 3e-3,
    "optim.tied_embed_lr": 3e-3,
    "optim.grad_clip_norm": 0.2,
    "train.seed": 42,
    "train.iterations": 2400,
    "train.lr_warmup_steps": 50,
    "train.warmdown_iters": 600,
    "train.min_lr": 0.1,
    "train.max_wallclock_seconds": 0.0,
    "train.train_seq_len": 8192,
    "train.train_batch_tokens": 262_144,
    "train.train_log_every": 25,
    "eval.val_loss_every": 0,
    "eval.val_tokens_limit": 524_288,
    "eval.attention_window": 512,
    "quant.scheme": "rtn",
    "quant.attn_bits": 8,
    "quant.mlp_bits": 8,
    "quant.embed_bits": 8,
    "quant.attn_clip_sigmas": 12.85,
    "quant.mlp_clip_sigmas": 12.85,
    "quant.embed_clip_sigmas": 12.85,
    "quant.compressor": "zstd",
    "quant.zstd.level": 22,
}
