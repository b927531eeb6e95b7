"""The parameters of ``apr distill``: shared by every strategy (the kind's options) and per strategy.

The training options are finetune's own `Param` objects (same names, defaults and meaning),
minus ``--adapter``/``--merge``; ``--alpha`` here is the distillation weight (Hinton et al.
2015), so LoRA's alpha is ``--lora-alpha``. Defaults: T = 1 (as LLM distillation does: MiniLLM,
GKD, Minitron; T = 2 lost to CE-only training in benchmarks/distill.py, T = 1 beat it) and
alpha = 0.5 (the playbook passes 3.0 / 0.7), forward KL, full training of the student (students are small and
distillation changes them globally; ``--method lora`` trains adapters instead), learning rate
1e-4 for full training and 2e-4 for LoRA.
"""

from __future__ import annotations

from apr_core.params import Param
from apr_finetune import params as F

STUDENT = Param("student", "path", None, "The student model (same tokenizer as the teacher); without it, "
                "--student-layers builds one from the teacher by depth pruning")
STUDENT_LAYERS = Param("student_layers", "int", None, "Without --student: keep this many decoder layers of the "
                       "teacher (prune --method depth, by block influence) as the student", min=1)
TEACHER = Param("teacher", "str", None, "More teachers (ensemble): repeat the option or give comma-separated "
                "paths; added to the positional MODELS", repeatable=True)
METHOD = Param("method", "choice", "full", "Train every weight of the student (full) or LoRA adapters on it",
               choices=("full", "lora"))
TEMPERATURE = Param("temperature", "float", 1.0, "Softmax temperature T of teacher and student in the KD term",
                    min=0, min_exclusive=True)
ALPHA = Param("alpha", "float", 0.5, "Weight of the distillation term; 1 - alpha weights the cross-entropy "
              "on the labels", min=0, max=1)
LOSS = Param("loss", "choice", "kl", "Divergence of the KD term: forward KL(teacher||student), reverse KL "
             "(MiniLLM) or Jensen-Shannon (GKD)", choices=("kl", "reverse-kl", "jsd"))
CACHE = Param("cache_teacher", "path", None, "Directory of precomputed teacher top-k log-probabilities: built on "
              "the first run, reused after (then the teacher is not loaded for training)")
TOP_K = Param("cache_top_k", "int", 64, "Log-probabilities kept per token in --cache-teacher (plus the "
              "remaining mass)", min=1)
LEARNING_RATE = Param("learning_rate", "float", None, "Peak learning rate (default 1e-4 full, 2e-4 LoRA)",
                      min=0, min_exclusive=True)
LORA_ALPHA = Param("lora_alpha", "float", None, "LoRA alpha with --method lora (default 2 x rank)",
                   min=0, min_exclusive=True)

TRAINING = tuple(p for p in F.SHARED if p.name not in ("adapter", "merge"))
SHARED = (STUDENT, STUDENT_LAYERS, TEACHER, METHOD, TEMPERATURE, ALPHA, LOSS, CACHE, TOP_K, LEARNING_RATE,
          F.RANK, LORA_ALPHA, F.DROPOUT, F.TARGETS) + TRAINING

TEACHER_WEIGHTS = Param("teacher_weights", "floats", None, "Weight of each teacher's softened distribution, in "
                        "order (default: per token, by each teacher's confidence, its top probability)", min=0)
STAGES = Param("stages", "int", 4, "Curriculum stages from easy to hard; --epochs' steps are spread evenly over "
               "them", min=1)
START = Param("start_competence", "float", 0.25, "Fraction of the data (the easiest) in the first stage's pool "
              "(c0 of Platanios et al. 2019)", min=0, max=1, min_exclusive=True)
DIFFICULTY = Param("difficulty", "choice", "combined", "Difficulty score: the teacher's per-token loss, the "
                   "answer's code nesting depth, or the mean of their ranks", choices=("teacher-loss", "nesting",
                                                                                       "combined"))

#: what does not change a run's result (left out of its fingerprint)
NOT_FINGERPRINTED = tuple(p.name for p in SHARED if not p.recorded)
