"""``apr finetune``: LoRA, QLoRA, full fine-tuning, ``auto``, and ``--adapter DIR --merge``.

A run prepares the data (`apr_core.runtime.examples`), builds the method's trainable network on
the run's device (`apr_finetune.modules`), trains it with the shared loop
(`apr_core.runtime.trainer`) and returns the base model with the result: for the adapter methods
the merged weights (lazy, W + s B A) with the LoRA adapter attached, so ``-o DIR/`` writes the
peft adapter directory and ``-o X.apr`` the merged model; for ``full`` the new weights.

Checkpoints live in ``<output>.run/`` next to the output (with the log and the loss chart); the
run's fingerprint (base model, data, every parameter that changes the result, apr version) is
recorded in the output, so re-running a finished run says so and does nothing, and ``--resume``
refuses a checkpoint of another run.
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
from .training import (AdapterState, FullState, adapter_output, is_main, prepare_data, run_directory,  # noqa: F401
                       up_to_date, with_weights)

METHODS = ("full", "lora", "qlora")


def _is_directory(destination: str) -> bool:
    p = Path(destination)
    return destination.endswith(("/", "\\")) or p.is_dir() or not p.suffix


class Finetune(TransformTechnique):
    """One method of ``apr finetune`` (``method`` is what it trains: full, lora or qlora)."""

    kind = "finetune"
    method = "lora"
    params = P.LORA

    def contract_params(self, workdir, inputs):
        rows = [{"prompt": f"def f{i}(x):", "completion": f"\n    return x * {i}\n"} for i in range(8)]
        data = Path(workdir) / "finetune-contract.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {"data": str(data), "max_steps": 2, "batch_size": 2, "eval_split": 0.25}

    def check(self, params: dict[str, Any]) -> None:
        if params.get("alpha") is None and "rank" in params:
            params["alpha"] = 2.0 * params["rank"]
        if params["merge"] and not params["adapter"]:
            raise AprError("--merge needs --adapter DIR (the peft adapter to merge)")
        if params["data"] and not Path(params["data"]).is_file():
            raise AprError(f"no such data file: {params['data']}")

    def default_format(self, destination: str) -> str | None:
        return "peft" if _is_directory(destination) else None

    # ------------------------------------------------------------------ choose
    def choose(self, model, params, context) -> tuple[str, dict[str, Any]]:
        """The method to train and the memory plan that justifies it."""
        from .memory import plan_method

        return self.method, plan_method(model, self.method, params, context)

    # ------------------------------------------------------------------ run
    def transform(self, inputs, params, context):
        model = inputs[0]
        if params["merge"]:
            return self._merge(model, params, context)
        if not params["data"]:
            raise AprError("apr finetune needs --data FILE.jsonl (or --adapter DIR --merge, or --plan)")
        method, memory = self.choose(model, params, context)
        if method == "full" and context.output_format == "peft":
            raise AprError(f"full fine-tuning writes a whole model, not an adapter: give -o MODEL.apr "
                           f"(or --format hf for a Hugging Face directory)")
        budget = params["vram"]
        if budget and memory["peak_bytes"] > budget * 1e9 * 0.9:
            raise AprError(f"{method} needs about {memory['peak_bytes'] / 1e9:.1f} GB, more than 90% of --vram "
                           f"{budget:g}; lower --batch-size/--max-seq-len, add --gradient-checkpointing or use "
                           f"--method auto")
        data = prepare_data(model, params, context.seed)
        fingerprint = self.fingerprint(model, method, params, data, context.seed)
        up_to_date(context.output, fingerprint)
        return self._train(model, method, params, context, data, fingerprint)

    def fingerprint(self, model, method, params, data, seed) -> str:
        relevant = {k: v for k, v in params.items() if k not in P.NOT_FINGERPRINTED}
        blob = json.dumps({"base": model.fingerprint(), "method": method, "params": relevant, "seed": seed,
                           "data": data["sha256"], "apr": __version__}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _train(self, model, method, params, context, data, fingerprint):
        from apr_core.runtime.trainer import Trainer, write_log

        from .modules import CausalLMLoss, base_model
        from .training import adapt, train_settings

        workdir = run_directory(context)
        context.resume = params["resume"]
        lm = base_model(model, method, context, params.get("double_quant", True))
        peft_model = adapt(lm, params, None if method == "full" else params["alpha"], context.seed)
        if peft_model is not None and params["adapter"]:
            self._start_from(peft_model, params["adapter"], model)
        settings = train_settings(params, context.seed, adapter=peft_model is not None)
        state = AdapterState(peft_model) if peft_model is not None else FullState()
        trainer = Trainer(CausalLMLoss(lm), data["train"], data["held_out"], settings, context, workdir,
                          state.save, state.load, fingerprint)
        result = trainer.run()
        files = write_log(result.log, workdir) if is_main() else {}
        summary = {"method": method, "steps": result.steps, "train_examples": len(data["train"]),
                   "held_out_examples": len(data["held_out"]), "target_tokens": result.target_tokens,
                   "train_loss": result.train_loss, "eval_loss_before": result.eval_loss_before,
                   "eval_loss": result.eval_loss, "data_sha256": data["sha256"], "fingerprint": fingerprint}
        context.record.update(summary)
        context.report.update({**summary, "truncated_examples": data["truncated"], "seconds": result.seconds,
                               "tokens_per_second": result.tokens_per_second, **threads.describe(), "run_dir": str(workdir),
                               "resumed_from_step": result.resumed_from,
                               **{k: str(workdir / v) for k, v in files.items()}})
        out = with_weights(model, lm) if peft_model is None else \
            adapter_output(model, peft_model, params, method, summary, workdir, files)
        if not context.output and not context.workdir:  # a run without an output keeps nothing on disk
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
            context.report = {k: v for k, v in context.report.items() if k not in ("run_dir", *files)}
        return out

    def _start_from(self, peft_model, directory, model) -> None:
        from .adapter import check_fits, read_adapter
        from .modules import load_lora_state

        adapter = read_adapter(directory)
        check_fits(adapter, model, f"--adapter {directory}")
        load_lora_state(peft_model, {k: v.load() for k, v in adapter.tensors().items()})

    def _merge(self, model, params, context):
        from .adapter import merged, read_adapter

        adapter = read_adapter(params["adapter"])
        out = merged(model, adapter, f"--adapter {params['adapter']}")
        context.report.update({"merged_modules": len(adapter.pairs), "rank": adapter.config["r"],
                               "lora_alpha": adapter.config["lora_alpha"],
                               "merged_into": "dequantized NF4 weights (the QLoRA base)" if adapter.nf4_base
                               else "the base weights as stored"})
        context.record.update({"adapter_fingerprint": adapter.training.get("fingerprint"),
                               "adapter_r": adapter.config["r"]})
        return out

    # ------------------------------------------------------------------ plan
    def plan(self, inputs, params, context):
        from .memory import describe

        model = inputs[0]
        if params["merge"]:
            return {"technique": "finetune --merge", "adapter": params["adapter"], "output_bytes": model.nbytes}
        method, memory = self.choose(model, params, context)
        return describe(model, method, memory, params, context)


class Lora(Finetune):
    name = "lora"
    summary = "LoRA adapters through peft on a frozen base (rank --rank, targets --target-modules)"
    paper = "Hu et al. 2021, LoRA: Low-Rank Adaptation of Large Language Models (arXiv:2106.09685)"


class QLora(Finetune):
    name = "qlora"
    method = "qlora"
    params = P.QLORA
    summary = "LoRA on an NF4-quantized base with double quantization (bitsandbytes), adapters in full precision"
    paper = "Dettmers et al. 2023, QLoRA: Efficient Finetuning of Quantized LLMs (arXiv:2305.14314)"


class Full(Finetune):
    name = "full"
    method = "full"
    params = P.FULL
    summary = "every weight trained (AdamW, float32 master weights; DDP under accelerate or torchrun for many processes)"
    paper = "standard full-parameter fine-tuning (Howard & Ruder 2018 onwards)"

    def default_format(self, destination: str) -> str | None:
        return None


class Auto(Finetune):
    name = "auto"
    method = "auto"
    params = P.AUTO
    summary = "pick full, then LoRA, then QLoRA (and a rank) that fit --vram with 10% headroom, and say why"
    paper = "memory model in docs/finetune.md (checked against measured peaks by benchmarks/finetune.py)"

    def choose(self, model, params, context):
        from .memory import choose

        return choose(model, params, context)
