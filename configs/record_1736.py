"""PR #1736 as run (val_bpb 1.0655, 3 seeds; records/track_10min_16mb/
2026-04-19_SP8192_CaseOps_GatedAttn_QuantGate_Loop45_PhasedTTT, train_seed0.log): #1530's stack on
the CaseOps SP8192 data (bpb over the val byte sidecars), gated attention (per head
sigmoid(W n) after XSA, W 8 x 512 ~ N(0, 0.005^2)) with QuantGate (the gates int8 per row), GPTQ
clip sigmas 13 (attention) / 12 (MLP), int7 embedding with clip 15, 16 calibration batches and a
4 s reserve, matrix lr 0.026, warmdown over the last 75%; the final eval the quantized model plain,
then phased TTT as the records run it (3 phases over a 2000-document prefix of the length-sorted
queue, fresh-momentum global SGD lr 1e-3 over 32,768-token chunks between them; LoRA as #1530 with
48-token chunks). "Loop45" in the name: the log loops layers 3-5 (encoder [0-5, 3, 4], decoder
[5, 3, 4, 5-10]), as #1530. `--dry-run` prints the log's model_params:35989658 (#1530's 35,944,602
+ 11 gates of 8 x 512).
Data: `python run.py data download --variant sp8192_caseops --train-shards 80` (the log's 80 shards)."""

BASE = "record_1530.py"
OVERRIDES = {
    "data.data_path": "./data/datasets/fineweb10B_sp8192_lossless_caps_caseops_v1_reserved",
    "data.tokenizer_path": "./data/tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model",
    "data.val_byte_sidecar": "on",  # CASEOPS_ENABLED=1: bpb over the original bytes, never the tables
    "model.attn_gate": "gated_attn",
    "model.gated_attn.init_std": 0.005,
    "optim.matrix_lr": 0.026,
    "train.warmdown_frac": 0.75,
    "train.gptq_reserve_seconds": 4.0,
    # The record's final eval: "diagnostic quantized" (plain), then quantized_ttt_phased, which it reports.
    "eval.lora_ttt.chunk_tokens": 48,
    "eval.lora_ttt.phases": 3,
    "eval.lora_ttt.phase_style": "records",
    "eval.lora_ttt.phase_prefix_docs": 2000,
    "eval.lora_ttt.phase_lr": 1e-3,
    "eval.lora_ttt.phase_momentum": 0.9,
    "eval.lora_ttt.phase_epochs": 1,
    "eval.lora_ttt.phase_chunk_tokens": 32_768,
    "eval.lora_ttt.phase_batch_seqs": 32,
    "eval.lora_ttt.phase_grad_clip": 1.0,
    "quant.attn_clip_sigmas": 13.0,
    "quant.mlp_clip_sigmas": 12.0,
    "quant.embed_bits": 7,
    "quant.embed_clip_sigmas": 15.0,
    "quant.gptq.calibration_batches": 16,
    "quant.gate_int8": True,  # GATED_ATTN_QUANT_GATE=1
}
