"""PR #1787 as reported (val_bpb 1.0634, 3 seeds; records/track_10min_16mb/
2026-04-23_SP8192_CaseOps_SparseGate_QuantGate_Loop45_PhasedTTT_PolarNS_MinLR_FusedCE): #1736 with
the sparse attention gate in place of the dense one (per head sigmoid(W n[:12]), W 8 x 12 zero-init,
scale 1; QuantGate kept), Polar Express Newton-Schulz (modded-nanogpt's 5-step table, Frobenius
normalization, no AOL), a 0.1 lr floor, the fused softcapped cross-entropy in training
(train.objective=ce_chunked: the same loss without the B x T x V logits), a 0.5 s GPTQ reserve, no
validation during training; TTT with PR #1767's settings (LoRA alpha 144, A kept warm across
document batches, wd 1.0): the shipped defaults, and what the reported score ran (ttt_pr1767/*.log;
the train_seed*.log TTT numbers are #1736's TTT settings). `--dry-run` prints the log's
model_params:35945658 (#1530's 35,944,602 + 11 gates of 8 x 12).
Data: `python run.py data download --variant sp8192_caseops --train-shards 80`."""

BASE = "record_1736.py"
OVERRIDES = {
    "model.attn_gate": "sparse_gate",
    "model.sparse_gate.width": 12,  # GATE_WINDOW
    "model.sparse_gate.scale": 1.0,
    "optim.muon_backend_steps": 5,
    "optim.ns_coefficients": "polar_express_modded",
    "train.min_lr": 0.1,
    "train.objective": "ce_chunked",  # FUSED_CE_ENABLED=1 (training only; eval keeps the plain loss)
    "train.gptq_reserve_seconds": 0.5,
    "eval.val_loss_every": 0,
    "eval.lora_ttt.alpha": 144.0,
    "eval.lora_ttt.warm_start_a": True,
    "eval.lora_ttt.wd": 1.0,
}
