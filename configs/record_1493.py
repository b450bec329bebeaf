"""The merged #1493 record (val_bpb 1.0810): the #1809 stack with the classic Newton-Schulz
(5 steps of (3.4445, -4.775, 2.0315), no AOL, no Gram form), no lr floor and a 12 s GPTQ
reserve. (reference-spec.md 5.5.)"""

BASE = "record_1809.py"
OVERRIDES = {
    "optim.muon_backend_steps": 5,
    "optim.ns_coefficients": "ns5",
    "optim.ns_aol": False,
    "optim.gram_ns_min_aspect": 0.0,
    "train.min_lr": 0.0,
    "train.gptq_reserve_seconds": 12.0,
}
