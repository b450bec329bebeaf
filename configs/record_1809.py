"""PR #1809 as run (val_bpb 1.0800, 3 seeds): SP8192, 11L x 512, MLP 4x LeakyReLU(0.5)^2,
partial RoPE 16/64, QK-gain 5.25, layerwise LN scale, XSA on all layers, gated U-Net skips,
layers 3-5 looped 3 times (17 virtual) from 35% of the budget, GPT-J parallel residuals from
layer 7, orthogonal init; Muon with MuonEq-R, You's Polar-Express table at 4 steps with AOL and
Gram-NS for aspect >= 1.5, WD 0.095; AdamW embedding/scalars; clip 0.3; warmdown over the last
72% to a 0.1 floor; EMA 0.9965. Export: GPTQ int6 (SDClip k 12.85) matrices, int8 (k 20)
embedding, 64 calibration batches, brotli-11, code counted compressed as the later records do.
(seed-techniques.md section 2; reference-spec.md 5.5.)
Data: `python run.py data download --variant sp8192 --train-shards 128`."""

OVERRIDES = {
    "data.data_path": "./data/datasets/fineweb10B_sp8192",
    "data.tokenizer_path": "./data/tokenizers/fineweb_8192_bpe.model",
    "data.loader": "shuffled",  # the SP8192 records' ShuffledSequenceLoader (also for GPTQ calibration)
    "model.vocab_size": 8192,
    "model.num_layers": 11,
    "model.mlp_mult": 4.0,
    "model.activation": "leaky_relu2",
    "model.rope_dims": 16,
    "model.rope_train_seq_len": 2048,
    "model.qk_gain_init": 5.25,
    "model.ln_scale": True,
    "model.xsa_last_n": 11,
    "model.skip_gates_enabled": True,
    "model.num_loops": 2,
    "model.loop_start": 3,
    "model.loop_end": 5,
    "model.enable_looping_at": 0.35,
    "model.parallel_residual_start": 7,
    "model.ortho_init": True,
    "optim.tied_embed_lr": 0.03,
    "optim.matrix_lr": 0.022,
    "optim.scalar_lr": 0.02,
    "optim.muon_momentum": 0.99,
    "optim.muon_momentum_warmup_start": 0.92,
    "optim.muon_momentum_warmup_steps": 1500,
    "optim.muon_backend_steps": 4,
    "optim.ns_coefficients": "you",
    "optim.ns_aol": True,
    "optim.gram_ns_min_aspect": 1.5,
    "optim.muon_row_normalize": True,
    "optim.muon_wd": 0.095,
    "optim.embed_wd": 0.085,
    "optim.adam_wd": 0.02,
    "optim.grad_clip_norm": 0.3,
    "train.train_seq_len": 2048,
    "train.train_batch_tokens": 786_432,
    "train.warmdown_frac": 0.72,
    "train.min_lr": 0.1,
    "train.gptq_reserve_seconds": 0.5,
    "train.ema_decay": 0.9965,
    "train.train_log_every": 500,
    "eval.val_loss_every": 4000,
    # The record's final eval: sliding window 2048 / 64, then score-first TTT (SGD lr 0.005 cosine
    # over 32,768-token chunks, momentum 0.9, 3 epochs: the eval.ttt_* defaults). It reports the last.
    "eval.final_modes": "sliding,ttt",
    "quant.scheme": "gptq",
    "quant.attn_bits": 6,
    "quant.mlp_bits": 6,
    "quant.embed_bits": 8,
    "quant.attn_clip_sigmas": 12.85,
    "quant.mlp_clip_sigmas": 12.85,
    "quant.embed_clip_sigmas": 20.0,
    "quant.gptq.calibration_batches": 64,
    "quant.compressor": "brotli",
}
