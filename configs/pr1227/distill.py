"""#1227 distillation, step 2 (spec 5.3), at CPU scale: a 4L x 192 student trained on
0.5 CE + 0.5 T^2 KL(teacher || student) at temperature 2 from the frozen teacher of teacher.py."""

BASE = "../cpu.py"
OVERRIDES = {
    "model.num_layers": 4,
    "model.model_dim": 192,
    "model.num_heads": 4,
    "model.num_kv_heads": 2,
    "train.objective": "distill",
    "train.distill.teacher": "runs/pr1227_teacher",
    "train.distill.alpha": 0.5,
    "train.distill.temperature": 2.0,
}
