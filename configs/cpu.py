"""CPU demo preset (the README's main job): a 4-layer x 256 GPT on the embedded nlp-corpus
sample, ~1.2M training tokens in about 3 minutes on 2 cores, then the int8 artifact and its
round-trip val_bpb. The schedule counts steps (no wall-clock cap), so runs are deterministic."""

OVERRIDES = {
    "data.data_path": "./data/samples/nlp-corpus/datasets/fineweb10B_sp1024",
    "data.tokenizer_path": "./data/samples/nlp-corpus/tokenizers/fineweb_1024_bpe.model",
    "data.source": "sample:nlp-corpus",
    "data.num_val_docs": 500,
    "model.num_layers": 4,
    "model.model_dim": 256,
    "model.num_heads": 4,
    "model.num_kv_heads": 2,
    "train.train_seq_len": 256,
    "train.train_batch_tokens": 4096,
    "train.batch_spans": 1,  # one device, no accumulation: the fastest layout on a CPU
    "train.iterations": 300,
    "train.warmdown_iters": 100,
    "train.warmup_steps": 1,
    "train.max_wallclock_seconds": 0.0,
    "train.train_log_every": 25,
    "optim.muon_momentum_warmup_steps": 100,
    "eval.val_batch_size": 16384,
    "eval.val_loss_every": 0,
}
