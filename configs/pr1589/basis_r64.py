"""#1589 basis sharing, rank 64 (spec 4.7): 2,260,992 linear parameters (196,608 in the six shared U,
2,064,384 in the per-layer C), 2,805,832 in all. The spec's ~1.96 M is the PR docstring's estimate,
which takes every C as 64 x 512 (9 x 6 x 64 x 512 = 1.77 M); the MLP's proj C is 64 x 1024."""

BASE = "basis_r128.py"
OVERRIDES = {"model.basis.rank": 64}
