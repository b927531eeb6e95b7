"""The technique kinds of the playbook and the option that selects a technique in each.

These fix the command names users type (``apr merge --strategy``, ``apr prune
--method``, ``apr quantize --scheme`` ...). A kind's command appears once at
least one technique of that kind is installed; plugins may add kinds of
their own by registering a `Kind`.
"""

from .technique import Kind

CORE_KINDS = {
    k.name: k
    for k in (
        Kind("merge", "strategy", "Merge models of the same architecture into one.", 1, None),
        Kind("prune", "method", "Remove weights, heads, channels or layers.", 1, 1),
        Kind("quantize", "scheme", "Store weights in fewer bits.", 1, 1),
        Kind("finetune", "method", "Fine-tune with LoRA or QLoRA adapters.", 1, 1),
        Kind("distill", "strategy", "Distil a teacher into a student model.", 1, 1),
        Kind("tune", "strategy", "Search hyperparameters with optuna.", 1, 1),
    )
}
