"""#1589 MLA, latent 128 (spec 4.3): K/V from one shared 128-wide latent; Q and the output full rank."""

BASE = "baseline.py"
OVERRIDES = {"model.attention": "mla", "model.mla.latent_dim": 128}
