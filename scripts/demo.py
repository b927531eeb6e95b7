#!/usr/bin/env python3
"""The main job on the embedded default model, one CLI call per stage, ending in one summary.

    import smollm2-135m -> inspect -> perplexity (held-out code, prose) -> prune (wanda 30%)
    -> merge (slerp base + pruned) -> quantize (int4 .apr, q4k GGUF)
    -> HumanEval (first problems, sandboxed) -> export HF -> logits check

Each technique plugin adds its stage here and its line to the summary.
Outputs land in runs/demo/ (or the directory given as the first argument).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
PPL = ["--seq-len", "512", "--max-tokens", "8192"]


def apr(*args: str) -> dict:
    cmd = [sys.executable, "-m", "apr_core.cli", *args]
    print("$ apr " + " ".join(args), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"stage failed: apr {' '.join(args)}")
    return json.loads(proc.stdout) if "--json" in args else {}


def logits_match(apr_path: Path, hf_dir: Path) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    from apr_core import pipeline
    from apr_core.torch_bridge import to_transformers

    ours = to_transformers(pipeline.load(str(apr_path)))
    theirs = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ids = torch.arange(100, 164).unsqueeze(0)
    with torch.inference_mode():
        return (ours(ids).logits - theirs(ids).logits).abs().max().item()


def merge_stage(base: Path, pruned: Path) -> tuple[str, str]:
    """SLERP the dense model with its pruned copy (85/15, the playbook's final round) and score it."""
    merged = OUT / "merged-slerp.apr"
    t = time.perf_counter()
    apr("merge", str(base), str(pruned), "--strategy", "slerp", "--weights", "0.85,0.15", "-o", str(merged), "--json")
    seconds = time.perf_counter() - t
    e = apr("eval", str(merged), "--dataset", "stdlib-code", *PPL, "--json")
    return "merge slerp 0.85/0.15", f"dense + pruned-30 in {seconds:.0f}s, code perplexity {e['value']:.3f}"


def quantize_stage(base: Path, rows: list[tuple[str, str]]) -> None:
    """apr quantize as the playbook runs it: int4 .apr (evaluated) and a q4k GGUF for llama.cpp."""
    q4 = OUT / "model-q4.apr"
    t = time.perf_counter()
    r = apr("quantize", str(base), "--scheme", "int4", "-o", str(q4), "--json")
    seconds = time.perf_counter() - t
    e = apr("eval", str(q4), "--dataset", "stdlib-code", *PPL, "--json")
    g = apr("quantize", str(base), "--scheme", "q4k", "--format", "gguf", "-o", str(OUT / "model.gguf"), "--json")
    rows.append(("quantize int4", f"{r['report']['output_bytes'] / 2**20:.0f} MiB, "
                                  f"{r['report']['bits_per_weight']:.2f} bits/weight in {seconds:.0f}s, "
                                  f"code perplexity {e['value']:.3f}; q4k GGUF "
                                  f"{g['report']['output_bytes'] / 2**20:.0f} MiB"))


def humaneval_stage(base: Path, rows: list[tuple[str, str]]) -> None:
    """A few HumanEval problems, greedy, executed in the sandbox (the full run is in docs/eval.md)."""
    r = apr("eval", str(base), "--task", "humaneval", "--allow-code-execution", "--limit", "4",
            "--max-tokens", "128", "--batch-size", "4", "--no-resume",
            "--results", str(OUT / "humaneval-demo.jsonl"), "--json")
    rows.append(("humaneval (4 problems)", f"pass@1 {r['value']:.2f} ({r['passed']}/{r['problems']}), sandbox "
                                           f"{r['sandbox']}, {r['tokens_per_second']} tok/s, "
                                           f"{r['samples_per_second']} samples/s"))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    base, hf = OUT / "base.apr", OUT / "base-hf"
    rows: list[tuple[str, str]] = []
    t = time.perf_counter()
    apr("import", "smollm2-135m", "-o", str(base), "--json")
    rows.append(("import", f"{base} in {time.perf_counter() - t:.1f}s"))
    info = apr("inspect", str(base), "--json")
    rows.append(("inspect", f"{info['architecture']}, {info['params'] / 1e6:.1f}M params, "
                            f"{info['bytes'] / 2**20:.0f} MiB, tokenizer {info['tokenizer']['type']} "
                            f"vocab {info['tokenizer']['vocab_size']}, chat template "
                            f"{'yes' if info['tokenizer']['chat_template'] else 'no'}"))
    for corpus in ("stdlib-code", "python-docs"):
        r = apr("eval", str(base), "--dataset", corpus, *PPL, "--json")
        rows.append((f"perplexity {corpus}", f"{r['value']:.3f} ({r['tokens']} tokens, seq {r['seq_len']}, "
                                             f"{r['tokens_per_second']:.0f} tok/s)"))
    pruned = OUT / "pruned-30.apr"
    t = time.perf_counter()
    r = apr("prune", str(base), "--method", "wanda", "--target-ratio", "0.3", "--calibration-samples", "16",
            "--calibration-seq-len", "128", "-o", str(pruned), "--json")
    seconds = time.perf_counter() - t
    e = apr("eval", str(pruned), "--dataset", "stdlib-code", *PPL, "--json")
    rows.append(("prune wanda 30%", f"sparsity {r['report']['achieved_sparsity']:.3f} in {seconds:.0f}s "
                                    f"(16 calibration windows), code perplexity {e['value']:.3f}"))
    rows.append(merge_stage(base, pruned))
    quantize_stage(base, rows)
    humaneval_stage(base, rows)
    apr("export", str(base), "--format", "hf", "-o", str(hf), "--json")
    diff = logits_match(base, hf)
    rows.append(("export hf", f"{hf}: transformers logits max |diff| = {diff:.2e}"))
    width = max(len(k) for k, _ in rows)
    print("\napr demo summary (SmolLM2-135M-Instruct)")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    if diff > 1e-4:
        raise SystemExit("exported model does not reproduce the logits")


if __name__ == "__main__":
    main()
