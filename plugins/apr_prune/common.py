"""What every pruning method shares: the command family, parameters, masks and accounting.

`PRUNE_KIND` defines ``apr prune --method`` (default ``wanda``, as the
playbook's recipe) and its ``--analyze`` action. Unstructured methods prune
the linear layers of the decoder; embeddings and the LM head only with
``--include-embeddings`` (by magnitude within each row, since they have no
input activations to weigh).
"""

from __future__ import annotations

from typing import Any

from apr_core.errors import AprError
from apr_core.params import Param, Search
from apr_core.technique import Kind, TransformTechnique

PRUNE_KIND = Kind("prune", "method", "Remove weights, heads, channels or layers.", 1, 1, default="wanda",
                  actions=("analyze",))

def ratio_param(help_text: str, default: float | None) -> Param:
    """``--target-ratio``, strictly between 0 and 1, with a method-specific meaning."""
    return Param("target_ratio", "float", default, help_text, min=0, max=1, min_exclusive=True, max_exclusive=True,
                 search=Search(0.1, 0.7))


TARGET_RATIO = ratio_param("Fraction of weights to remove (default 0.5, or what an N:M pattern implies)", None)
PATTERN = Param("pattern", "str", "unstructured",
                "Sparsity pattern: unstructured, or N:M such as 2:4 or 4:8 (N kept of every M inputs)")
CALIBRATION = Param("calibration", "str", None,
                    "Calibration data: jsonl with a text field (or with input_ids: token-id windows "
                    "used as given), raw text, or a built-in corpus (default: 128 windows of "
                    "stdlib-calibration)")
SAMPLES = Param("calibration_samples", "int", 128, "Number of calibration windows", min=1)
SEQ_LEN = Param("calibration_seq_len", "int", 256, "Tokens per calibration window", min=8)
BATCH = Param("calibration_batch", "int", 8, "Calibration windows per forward pass", min=1)
INCLUDE_EMBEDDINGS = Param("include_embeddings", "bool", False,
                           "Also prune the embeddings and LM head (by magnitude within each row)")
CALIBRATION_PARAMS = (CALIBRATION, SAMPLES, SEQ_LEN, BATCH)


def parse_pattern(text: str) -> tuple[int, int] | None:
    """None for unstructured, else (N, M)."""
    if text == "unstructured":
        return None
    try:
        n, m = (int(x) for x in text.split(":"))
    except ValueError:
        raise AprError(f"--pattern {text!r} is not 'unstructured' or N:M (e.g. 2:4)") from None
    if not 0 < n < m:
        raise AprError(f"--pattern {text}: N:M needs 0 < N < M")
    return n, m


def check_ratio_and_pattern(params: dict[str, Any]) -> None:
    """Fill ``target_ratio`` from the pattern (N:M) or the 0.5 default; refuse contradictions."""
    nm = parse_pattern(params["pattern"])
    if nm is None:
        if params["target_ratio"] is None:
            params["target_ratio"] = 0.5
        return
    implied = (nm[1] - nm[0]) / nm[1]
    if params["target_ratio"] is not None and abs(params["target_ratio"] - implied) > 1e-9:
        raise AprError(f"--target-ratio {params['target_ratio']} conflicts with --pattern {params['pattern']}, "
                       f"which removes {implied:.3g} of every group of {nm[1]}")
    params["target_ratio"] = implied


def prune_mask(scores, ratio: float, nm: tuple[int, int] | None, per_row: bool):
    """Boolean mask of weights to remove, from non-negative importance scores.

    Unstructured: the lowest ``ratio`` fraction of each row (``per_row``) or of
    the whole matrix. N:M: the M-N lowest of every M consecutive inputs.
    """
    from apr_core.kernels.sparsity import nm_mask, row_prune_mask

    if nm is not None:
        n, m = nm
        if scores.shape[1] % m:
            raise AprError(f"--pattern {n}:{m} needs input dims divisible by {m}, got {scores.shape[1]}")
        return ~nm_mask(scores, n, m)
    if per_row:
        return row_prune_mask(scores, int(scores.shape[1] * ratio))
    flat = scores.reshape(1, -1)
    return row_prune_mask(flat, int(flat.shape[1] * ratio)).reshape(scores.shape)


def require_float(model) -> None:
    """Refuse a model with block-quantized tensors: pruning computes with (and zeroes) float
    weights, and on stored blocks it would silently zero bytes, not weights."""
    quantized = [n for n in model.names() if model.spec(n).dt.quantized]
    if quantized:
        raise AprError(f"pruning needs float weights, but {quantized[0]} is "
                       f"{model.spec(quantized[0]).dtype}-quantized ({len(quantized)} such tensors): prune the "
                       f"float model, then quantize (apr export --format hf writes a dequantized copy)")


class SparsityTally:
    """Counts zeros in the matrices a method pruned, verifies N:M groups, and keeps
    ``report`` current (it is filled as tensors are produced, which for streaming
    methods happens while the output is written)."""

    def __init__(self, nm: tuple[int, int] | None, target: float, model_params: int, report: dict) -> None:
        self.nm = nm
        self.target = target
        self.model_params = model_params
        self.report = report
        self.zeros = 0
        self.total = 0
        self.nm_ok = True

    def add(self, weight) -> None:
        self.zeros += int((weight == 0).sum())
        self.total += weight.numel()
        if self.nm is not None and weight.shape[-1] % self.nm[1] == 0:
            n, m = self.nm
            kept = (weight.reshape(-1, m) != 0).sum(1)
            self.nm_ok = self.nm_ok and bool((kept <= n).all())
        self.report.update({
            "target_sparsity": round(self.target, 6),
            "achieved_sparsity": round(self.zeros / self.total, 6),
            "pruned_params": self.total,
            "model_sparsity": round(self.zeros / self.model_params, 6),
        })
        if self.nm is not None:
            self.report["nm_pattern"] = f"{self.nm[0]}:{self.nm[1]}"
            self.report["nm_verified"] = self.nm_ok


def contract_calibration(workdir) -> dict[str, str]:
    """A tiny calibration file and options for the shared technique contract (tiny models)."""
    import json

    sample = workdir / "calibration.jsonl"
    lines = [json.dumps({"text": f"def f{i}(x):\n    return x * {i} + {i * i}\n" * 4}) for i in range(8)]
    sample.write_text("\n".join(lines) + "\n")
    return {"calibration": str(sample), "calibration_samples": "4", "calibration_seq_len": "16"}


class StructuralPruner(TransformTechnique):
    """Methods that remove whole structures (heads, channels, layers, dimensions): shapes change."""

    kind = "prune"
    changes_shapes = True
    random = True  # --seed picks the calibration windows
    contract_ratio = "0.5"

    def contract_params(self, workdir, inputs):
        return {"target_ratio": self.contract_ratio, **contract_calibration(workdir)}
