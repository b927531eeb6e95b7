#!/usr/bin/env python3
"""apr prune against llm-compressor (Wanda, SparseGPT): time, CPU time, peak memory, perplexity.

    python benchmarks/prune_peers.py [--model runs/smollm2.apr] [--variants wanda,sparsegpt]
        [--samples 16] [--seq-len 512] [--repeats 1] [--max-tokens 4096] [--out runs/bench-prune-peers]

On SmolLM2-135M-Instruct (``apr import smollm2-135m`` unless ``--model`` names an .apr):

- the calibration windows are drawn once by apr's own code (``stdlib-calibration``, seed 0)
  and written as token ids to ``windows.jsonl``; apr reads it with ``--calibration
  windows.jsonl`` and the peer script (benchmarks/peers/prune_llmcompressor.py) reads the same
  file, so both sides calibrate on identical tokens;
- llm-compressor is installed by this script into its own venv, runs/peers/llmcompressor
  (torch==2.13.0, the CPU build, first; then llmcompressor with a constraints file pinning
  torch; it brings its own transformers, which differs from apr's). An installed venv is reused;
- every variant runs apr then the peer, each in a fresh process, ``--repeats`` times in
  alternation, so drifting machine load hits both; wall time, CPU time (user + system of the
  child) and peak RSS (``ru_maxrss``) come from ``os.wait4``. Both compute in float32 on the CPU;
- apr's output is exported to a Hugging Face directory (not timed) and the perplexity of the
  base model and of every output directory is measured by one code, ``apr eval DIR --dataset
  stdlib-code --seq-len 512 --max-tokens N``, in the same run.

Prints a markdown table (medians over repeats, ratios apr/peer) and writes JSON.
Variants: ``wanda``, ``sparsegpt`` (50% unstructured), ``wanda-2:4``, ``sparsegpt-2:4``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, child_env, peer_python  # noqa: E402

PEER_SCRIPT = ROOT / "benchmarks" / "peers" / "prune_llmcompressor.py"
PEER_PACKAGES = ["llmcompressor==0.14.0.1"]


def measured(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` in a fresh process: stdout, wall seconds, CPU seconds and peak RSS (MB)."""
    import time

    env = child_env(APR_QUIET="1", TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        out = proc.stdout.read()
        _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed (see {log}):\n{log.read_text()[-3000:]}")
    return {"stdout": out, "wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def apr(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "apr_core.cli", *args, "--json"], capture_output=True,
                          text=True, env=child_env(APR_QUIET="1"))
    if proc.returncode != 0:
        raise SystemExit(f"apr {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def ensure_peer() -> Path:
    """The peer's python, installing its venv on first use (see the module docstring)."""
    return Path(peer_python("llmcompressor", PEER_PACKAGES))


def prepare(out: Path, model: str | None, samples: int, seq_len: int) -> tuple[Path, Path, Path]:
    """The base .apr, its HF export, and the calibration windows as token ids."""
    out.mkdir(parents=True, exist_ok=True)
    base = Path(model) if model else out / "base.apr"
    if not base.exists():
        apr("import", "smollm2-135m", "-o", str(base))
    base_hf = out / "base-hf"
    if not base_hf.is_dir():
        apr("export", str(base), "--format", "hf", "-o", str(base_hf))
    windows = out / f"windows-{samples}x{seq_len}.jsonl"
    if not windows.is_file():
        from apr_core import pipeline
        from apr_core.runtime.tokens import calibration_windows

        ids = calibration_windows(pipeline.load(str(base), verify=False), None, samples, seq_len, 0)
        windows.write_text("".join(json.dumps({"input_ids": row}) + "\n" for row in ids.tolist()))
    return base, base_hf, windows


def perplexity(path: Path, max_tokens: int) -> float:
    return round(apr("eval", str(path), "--dataset", "stdlib-code", "--seq-len", "512",
                     "--max-tokens", str(max_tokens))["value"], 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="an .apr of SmolLM2-135M (default: import it)")
    ap.add_argument("--variants", default="wanda,sparsegpt")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--out", default="runs/bench-prune-peers")
    args = ap.parse_args()
    out = Path(args.out)
    base, base_hf, windows = prepare(out, args.model, args.samples, args.seq_len)
    peer = ensure_peer()
    rows = []
    for variant in args.variants.split(","):
        method, _, pattern = variant.partition("-")
        pattern = pattern or "unstructured"
        shape = ["--pattern", pattern] if pattern != "unstructured" else ["--target-ratio", "0.5"]
        tag = variant.replace(":", "_")
        apr_out, peer_out = out / f"apr-{tag}.apr", out / f"llmc-{tag}"
        runs: dict[str, list[dict]] = {"apr": [], "llm-compressor": []}
        for rep in range(args.repeats):
            runs["apr"].append(measured(
                [sys.executable, "-m", "apr_core.cli", "prune", str(base), "--method", method, *shape,
                 "--calibration", str(windows), "--calibration-samples", str(args.samples),
                 "--calibration-seq-len", str(args.seq_len), "-o", str(apr_out), "--force", "--json"],
                out / f"apr-{tag}.log"))
            runs["llm-compressor"].append(measured(
                [str(peer), str(PEER_SCRIPT), "--model", str(base_hf), "--windows", str(windows),
                 "--method", method, "--pattern", pattern, "--ratio", "0.5", "--out", str(peer_out)],
                out / f"llmc-{tag}.log"))
            print(f"done: {variant} repeat {rep + 1}", file=sys.stderr, flush=True)
        apr_hf = out / f"apr-{tag}-hf"
        shutil.rmtree(apr_hf, ignore_errors=True)
        apr("export", str(apr_out), "--format", "hf", "-o", str(apr_hf))
        row = {"variant": variant, "windows": args.samples, "seq_len": args.seq_len,
               "report": json.loads(runs["apr"][-1]["stdout"])["report"]}
        for side, outdir in (("apr", apr_hf), ("llm-compressor", peer_out)):
            for key in ("wall_s", "cpu_s", "peak_rss_mb"):
                row[f"{side}_{key}"] = statistics.median(r[key] for r in runs[side])
                row[f"{side}_{key}_all"] = [r[key] for r in runs[side]]
            row[f"{side}_ppl"] = perplexity(outdir, args.max_tokens)
        for key in ("wall_s", "cpu_s", "peak_rss_mb"):
            row[f"ratio_{key}"] = round(row[f"apr_{key}"] / row[f"llm-compressor_{key}"], 3)
        rows.append(row)
    result = {"dense_ppl": perplexity(base_hf, args.max_tokens), "max_tokens": args.max_tokens, "rows": rows}
    (out / "prune_peers.json").write_text(json.dumps(result, indent=2))
    print(f"dense perplexity (stdlib-code, {args.max_tokens} tokens, windows of 512): {result['dense_ppl']}\n")
    print("| variant | tool | wall (s) | CPU (s) | peak RSS (MB) | perplexity |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        for side in ("apr", "llm-compressor"):
            print(f"| {r['variant']} | {side} | {r[f'{side}_wall_s']} | {r[f'{side}_cpu_s']} | "
                  f"{r[f'{side}_peak_rss_mb']} | {r[f'{side}_ppl']} |")
        print(f"| {r['variant']} | apr / llm-compressor | {r['ratio_wall_s']} | {r['ratio_cpu_s']} | "
              f"{r['ratio_peak_rss_mb']} | |")
    print(f"\nJSON: {out / 'prune_peers.json'}")


if __name__ == "__main__":
    main()
