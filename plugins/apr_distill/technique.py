"""``apr distill``: train a student on a teacher's softened distributions (and the labels).

A run resolves the teachers (the positional MODELS plus ``--teacher A,B``) and the student
(``--student PATH``, or the teacher depth-pruned to ``--student-layers N`` through ``apr prune
--method depth``), checks that they share a tokenizer (`apr_distill.vocab`), tokenizes the data
exactly as finetune does (`apr_finetune.training.prepare_data`: same layouts, same answer-token
mask), builds the student's trainable network (`apr_finetune.modules`: full or LoRA), and trains it
with the shared loop (`apr_core.runtime.trainer`) on `apr_distill.teachers.DistillLoss`. Run
directory (``<output>.run``), fingerprint / up-to-date check and ``--resume`` are finetune's.

The strategies differ in what they feed the loss: ``standard`` one teacher; ``progressive`` one
teacher and a curriculum (`apr_distill.curriculum`); ``ensemble`` several teachers' mixture.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from apr_core import __version__
from apr_core.errors import AprError
from apr_core.runtime import threads
from apr_core.technique import TransformTechnique

from . import params as P


class Distill(TransformTechnique):
    kind = "distill"
    params = ()
    max_inputs = 1
    random = True

    # ------------------------------------------------------------------ contract
    def contract_params(self, workdir, inputs):
        rows = [{"prompt": f"def f{i}(x):", "completion": f"\n    return x * {i}\n"} for i in range(8)]
        data = Path(workdir) / "distill-contract.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {"data": str(data), "student": inputs[0], "max_steps": 2, "batch_size": 2, "eval_split": 0.25,
                "max_seq_len": 64}

    def check(self, params: dict[str, Any]) -> None:
        if params["data"] and not Path(params["data"]).is_file():
            raise AprError(f"no such data file: {params['data']}")
        if params["student"] and params["student_layers"]:
            raise AprError("give --student PATH or --student-layers N, not both")
        if params["learning_rate"] is None:
            params["learning_rate"] = 1e-4 if params["method"] == "full" else 2e-4
        if params["lora_alpha"] is None:
            params["lora_alpha"] = 2.0 * params["rank"]

    # ------------------------------------------------------------------ models
    def teachers(self, inputs, params, context) -> list:
        from apr_core import pipeline

        extra = [s.strip() for s in (params["teacher"] or "").split(",") if s.strip()]
        loaded = [pipeline.load(s) for s in extra]
        context.extra_inputs.extend(loaded)
        teachers = list(inputs) + loaded
        lo, hi = self.teacher_range()
        if len(teachers) < lo or (hi is not None and len(teachers) > hi):
            raise AprError(f"distill {self.name} takes {'one teacher' if hi == 1 else f'at least {lo} teachers'}, "
                           f"got {len(teachers)}" + ("; use --strategy ensemble for several" if hi == 1 else ""))
        return teachers

    def teacher_range(self) -> tuple[int, int | None]:
        return 1, 1

    def student(self, teacher, params, context, plan: bool = False):
        """The student model: --student, else the teacher depth-pruned to --student-layers."""
        from apr_core import pipeline

        if params["student"]:
            student = pipeline.load(params["student"], verify=not plan)
            context.extra_inputs.append(student)
            return student
        layers = params["student_layers"]
        if not layers:
            raise AprError("apr distill needs --student PATH or --student-layers N (a depth-pruned teacher)")
        n = int(teacher.text_config()["num_hidden_layers"])
        if layers >= n:
            raise AprError(f"--student-layers {layers}: the teacher has only {n} decoder layers")
        if plan:  # the sizes do not depend on which layers go
            from apr_core.runtime.layerwise import layers_prefix
            from apr_prune.depth import drop_layers

            return drop_layers(teacher, list(range(layers, n)), layers_prefix(teacher.config))
        student = pipeline.transform("prune", "depth", [teacher], {"target_ratio": (n - layers) / n},
                                     context.quieter())
        context.report["student"] = f"teacher depth-pruned to {layers} of {n} layers"
        return student

    # ------------------------------------------------------------------ run
    def transform(self, inputs, params, context):
        from apr_finetune.training import prepare_data, up_to_date

        from .vocab import shared_vocabulary

        if not params["data"]:
            raise AprError("apr distill needs --data FILE.jsonl (or --plan)")
        teachers = self.teachers(inputs, params, context)
        self.check_weights(params, teachers, context)
        student = self.student(teachers[0], params, context)
        shared, note = shared_vocabulary(teachers, student)
        context.report.update(note)
        data = prepare_data(student, params, context.seed)
        fingerprint = self.fingerprint(teachers, student, params, data, context.seed)
        up_to_date(context.output, fingerprint)
        return self._train(teachers, student, shared, params, context, data, fingerprint)

    def check_weights(self, params, teachers, context) -> None:
        pass

    def teacher_weights(self, params):
        return None

    def fingerprint(self, teachers, student, params, data, seed) -> str:
        relevant = {k: v for k, v in params.items() if k not in P.NOT_FINGERPRINTED}
        relevant["cache_teacher"] = bool(params["cache_teacher"])
        relevant.pop("teacher", None)
        relevant.pop("student", None)
        blob = json.dumps({"teachers": [t.fingerprint() for t in teachers], "student": student.fingerprint(),
                           "student_tensors": sorted(student.tensors) if not params["student"] else None,
                           "strategy": self.name, "params": relevant, "seed": seed, "data": data["sha256"],
                           "apr": __version__}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _train(self, teachers, student, shared, params, context, data, fingerprint):
        from apr_core.runtime.trainer import write_log
        from apr_core.torch_bridge import to_transformers
        from apr_finetune.modules import base_model
        from apr_finetune.training import (AdapterState, FullState, adapt, adapter_output, is_main, run_directory,
                                           train_settings, with_weights)

        from .teachers import CachedTeacher, DistillLoss, LiveTeachers

        workdir = run_directory(context)
        context.resume = params["resume"]
        method = params["method"]
        weights = self.teacher_weights(params)

        live = None

        def live_teachers():
            nonlocal live
            if live is None:
                compute = context.compute_dtype()
                live = LiveTeachers([to_transformers(t, dtype=compute, device=context.device) for t in teachers],
                                    shared, params["temperature"], weights)
            return live

        cache = None
        if params["cache_teacher"]:
            cache = self.open_cache(teachers, weights, shared, params, context, data, live_teachers)
            source = CachedTeacher(cache)
        else:
            source = live_teachers()
        order, schedule_note = self.curriculum(student, data, params, context, cache, live_teachers)
        if cache is not None:
            live = None  # the teacher is not resident while the student trains

        lm = base_model(student, method, context)
        peft_model = adapt(lm, params, params["lora_alpha"] if method == "lora" else None, context.seed)
        settings = train_settings(params, context.seed, adapter=peft_model is not None)
        state = AdapterState(peft_model) if peft_model is not None else FullState()
        module = DistillLoss(lm, source, shared, params["temperature"], params["alpha"], params["loss"])
        args = (module, data["train"], data["held_out"], settings, context, workdir, state.save, state.load,
                fingerprint)
        trainer = self.trainer(args, order, params)
        result = trainer.run()
        files = write_log(result.log, workdir) if is_main() else {}
        summary = {"strategy": self.name, "method": method, "teachers": len(teachers), "steps": result.steps,
                   "train_examples": len(data["train"]), "held_out_examples": len(data["held_out"]),
                   "target_tokens": result.target_tokens, "train_loss": result.train_loss,
                   "eval_loss_before": result.eval_loss_before, "eval_loss": result.eval_loss,
                   "data_sha256": data["sha256"], "fingerprint": fingerprint}
        context.record.update(summary)
        context.report.update({**summary, "loss": f"{params['alpha']:g} x T^2 x {params['loss']} + "
                                                  f"{1 - params['alpha']:g} x CE (T = {params['temperature']:g})",
                               "eval_loss_is": "the student's cross-entropy per answer token on held-out data",
                               "truncated_examples": data["truncated"], "seconds": result.seconds,
                               "tokens_per_second": result.tokens_per_second, **threads.describe(), "run_dir": str(workdir),
                               "resumed_from_step": result.resumed_from,
                               **{k: str(workdir / v) for k, v in files.items()}})
        if schedule_note is not None:
            context.report["curriculum"] = trainer.schedule()
        if cache is not None:
            context.report["cache_bytes_per_token"] = cache.index["bytes_per_token"]
        lora = {"rank": params["rank"], "alpha": params["lora_alpha"], "dropout": params["dropout"]}
        out = with_weights(student, lm) if peft_model is None else \
            adapter_output(student, peft_model, lora, method, summary, workdir, files)
        if not context.output and not context.workdir:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
            context.report = {k: v for k, v in context.report.items() if k not in ("run_dir", *files)}
        return out

    def trainer(self, args, order, params):
        from apr_core.runtime.trainer import Trainer

        return Trainer(*args)

    def curriculum(self, student, data, params, context, cache, live_teachers):
        return None, None

    def open_cache(self, teachers, weights, shared, params, context, data, live_teachers):
        from . import cache as C

        train = data["train"] + data["held_out"]  # every example, so another seed's split reuses it
        key = C.cache_key(teachers, weights, params["temperature"], params["cache_top_k"], shared, train)

        def build(stage):
            rows = C.scan(live_teachers(), train, params["batch_size"], context.device, params["cache_top_k"],
                          context.progress)
            C.write(stage, key, rows, shared, params["cache_top_k"], train)

        cache, built = C.open_or_build(params["cache_teacher"], key, build, context)
        context.report["teacher_cache"] = {"directory": str(params["cache_teacher"]), "built": built,
                                           "k": cache.k, "positions": cache.index["positions"],
                                           "bytes": cache.index["bytes"],
                                           "bytes_per_token": cache.index["bytes_per_token"]}
        return cache

    # ------------------------------------------------------------------ plan
    def plan(self, inputs, params, context):
        from .memory import plan

        teachers = self.teachers(inputs, params, context)
        student = self.student(teachers[0], params, context, plan=True)
        return plan(self.name, teachers, student, params, context)


class Standard(Distill):
    name = "standard"
    summary = "one teacher: alpha T^2 KL(teacher^T || student^T) + (1 - alpha) CE on the answer tokens"
    paper = "Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural Network (arXiv:1503.02531)"


class Progressive(Distill):
    name = "progressive"
    summary = "standard KD with a competence-based curriculum: easy to hard by teacher loss and code nesting"
    paper = "Platanios et al. 2019, Competence-based Curriculum Learning for Neural Machine Translation (NAACL)"
    params = (P.STAGES, P.START, P.DIFFICULTY)

    def curriculum(self, student, data, params, context, cache, live_teachers):
        from apr_core.torch_bridge import load_tokenizer

        from . import cache as C
        from .curriculum import difficulty

        train = data["train"]
        losses = None
        if params["difficulty"] != "nesting":
            if cache is not None:
                known = cache.teacher_losses
                losses = [known[C.example_key(e.ids)] for e in train]
            else:
                losses = [row[0] for row in C.scan(live_teachers(), train, params["batch_size"], context.device,
                                                   None, context.progress)]
        scores = difficulty(train, losses, load_tokenizer(student), params["difficulty"])
        order = sorted(range(len(train)), key=lambda i: (scores[i], i))
        return order, True

    def trainer(self, args, order, params):
        from .curriculum import CurriculumTrainer

        return CurriculumTrainer(*args, order=order, stages=params["stages"], start=params["start_competence"])


class Ensemble(Distill):
    name = "ensemble"
    summary = "several teachers (MODELS... or --teacher A,B): their softened distributions averaged, by " \
              "--teacher-weights or per-token confidence"
    paper = "Hinton et al. 2015 (ensembles); confidence weighting as in Wu et al. 2021, One Teacher is Enough?"
    params = (P.TEACHER_WEIGHTS,)
    max_inputs = None

    def teacher_range(self):
        return 1, None

    def check_weights(self, params, teachers, context) -> None:
        w = params["teacher_weights"]
        if w is not None:
            if len(w) != len(teachers):
                raise AprError(f"--teacher-weights has {len(w)} values for {len(teachers)} teachers")
            if not sum(w) > 0:
                raise AprError("--teacher-weights must not all be zero")
        if len(teachers) == 1:
            context.report["ensemble_note"] = "one teacher given: the ensemble is that teacher (standard KD)"

    def teacher_weights(self, params):
        return params["teacher_weights"]
