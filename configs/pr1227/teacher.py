"""#1227 distillation, step 1 (spec 5.3), at CPU scale: the teacher, 6L x 256, trained on the embedded
sample corpus. Run it with its fixed run id so distill.py finds it:
`run.py --config configs/pr1227/teacher.py` -> runs/pr1227_teacher."""

BASE = "../cpu.py"
OVERRIDES = {
    "model.num_layers": 6,
    "model.model_dim": 256,
    "train.run_id": "pr1227_teacher",
}
