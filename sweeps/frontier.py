"""Issue 25's evidence: the frontier pieces (#1514 .. #1855) at CPU scale, each added alone to
configs/record_cpu.py (#1809's stack as 4L x 256, 200 steps of 2,048 tokens, the nlp-corpus sample,
sp1024, GPTQ int6 / int8 embedding, brotli), then the whole #1855 stack on record_cpu's shapes.

Control: `record_cpu` (3 seeds; the same config as sweeps/record_1809.py's `full`). Every other row is
one seed. Training-side rows compare with it; `quantgate` compares with `gated_attn` (QuantGate
stores a gate, so it is added to the dense gate it was made for, #1736); the eval-side rows
(`phased_ttt`, `ngram_tilt`) compare with `lora_ttt`, the control scored by LoRA TTT as #1855 runs it.
`frontier_1855` compares with `record_1809_ttt` (the control scored by #1809's own sliding + TTT eval),
as the records' 1.0611 and 1.0800 are both post-TTT; its log also has the plain score of the stack.

Data. The rows stay on the plain sp1024 sample except `caseops` and `frontier_1855`, which read the
same 5,000 documents prepared as `sp1024_caseops` (the transform, SentencePiece 1024 with the four
operators reserved, val byte sidecars; prepared on first use from data.source=sample:nlp-corpus).
Chosen so that each row differs from the control by its piece alone, and the control stays
comparable with RESULTS.md's record_cpu numbers; CaseOps is the piece under test in its own row, and
#1855 ran on CaseOps data. bpb counts the original UTF-8 bytes (sidecars on CaseOps, the tokenizer's
byte tables on plain data; the two agree on plain data), so the rows compare. One difference stays:
eval.val_tokens_limit keeps the first 131,072 tokens, which start 216 of the 500 val documents as plain
tokens and 196 as CaseOps tokens (the sample's val split: 302,978 plain, 333,468 CaseOps tokens).

Scaled values: two lanes from layer 3 of 4 (#1530: 8 of 11; record_cpu's parallel start);
ce_chunked in 8 chunks of 128 (the records: 8192 / 1024); the phased TTT prefix against the sample's
val documents: the records score 50,000 val documents and run phases over the first 2,000 (#1626,
4 %) or 2,500 (#1855, 5 %) of the length-sorted queue, so here 9 (`phased_ttt`) and 11
(`frontier_1855`) of the 216 (196 CaseOps) documents the TTT scores, three phases; documents are scored 3 at a
time (eval.lora_ttt.batch_docs, #1530: 64) so that the phases fall at their boundaries (3 / 6 / 9)
rather than after whole 64-document batches (the records: one phase per batch at most); the global
SGD's chunks are 16 windows (16 x 128 tokens; the records' 32,768 = 16 x 2048). The LoRA
TTT hyperparameters are #1855's (rank 80, alpha 144, AdamW 1e-4, betas (0, 0.99), wd 0.5, warm A,
48-token chunks, targets q,k,v,o_par,mlp_par,head). The #1855 row takes every key record_1855.py
sets over record_1809.py except the data paths (the CaseOps sample), parallel_residual_start (3) and
the GPTQ reserve (0: no wall clock here); the rest is record_cpu's shapes and budget.

Bytes: `quantgate` (vs `gated_attn`) and `pergroup` (vs the control's seed 1337 in the per-run table:
compression is lossless, so its val_bpb equals that run's) are byte pieces: read artifact_bytes.
Run: `python run.py sweep sweeps/frontier.py --shard I/3` for I = 0, 1, 2 (one per session, the same
default --out runs/sweeps/frontier), then `python run.py sweep sweeps/frontier.py --report-only`. Rows whose
training is identical train once within a shard (the file's order keeps them together): shard 0 is one
training and six exports / evals (three LoRA TTT), shard 1 six trainings (CaseOps prepared on first use,
#1855 with its TTT), shard 2 five trainings (quantgate shares gated_attn's). Time, on the 2 shared cores:
a record_cpu training row is 8-9 min wall (200 steps at 1.4-2.0 s/step plus ~3 min of compile, evals, GPTQ,
export); a LoRA TTT eval ~8-12 min (92 s for 15 documents / 16,384 tokens with compiles, nice 19); so shard
0 ~45-65 min, shard 1 ~65-75, shard 2 ~50: about 2.7-3.2 h in all."""

BASE = "../configs/record_cpu.py"
OVERRIDES = {}

_CASEOPS = {
    "data.data_path": "./data/samples/nlp-corpus/datasets/fineweb10B_sp1024_lossless_caps_caseops_v1_reserved",
    "data.tokenizer_path":
        "./data/samples/nlp-corpus/tokenizers/fineweb_1024_bpe_lossless_caps_caseops_v1_reserved.model",
    "data.val_byte_sidecar": "on",  # bpb from the sidecars, never the tables
}
_VARLEN = {"model.doc_mask": True, "data.loader": "doc_packed"}
_TWO_LANE = {"model.parallel_residual": "two_lane", "model.two_lane.resid_init": 1.1,
             "model.two_lane.final_lane": "mean"}
_CE_CHUNKED = {"train.objective": "ce_chunked", "train.ce_chunked.vocab_chunk": 128}
_PERGROUP = {"quant.compressor": "pergroup", "quant.pergroup.level": 9, "quant.pergroup.lgwin": 24,
             "quant.pergroup.reorder": True, "quant.pergroup.transpose": True}
# #1855's LoRA TTT (record_1530 -> 1787 -> 1855), unphased: the eval-side rows' control.
_LORA_TTT = {"eval.final_modes": "lora_ttt", "eval.lora_ttt.targets": "q,k,v,o_par,mlp_par,head",
             "eval.lora_ttt.rank": 80, "eval.lora_ttt.alpha": 144.0, "eval.lora_ttt.optimizer": "adam",
             "eval.lora_ttt.lr": 1e-4, "eval.lora_ttt.beta1": 0.0, "eval.lora_ttt.beta2": 0.99,
             "eval.lora_ttt.eps": 1e-10, "eval.lora_ttt.wd": 0.5, "eval.lora_ttt.warm_start_a": True,
             "eval.lora_ttt.steps": 1, "eval.lora_ttt.chunk_tokens": 48, "eval.lora_ttt.batch_docs": 3}
# Records-style phased global SGD (#1610 / #1626 / #1855), the prefix set per row. Chunks of 16 windows as the
# records' 32,768 = 16 x 2048, here 16 x 128: at 32,768 a phase over a few hundred-token documents is one chunk,
# the last, which the records never train (a 2-step check logged "0 targets").
_PHASED = {"eval.lora_ttt.phases": 3, "eval.lora_ttt.phase_style": "records", "eval.lora_ttt.phase_lr": 1e-3,
           "eval.lora_ttt.phase_momentum": 0.9, "eval.lora_ttt.phase_epochs": 1,
           "eval.lora_ttt.phase_chunk_tokens": 2048, "eval.lora_ttt.phase_batch_seqs": 32,
           "eval.lora_ttt.phase_grad_clip": 1.0}
# What #1855 sets over #1809 beyond the pieces above (record_1530/1736/1787/1855.py).
_REST_1855 = {
    "model.qk_gain_init": 5.0, "model.smear_gate": "v2", "model.smear_gate_bos_fix": True,
    "model.attn_gate": "sparse_gate", "model.sparse_gate.width": 12, "model.sparse_gate.scale": 0.5,
    "optim.muon_momentum": 0.97, "optim.muon_backend_steps": 5, "optim.ns_coefficients": "polar_express_modded",
    "optim.ns_aol": False, "optim.gram_ns_min_aspect": 0.0, "optim.matrix_lr": 0.026, "optim.beta2": 0.99,
    "train.warmdown_frac": 0.85, "quant.attn_clip_sigmas": 13.0, "quant.mlp_clip_sigmas": 11.5,
    "quant.embed_bits": 7, "quant.embed_clip_sigmas": 14.0, "quant.gate_int8": True,
    "quant.lqer_rank": 4, "quant.lqer_top_k": 3, "quant.lqer_asym": True,
}

VARIANTS = {
    # Order: `--shard I/3` takes rows I, I + 3, ...; rows whose training is the control's seed 1337 (they
    # differ only in export or eval) sit at 0, 3, 6, .. so that shard 0 trains them once, and quantgate
    # shares gated_attn's training in shard 2. The control's seeds are rows 0-2, one in each shard.
    "record_cpu": {},
    "pergroup": dict(_PERGROUP),
    "caseops": dict(_CASEOPS),
    "gated_attn": {"model.attn_gate": "gated_attn", "model.gated_attn.init_std": 0.005},
    "lora_ttt": dict(_LORA_TTT),
    "varlen": dict(_VARLEN),
    "quantgate": {"model.attn_gate": "gated_attn", "model.gated_attn.init_std": 0.005, "quant.gate_int8": True},
    "phased_ttt": {**_LORA_TTT, **_PHASED, "eval.lora_ttt.phase_prefix_docs": 9},
    "output_gate": {"model.attn_gate": "output_gate"},
    "sparse_gate": {"model.attn_gate": "sparse_gate", "model.sparse_gate.width": 12, "model.sparse_gate.scale": 1.0},
    "ngram_tilt": {**_LORA_TTT, "eval.ngram_tilt": "token_tilt"},
    "two_lane": dict(_TWO_LANE),
    "wd_taper": {"optim.wd_schedule": "taper", "optim.taper.start_frac": 0.7, "optim.taper.end_factor": 0.5},
    # #1809's own eval (sliding, then score-first full-weight TTT), the control of the #1855 row: both
    # records report post-TTT numbers (1.0800 -> 1.0611).
    "record_1809_ttt": {"eval.final_modes": "sliding,ttt"},
    "frontier_1855": {**_CASEOPS, **_VARLEN, **_TWO_LANE, **_CE_CHUNKED, **_PERGROUP, **_REST_1855,
                      **_LORA_TTT, **_PHASED, "eval.final_modes": "plain,lora_ttt",
                      "eval.lora_ttt.phase_prefix_docs": 11},
    "ce_chunked": dict(_CE_CHUNKED),
}
SEEDS = [1337]
CONTROL = "record_cpu"
CONTROL_SEEDS = [1337, 1338, 1339]
COMPARE = {"quantgate": "gated_attn", "phased_ttt": "lora_ttt", "ngram_tilt": "lora_ttt",
           "record_1809_ttt": "record_1809_ttt", "frontier_1855": "record_1809_ttt"}

# REFERENCE takes absolute val_bpb, and report.py signs REFERENCE[row] - REFERENCE[its control]; so the
# records' reported gains are put on #1809's 1.0800 (the control's stack at full scale), as sweeps/pr1227.py
# puts #1227's relative wins on its base. nats/token -> bpb at the records' bytes per token (3.73 plain
# sp8192, #1530's log; 3.16 CaseOps, #1736's README). None: the record gives no bpb number for the piece.
_B = 1.0800
_TTT = _B - 0.0107  # #1530: quantized 1.08325 -> LoRA TTT 1.07258 (logs/train0.txt)
REFERENCE = {
    "record_cpu": _B,
    "caseops": _B - 0.0025,  # #1736's README: ~0.005-0.006 nats/token
    "varlen": _B - 0.0004,  # #1530's README: ~0.001 nats (and ~2 % faster)
    "output_gate": None,  # #1667 (1.0714 vs #1626 1.0719) with SmearGate and score-first TTT: no own number
    "gated_attn": None,  # #1736: -0.0064 vs #1626 together with CaseOps and Loop45: no own number
    "sparse_gate": None,  # #1787: "no bpb cost" against the dense gate, ~44 KB smaller
    "quantgate": None,  # #1736: 15-40 KB smaller (bytes, not bpb)
    "two_lane": _B - 0.0040,  # #1529 (1.0758 vs #1514 1.0798), together with fused kernels and TTT
    "wd_taper": None,  # #1729's README: "small but consistent BPB win", no number
    "ce_chunked": _B,  # the same loss (speed and memory only): no change expected
    "pergroup": _B,  # lossless: the same bpb, ~280 KB smaller than brotli (#1855)
    "lora_ttt": _TTT,
    "phased_ttt": _TTT - 0.00056 - 0.00081,  # #1610 one phase, #1626 three phases
    "ngram_tilt": _TTT - 0.0017,  # #1514, together with its TTT
    "record_1809_ttt": _B,  # #1809's 3-seed mean (sliding, then TTT)
    "frontier_1855": 1.0611,  # #1855's 3-seed mean (phased LoRA TTT)
}
REFERENCE_NOTE = (
    "the records' reported gains put on #1809's 1.0800 (8xH100, SP8192 FineWeb, 3 seeds); eval-side rows on "
    "1.0800 - 0.0107 (#1530's LoRA TTT gain); #1855 is its own 1.0611 against #1809's 1.0800, both post-TTT. "
    "Joint gains (two_lane with kernels and TTT, ngram_tilt with TTT) test the sign only. No number: output "
    "gate, gated attention (#1667 / #1736 report them only with other pieces), sparse gate (no bpb cost vs the "
    "dense gate, ~44 KB smaller), tapered WD (#1729: a small consistent win). Bytes: QuantGate 15-40 KB smaller "
    "(#1736), per-group compression ~280 KB smaller than brotli (#1855): compare artifact bytes"
)
