"""What every training command of apr shares around the trainer: where a run keeps its files,
the tokenized data, the up-to-date check, what a checkpoint keeps of the model, and how the
trained weights or adapter become the output model.

``apr finetune`` and ``apr distill`` both call these, so a distilled student and a fine-tuned
model are written, resumed and fingerprinted the same way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from apr_core.errors import AprError, UpToDate


def run_directory(context) -> Path:
    """Where a run keeps its checkpoints and log: ``context.workdir``, else ``<output>.run`` beside
    the output, else (no output: a Python caller's in-memory run) a fresh temporary directory."""
    if context.workdir:
        return Path(context.workdir)
    if context.output:
        return Path(str(context.output).rstrip("/\\") + ".run")
    import tempfile

    return Path(tempfile.mkdtemp(prefix="apr-run-"))


def is_main() -> bool:
    from apr_core.pipeline import is_main_process

    return is_main_process()


def with_weights(model, lm):
    """The base model with every trained weight (cast back to its stored dtype)."""
    from apr_core.model import LazyTensor

    out = model.derive()
    for name, tensor in lm.state_dict().items():
        if name in model.tensors:
            dtype = model.spec(name).dt.torch_dtype()
            out.tensors[name] = LazyTensor.of(name, tensor.detach().to("cpu", dtype).contiguous())
    return out


class AdapterState:
    """What a checkpoint keeps of a LoRA run: the adapter tensors."""

    def __init__(self, peft_model) -> None:
        self.peft_model = peft_model

    def save(self, module, directory: Path) -> None:
        from apr_core.formats.safetensors import write_safetensors
        from apr_core.model import LazyTensor

        from .modules import lora_state

        state = lora_state(self.peft_model)
        write_safetensors({k: LazyTensor.of(k, v) for k, v in state.items()}, directory / "adapter.safetensors")

    def load(self, module, directory: Path) -> None:
        from apr_core.formats.safetensors import read_safetensors

        from .modules import load_lora_state

        tensors, _meta, _mm = read_safetensors(directory / "adapter.safetensors")
        load_lora_state(self.peft_model, {k: v.load().clone() for k, v in tensors.items()})


class FullState:
    """What a checkpoint keeps of a full fine-tune: every parameter."""

    def save(self, module, directory: Path) -> None:
        from apr_core.formats.safetensors import write_safetensors
        from apr_core.model import LazyTensor

        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        write_safetensors({k: LazyTensor.of(k, v) for k, v in state.items()}, directory / "weights.safetensors")

    def load(self, module, directory: Path) -> None:
        from apr_core.formats.safetensors import read_safetensors

        tensors, _meta, _mm = read_safetensors(directory / "weights.safetensors")
        module.load_state_dict({k: v.load().clone() for k, v in tensors.items()}, strict=False)


def adapt(lm, params: dict[str, Any], alpha: float, seed: int):
    """peft LoRA on ``lm`` with the run's rank, dropout and target modules (None when the run
    trains every weight), and gradient checkpointing when asked for."""
    from .modules import enable_checkpointing, with_lora

    peft_model = None
    if alpha is not None:
        targets = params["target_modules"]
        peft_model = with_lora(lm, params["rank"], alpha, params["dropout"],
                               "all-linear" if targets == "all-linear" else [t.strip() for t in targets.split(",")],
                               seed)
    if params["gradient_checkpointing"]:
        enable_checkpointing(lm)
    return peft_model


def train_settings(params: dict[str, Any], seed: int, adapter: bool):
    """The shared loop's settings from the training options both commands declare; ``adapter``:
    whether only a LoRA adapter trains (it decides the CPU heap trim, `heap_trim_pays`)."""
    from apr_core.runtime.trainer import TrainSettings, heap_trim_pays

    return TrainSettings(
        epochs=params["epochs"], max_steps=params["max_steps"], batch_size=params["batch_size"],
        grad_accum=params["grad_accum"], learning_rate=params["learning_rate"],
        weight_decay=params["weight_decay"], warmup_ratio=params["warmup_ratio"],
        max_grad_norm=params["max_grad_norm"], optimizer=params["optimizer"], eval_steps=params["eval_steps"],
        save_steps=params["save_steps"], gradient_checkpointing=params["gradient_checkpointing"], seed=seed,
        trim_heap=heap_trim_pays(adapter))


def prepare_data(model, params, seed: int) -> dict[str, Any]:
    """Tokenized training and held-out examples, with the data's sha256 and counts."""
    from apr_core.runtime import examples as ex
    from apr_core.torch_bridge import load_tokenizer

    tokenizer = load_tokenizer(model)
    formatter = ex.Formatter(tokenizer, params["chat"], params["train_on_prompt"])
    records = ex.read_records(params["data"])
    train, truncated = ex.tokenize(records, formatter, params["max_seq_len"])
    if not train:
        raise AprError(f"{params['data']}: no example keeps an answer token within --max-seq-len "
                       f"{params['max_seq_len']}")
    digest = hashlib.sha256(ex.file_sha256(params["data"]).encode())
    if params["eval_data"]:
        held, more = ex.tokenize(ex.read_records(params["eval_data"]), formatter, params["max_seq_len"])
        truncated += more
        digest.update(ex.file_sha256(params["eval_data"]).encode())
    else:
        train, held = ex.split(train, params["eval_split"], seed)
    if params["packing"]:
        train = ex.pack(train, params["max_seq_len"])
    return {"train": train, "held_out": held, "truncated": truncated, "sha256": digest.hexdigest()}


def up_to_date(output: str | None, fingerprint: str) -> None:
    """Raise `UpToDate` when ``output`` already holds the result of this exact run."""
    if not output or not Path(output).exists():
        return
    from .adapter import TRAINING

    found = None
    path = Path(output)
    if path.is_dir() and (path / TRAINING).is_file():
        try:
            found = json.loads((path / TRAINING).read_text()).get("fingerprint")
        except (ValueError, OSError):
            found = None
    elif path.is_file() or (path / "config.json").is_file():
        from apr_core import pipeline

        try:
            prov = pipeline.load(str(path), verify=False).provenance
            found = (prov[-1].get("result") or {}).get("fingerprint") if prov else None
        except AprError:
            found = None
    if found == fingerprint:
        raise UpToDate(f"{output} already holds this run's result (same base, data and settings); nothing to do")


def adapter_output(model, peft_model, params, method, summary, workdir, files):
    """The base model with the trained LoRA merged in (lazily) and the adapter attached, so the
    result writes as a merged model or, with ``-o DIR/``, as a peft adapter directory."""
    from apr_core import __version__
    from apr_core.model import LazyTensor

    from .adapter import LoraAdapter, merged
    from .modules import lora_state

    pairs = {}
    for key, tensor in lora_state(peft_model).items():
        module, part = key[len("base_model.model."):].rsplit(".lora_", 1)
        pairs.setdefault(module, {})[part[0]] = LazyTensor.of(key, tensor)
    config = {"r": params["rank"], "lora_alpha": params["alpha"], "lora_dropout": params["dropout"],
              "target_modules": sorted({m.rsplit(".", 1)[-1] for m in pairs}), "bias": "none",
              "task_type": "CAUSAL_LM", "base_model_name_or_path": model.config.get("_name_or_path") or None}
    training = {**summary, "base_sha256": model.fingerprint(), "apr_version": __version__}
    if method == "qlora":
        training["base_quantization"] = {"quant_type": "nf4", "blocksize": 64,
                                         "double_quant": bool(params["double_quant"])}
    adapter = LoraAdapter(config, {m: (p["A"], p["B"]) for m, p in pairs.items()}, training,
                          files={name: (workdir / name).read_bytes() for name in files.values()})
    return merged(model, adapter, "the trained adapter")
