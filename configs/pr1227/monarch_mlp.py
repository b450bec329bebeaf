"""#1227's Monarch MLP at the local setting (spec 5.3): every MLP matrix (GEGLU's gate, up and
down) as block-diagonal x perfect shuffle x block-diagonal with 16 blocks, 10.7x fewer weights
than dense (2b/3 at hidden 2d). #1227: dense beats it."""

BASE = "local.py"
OVERRIDES = {"model.mlp_linear": "monarch", "model.monarch.blocks": 16}
