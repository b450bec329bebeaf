"""Newton-Schulz coefficient tables (registry.NS_COEFFICIENTS, optim.ns_coefficients): per-step (a, b, c)
of the odd quintic s -> a s + b s^3 + c s^5, literal data with their sources. One name per table, so a
packed file holds only the table its run selects."""

from __future__ import annotations

# Per-step (a, b, c) tables, literal data with their sources.
_PAPER = (  # Amsel, Persson, Musco, Gower, "The Polar Express" (arXiv:2505.16932), 5 steps,
    (8.28721201814563, -23.595886519098837, 17.300387312530933),  # as stored unmodified in
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),  # Dao-AILab/gram-newton-
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),  # schulz coefficients.py
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
)
_SAFETY = 1.05  # Dao-AILab's safety factor: (a / s, b / s^3, c / s^5)

# Keller Jordan's quintic, used for every step by the reference Muon (modded-nanogpt).
NS5 = ((3.4445, -4.7750, 2.0315),)
POLAR_EXPRESS_PAPER = tuple((a / _SAFETY, b / _SAFETY ** 3, c / _SAFETY ** 5) for a, b, c in _PAPER)
# modded-nanogpt's list (safety 2e-2, cushion 2), the one the merged parameter-golf
# Polar-Express records use (PR #1344 -> #1787), with plain Frobenius normalization.
POLAR_EXPRESS_MODDED = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
# PR #1809's "Polar Express" table: You Jiacheng's 5-step schedule (modded-nanogpt's
# train_gpt_medium.py; YOU_COEFFICIENTS in Dao-AILab's coefficients.py). #1809 runs the
# last `steps` of it (4 with AOL), hence "you" takes the tail.
YOU = (
    (4.0848, -6.8946, 2.927),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
