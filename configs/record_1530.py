"""PR #1530 as run (val_bpb 1.0734, 3 seeds; records/track_10min_16mb/2026-04-10_VarLenAttn, its
logs/train0.txt): the #1809 architecture with QK-gain 5.0 and, from layer 8, the two-lane parallel
residual (#1529: attention reads lane0, the MLP lane1, resid_lambda 1.1 and post 1 per layer, the
head reads the mean of the lanes); Muon 0.97 with the classic Newton-Schulz (5 steps of
(3.4445, -4.775, 2.0315)), no lr floor, a 13 s GPTQ reserve; document-masked (VarLen) attention
with a doc-packing loader; the final eval the quantized model plain, then doc-independent LoRA TTT
(rank 96, scale 1, AdamW lr 1e-4, betas (0, 0.999), eps 1e-10, wd 0.5, 32-token chunks, 64
documents at a time; not phased). `--dry-run` prints the log's model_params:35944602 (#1809's
35,944,536 + the lanes' 11 x (2 x 2 post + 2 resid) = 66 scalars, which the record keeps for all
11 layers although only 8-10 use them).
Not in pgolf_jax: the record's fused LeakyReLU^2 MLP Triton kernel (speed only; XLA fuses the
elementwise part, the numbers are the same).
Data: `python run.py data download --variant sp8192 --train-shards 128`."""

BASE = "record_1809.py"
OVERRIDES = {
    # VarLen: attention within a document (documents longer than a 2048-token row are cut at the row, as
    # the records cut them every 2048 tokens), batches from the doc-packing loader
    "model.doc_mask": True,
    "data.loader": "doc_packed",
    "model.qk_gain_init": 5.0,
    "model.parallel_residual": "two_lane",
    "model.parallel_residual_start": 8,
    "model.two_lane.resid_init": 1.1,
    "model.two_lane.final_lane": "mean",
    "optim.muon_momentum": 0.97,
    "optim.muon_backend_steps": 5,
    "optim.ns_coefficients": "ns5",
    "optim.ns_aol": False,
    "optim.gram_ns_min_aspect": 0.0,
    "train.min_lr": 0.0,
    "train.gptq_reserve_seconds": 13.0,
    # The record's final eval: "diagnostic quantized" (plain), then quantized_ttt_lora, which it reports.
    "eval.final_modes": "plain,lora_ttt",
    "eval.lora_ttt.targets": "q,k,v,o_par,mlp_par,head",  # TTT_K_LORA, TTT_O_LORA, TTT_MLP_LORA = 1
    "eval.lora_ttt.rank": 96,
    "eval.lora_ttt.alpha": 96.0,  # #1530's LoRA has no alpha: its output scale is 1 = alpha / rank
    "eval.lora_ttt.optimizer": "adam",
    "eval.lora_ttt.lr": 1e-4,
    "eval.lora_ttt.beta1": 0.0,
    "eval.lora_ttt.beta2": 0.999,
    "eval.lora_ttt.eps": 1e-10,
    "eval.lora_ttt.wd": 0.5,
    "eval.lora_ttt.warm_start_a": False,
    "eval.lora_ttt.steps": 1,
    "eval.lora_ttt.chunk_tokens": 32,
    "eval.lora_ttt.batch_docs": 64,
    "eval.lora_ttt.phases": 0,
}
