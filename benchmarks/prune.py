#!/usr/bin/env python3
"""Pruning benchmark on SmolLM2-135M-Instruct: quality, wall time, size and speed in one run.

    python benchmarks/prune.py [--out runs/bench-prune] [--calibration-samples 128] [--max-tokens 8192]

Every method runs through the CLI exactly as a user would. Perplexity is measured on held-out
stdlib code and Python-docs prose (windows of 512, the first --max-tokens tokens), side by side
with the dense model in the same run. Structurally pruned models also report parameter count,
file size and forward throughput relative to dense (median of repeated forward passes of a
fixed batch, in the same process). Prints a markdown table and writes JSON.

Speed and memory against llm-compressor (Wanda, SparseGPT on the same token ids, in separate
processes, its own venv) are measured by the sibling benchmarks/prune_peers.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import child_env  # noqa: E402

sys.path.pop(0)

VARIANTS = [
    ("dense", None, []),
    ("magnitude 50%", "magnitude", ["--target-ratio", "0.5"]),
    ("magnitude 4:8", "magnitude", ["--pattern", "4:8"]),
    ("magnitude 2:4", "magnitude", ["--pattern", "2:4"]),
    ("wanda 50%", "wanda", ["--target-ratio", "0.5"]),
    ("wanda 4:8", "wanda", ["--pattern", "4:8"]),
    ("wanda 2:4", "wanda", ["--pattern", "2:4"]),
    ("sparsegpt 50%", "sparsegpt", ["--target-ratio", "0.5"]),
    ("sparsegpt 4:8", "sparsegpt", ["--pattern", "4:8"]),
    ("sparsegpt 2:4", "sparsegpt", ["--pattern", "2:4"]),
    ("structured 25%", "structured", ["--target-ratio", "0.25"]),
    ("depth 25%", "depth", ["--target-ratio", "0.25"]),
    ("width 25% rotation", "width", ["--target-ratio", "0.25", "--criterion", "rotation"]),
    ("width 25% activation", "width", ["--target-ratio", "0.25", "--criterion", "activation"]),
]
CALIBRATED = {"wanda", "sparsegpt", "structured", "depth", "width"}
STRUCTURAL = {"structured", "depth", "width"}


def apr(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "apr_core.cli", *args, "--json"], capture_output=True, text=True,
                          env=child_env(APR_QUIET="1"))
    if proc.returncode != 0:
        raise SystemExit(f"apr {' '.join(args)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def forward_speed(path: str, repeats: int = 5) -> float:
    """Tokens per second of a forward pass over a 4 x 256 batch (median of ``repeats``)."""
    import torch

    from apr_core import pipeline
    from apr_core.torch_bridge import to_transformers

    module = to_transformers(pipeline.load(path))
    ids = torch.randint(0, 1000, (4, 256), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode():
        module(ids)
        for _ in range(repeats):
            t = time.perf_counter()
            module(ids)
            times.append(time.perf_counter() - t)
    return ids.numel() / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench-prune")
    ap.add_argument("--calibration-samples", default="128")
    ap.add_argument("--max-tokens", default="8192")
    ap.add_argument("--only", default=None, help="comma list of variant labels to run (dense always runs)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = out / "base.apr"
    if not base.exists():
        apr("import", "smollm2-135m", "-o", str(base))
    wanted = None if args.only is None else {"dense", *args.only.split(",")}
    rows = []
    for label, method, extra in VARIANTS:
        if wanted is not None and label not in wanted:
            continue
        path, seconds, report = str(base), 0.0, {}
        if method is not None:
            path = str(out / (label.replace(" ", "-").replace("%", "").replace(":", "_") + ".apr"))
            cal = ["--calibration-samples", args.calibration_samples] if method in CALIBRATED else []
            t = time.perf_counter()
            report = apr("prune", str(base), "--method", method, *extra, *cal, "-o", path)["report"]
            seconds = time.perf_counter() - t
        row = {"variant": label, "prune_seconds": round(seconds, 1), "report": report}
        for corpus in ("stdlib-code", "python-docs"):
            r = apr("eval", path, "--dataset", corpus, "--seq-len", "512", "--max-tokens", args.max_tokens)
            row[f"ppl_{corpus}"] = round(r["value"], 3)
        info = apr("inspect", path, "--no-verify")
        row["params"] = info["params"]
        row["file_bytes"] = os.path.getsize(path)
        if method is None or method in STRUCTURAL:
            row["tokens_per_s"] = round(forward_speed(path), 1)
        rows.append(row)
        print(f"done: {label}", file=sys.stderr, flush=True)
    dense = rows[0]
    for row in rows:
        if "tokens_per_s" in row:
            row["speedup_vs_dense"] = round(row["tokens_per_s"] / dense["tokens_per_s"], 3)
        row["params_vs_dense"] = round(row["params"] / dense["params"], 3)
    (out / "prune.json").write_text(json.dumps(rows, indent=2))
    print("| variant | ppl code | ppl prose | achieved sparsity | params vs dense | speed vs dense | prune time (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        sparsity = r["report"].get("achieved_sparsity", "")
        print(f"| {r['variant']} | {r['ppl_stdlib-code']} | {r['ppl_python-docs']} | {sparsity} | "
              f"{r['params_vs_dense']} | {r.get('speedup_vs_dense', '')} | {r['prune_seconds']} |")
    print(f"\nJSON: {out / 'prune.json'}")


if __name__ == "__main__":
    main()
