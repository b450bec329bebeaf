"""#1589 basis sharing, rank 128 (spec 4.7): per weight type one shared U (out x 128, Muon) and per
layer coefficients C_i (128 x in, Adam at scalar_lr 0.04), W_i = U C_i; SVD init from the
concatenated random matrices, o / proj coefficients zero. 5,066,824 parameters (4,521,984 in the
linears: 393,216 in the six U, 4,128,768 in the C)."""

BASE = "baseline.py"
OVERRIDES = {"model.weight_source": "basis", "model.basis.rank": 128}
