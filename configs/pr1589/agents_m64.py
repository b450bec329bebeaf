"""#1589 communicating agents (spec 4.9): a 3-layer causal encoder (d 128) pooled to a 64-d message,
an MLP decoder (hidden 256) over message + the last 8 token embeddings; training loss on every 64th
position only, evaluation on all. AdamW lr 3e-4, wd 0.01, clip 1.0. 1,269,760 parameters. Not a GPT."""

BASE = "baseline.py"
OVERRIDES = {"model.family": "agents", "model.model_dim": 128, "model.num_layers": 3, "model.num_heads": 4,
             "model.num_kv_heads": 4, "model.agents.msg_dim": 64, "model.agents.local_ctx": 8,
             "model.agents.decoder_hidden": 256, "model.agents.loss_stride": 64, "train.warmup_steps": 0,
             "optim.adamw_lr": 3e-4, "optim.adamw_wd": 0.01, "optim.grad_clip_norm": 1.0}
