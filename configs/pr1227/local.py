"""#1227's local (Mac-mini) setting (spec 5.1), the base of its CPU-scale experiments: 6L x 192,
6-head MHA, RoPE on 16 of the 32 head dims, GEGLU MLP 2x (three matrices), tied embedding N(0,
0.02^2), no U-Net skips; AdamW on every parameter (lr 3e-4, wd 0.1, torch's betas (0.9, 0.999)),
cosine decay over the 1500 steps (torch's CosineAnnealingLR, no warm-up in the shipped scripts),
grad clip 1.0; 32 x 512 tokens per step. Data: the embedded sample corpus (sp1024) instead of
#1227's Gutenberg bytes mod 1024. What stays ours: the GPT block (QK-RMSNorm, q_gain, logit
softcap 30, the x0 mix), which #1227's scripts do not have. --dry-run: 2,413,092 parameters."""

BASE = "../cpu.py"
OVERRIDES = {
    "model.num_layers": 6,
    "model.model_dim": 192,
    "model.num_heads": 6,
    "model.num_kv_heads": 6,
    "model.rope_dims": 16,
    "model.activation": "geglu",
    "model.mlp_mult": 2.0,
    "model.topology": "plain",
    "model.tied_embed_init_std": 0.02,
    "optim.matrix_optimizer": "adamw",
    "optim.matrix_lr": 3e-4,
    "optim.scalar_lr": 3e-4,
    "optim.tied_embed_lr": 3e-4,
    "optim.beta2": 0.999,
    "optim.muon_wd": 0.1,  # the matrix group's decoupled wd (AdamW here)
    "optim.adam_wd": 0.1,
    "optim.embed_wd": 0.1,
    "optim.grad_clip_norm": 1.0,
    "train.lr_schedule": "cosine",
    "train.train_seq_len": 512,
    "train.train_batch_tokens": 16384,
    "train.iterations": 1500,
    "train.train_log_every": 100,
}
