"""The model seams' first entries (issue 12) at CPU scale: one variant per new registry entry
against the baseline, at the same step budget (configs/cpu.py: 4L x 256, seq 256, 4,096 tokens a
step, 300 steps on the embedded nlp-corpus sample). Shapes scale #1589's ratios to d = 256: MLA
latent 64 (= 128/512), Eigenweight rank 32 (= 64/512), pause 4 every 64, layers 1,2 repeated in
place (= 3,4 of 9), UT+ACT up to 8 steps of one block. Distillation follows #1227: a 4L x 192
student trained on CE vs the same student distilled (T 2, alpha 0.5) from a 6L x 256 teacher."""

BASE = "../configs/cpu.py"
OVERRIDES = {}
VARIANTS = {
    "baseline": {},
    "mla64": {"model.attention": "mla", "model.mla.latent_dim": 64},
    "pause4x64": {"model.pause_tokens": 4, "model.pause_interval": 64},
    "eigen_r32": {"model.linear": "lowrank", "model.lowrank.rank": 32},
    "recur12x2": {"model.block_schedule": "repeat_in_place", "model.num_loops": 1, "model.loop_start": 1,
                  "model.loop_end": 2},
    "ut_act8": {"model.topology": "act", "model.num_layers": 1, "model.act.max_steps": 8},
    "teacher": {"model.num_layers": 6},
    "student": {"model.model_dim": 192},
    "student_distill": {"model.model_dim": 192, "train.objective": "distill",
                        "train.distill.teacher": "runs/sweeps/seams/runs/teacher-s1337"},
}
SEEDS = [1337]
CONTROL = "baseline"
CONTROL_SEEDS = [1337, 1, 2]
COMPARE = {"teacher": "teacher", "student": "teacher", "student_distill": "student"}  # teacher: no control of its own
# #1589 (1xH100, 600 s, 9L x 512, sp1024 FineWeb; round-trip bpb) and #1227 (Mac mini CE: teacher
# 6L x 256 1.3158, 4L x 192 student direct 1.3194, distilled 1.3094): only the signs are comparable.
REFERENCE = {"baseline": 1.3094, "mla64": 1.3223, "pause4x64": 1.3318, "eigen_r32": 1.4997, "recur12x2": 1.3226,
             "ut_act8": 1.6967, "teacher": 1.3158, "student": 1.3194, "student_distill": 1.3094}
REFERENCE_NOTE = ("#1589's table (mla128, pause 4x64, eigen r64, recur 3,4 x2, ut_act12 vs its baseline; 1xH100 "
                  "600 s) and #1227's distillation (student CE, direct vs distilled)")
