"""The ``apr finetune`` plugin: the command family, its methods, and the ``peft`` output format.

``-o DIR/`` of a LoRA or QLoRA run is a peft adapter directory (`apr_finetune.adapter`): the
format ``peft`` writes the adapter a model carries (``model.attachments["lora"]``).
"""

from __future__ import annotations

from apr_core.errors import AprError
from apr_core.plugins import hookimpl
from apr_core.technique import Kind

from .params import SHARED
from .technique import Auto, Full, Lora, QLora

FINETUNE_KIND = Kind("finetune", "method", "Fine-tune MODEL: LoRA, QLoRA or every weight (auto picks by memory); "
                     "or merge a LoRA adapter into it (--adapter DIR --merge).", 1, 1, default="auto",
                     options=SHARED, processes=True)


@hookimpl
def apr_register_techniques(register):
    register(FINETUNE_KIND)
    for technique in (Auto(), Lora(), QLora(), Full()):
        register(technique)


@hookimpl
def apr_formats():
    return ["peft"]


@hookimpl
def apr_save_model(model, destination, fmt, options):
    if fmt != "peft":
        return None
    adapter = model.attachments.get("lora")
    if adapter is None:
        raise AprError(f"cannot write {destination} as a peft adapter: this model carries no LoRA adapter "
                       f"(write .apr, safetensors, gguf or --format hf)")
    from .adapter import write_adapter

    return write_adapter(adapter, destination, progress=options.get("progress"))
