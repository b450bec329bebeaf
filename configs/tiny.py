"""Tiny CPU smoke preset: 2 layers x 64 on the embedded sample corpus, seconds per run.
Used by the tests through the real entry points."""

OVERRIDES = {
    "data.data_path": "./data/samples/nlp-corpus/datasets/fineweb10B_sp1024",
    "data.tokenizer_path": "./data/samples/nlp-corpus/tokenizers/fineweb_1024_bpe.model",
    "data.source": "sample:nlp-corpus",
    "data.num_val_docs": 500,
    "model.num_layers": 2,
    "model.model_dim": 64,
    "model.num_heads": 4,
    "model.num_kv_heads": 2,
    "train.train_seq_len": 64,
    "train.train_batch_tokens": 1024,  # 8 spans x 2 sequences x 64
    "train.iterations": 20,
    "train.warmdown_iters": 5,
    "train.warmup_steps": 1,
    "train.max_wallclock_seconds": 0.0,  # step-based schedule: deterministic
    "train.train_log_every": 5,
    "eval.val_batch_size": 4096,
    "eval.val_loss_every": 0,
    "eval.val_tokens_limit": 16384,
}
