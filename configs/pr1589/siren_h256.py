"""#1589 SIREN weight generator (spec 4.9): a 4-layer sine MLP (hidden 256, omega 30) maps (row, col,
layer, 8-d type embedding) to every block weight, evaluated in chunks every forward pass; SIREN on
Adam lr 1e-4, embedding and scalars on their usual Adam groups, as the PR. The PR's blocks have
no U-Net skips (topology plain here; its residual mix is the GPT's, identity at init). 677,833
parameters (135,041 in the SIREN)."""

BASE = "baseline.py"
OVERRIDES = {"model.weight_source": "siren", "model.siren.hidden": 256, "model.siren.layers": 4,
             "model.siren.omega": 30.0, "model.topology": "plain", "optim.adamw_lr": 1e-4}
