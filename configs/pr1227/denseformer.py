"""#1227's DenseFormer / depth-weighted averaging at the local setting (spec 5.3): after each block
the state is a learned weighted sum of the embedding and every earlier block output, initialised
to the identity. #1227: +0 %, the weights stay 96.6 % on the previous layer."""

BASE = "local.py"
OVERRIDES = {"model.topology": "denseformer"}
