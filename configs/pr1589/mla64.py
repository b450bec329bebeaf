"""#1589 MLA, latent 64 (spec 4.3): K/V from one shared 64-wide latent; Q and the output full rank."""

BASE = "baseline.py"
OVERRIDES = {"model.attention": "mla", "model.mla.latent_dim": 64}
