"""#2114 at CPU scale (issue 14/15): its residual A/B (delta vs contraction, 240 steps, lr warm-up 20,
warmdown 60, as the PR's ablation) and its int8 clip sweep (k = 12.85 ... 16 std: the export only,
so those rows share one training), plus a matched-compute GPT (8 dense layers = the UT's 8 block
passes, U-Net skips, same width and optimizer). Shapes: #2114's UT7 + RLMA shrunk to d 256 (4 heads
x 64, 2 KV heads, FFN 768, K 6, rank 80 = 320/1024 of d), sp1024 on the embedded nlp-corpus sample,
seq 256 x 4 per step (1,024 tokens, so that the 8-pass UT's runs take minutes on 2 cores), eval
windows of 256 with a 128-token sliding attention mask (#2114: 8192 with 512) on the first 65,536
val tokens."""

BASE = "../configs/pr2114/residual_delta.py"
OVERRIDES = {
    "data.data_path": "./data/samples/nlp-corpus/datasets/fineweb10B_sp1024",
    "data.tokenizer_path": "./data/samples/nlp-corpus/tokenizers/fineweb_1024_bpe.model",
    "data.source": "sample:nlp-corpus",
    "data.num_val_docs": 500,
    "model.vocab_size": 1024,
    "model.model_dim": 256,
    "model.num_heads": 4,
    "model.num_kv_heads": 2,
    "model.rlma.rank": 80,
    "train.train_seq_len": 256,
    "train.train_batch_tokens": 1024,
    "train.batch_spans": 1,
    "train.train_log_every": 20,
    "eval.val_tokens_limit": 65536,
    "eval.attention_window": 128,
    "eval.val_batch_size": 16384,
}
VARIANTS = {
    "delta": {},
    "contraction": {"model.ut_shared.residual": "contraction"},
    "gpt8": {"model.topology": "unet", "model.num_layers": 8, "model.linear": "dense",
             "model.parallel_residual_start": 0},
    "clip12_85": {},
    "clip13_5": {"quant.attn_clip_sigmas": 13.5, "quant.mlp_clip_sigmas": 13.5},
    "clip14": {"quant.attn_clip_sigmas": 14.0, "quant.mlp_clip_sigmas": 14.0},
    "clip15": {"quant.attn_clip_sigmas": 15.0, "quant.mlp_clip_sigmas": 15.0},
    "clip16": {"quant.attn_clip_sigmas": 16.0, "quant.mlp_clip_sigmas": 16.0},
}
SEEDS = [42]
CONTROL = "delta"
CONTROL_SEEDS = [42, 1, 2]
COMPARE = {"clip12_85": "clip12_85", "clip13_5": "clip12_85", "clip14": "clip12_85", "clip15": "clip12_85",
           "clip16": "clip12_85"}
REFERENCE = {"delta": 1.58600, "contraction": 1.84039, "clip12_85": 1.29569, "clip13_5": 1.29640, "clip14": 1.29652,
             "clip15": 1.29697, "clip16": 1.29816}
REFERENCE_NOTE = ("#2114: residual A/B at 240 steps, rank 256, 1xH100 (delta 1.58600, contraction 1.84039); int8 "
                  "clip sweep of the full run, seed 42 (k 12.85 .. 16). No matched GPT baseline in the PR")
