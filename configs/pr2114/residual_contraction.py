"""#2114's residual A/B, contraction arm (spec 3.1): as residual_delta.py but x <- rs (x + b), the
state shrunk by rs = 1/sqrt(8) every pass (the pre-UT7 form). #2114: val_bpb 1.84039."""

BASE = "residual_delta.py"
OVERRIDES = {"model.ut_shared.residual": "contraction"}
