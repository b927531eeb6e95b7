#!/usr/bin/env python3
"""Code-evaluation benchmark: sandbox throughput against a plain subprocess, and generation speed.

    python benchmarks/eval.py [--problems 164] [--model runs/smollm2.apr] [--out runs/bench-eval.json]

Execution: the HumanEval canonical solutions (the first --problems) run through every sandbox
backend available here and through the unisolated baseline (``none``: a plain subprocess with
the same rlimits), all with the same worker count, in the same run; reported as samples/s and
as a ratio to the baseline. Each run also checks that every solution passed.
Generation (with --model): greedy decoding of the first --gen-prompts HumanEval prompts (chat
template, standard strategy) for --gen-tokens new tokens, unbatched vs batched, in tokens/s.
Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins"))


def bench_execution(n: int, workers: int) -> list[dict]:
    from apr_eval.code.extraction import extract_code
    from apr_eval.code.problems import humaneval_path, load_problems
    from apr_eval.code.programs import build_program
    from apr_eval.prompting.base import base_stops
    from apr_eval.sandbox import Limits, Sandbox, available_modes

    problems = load_problems(humaneval_path(), want="humaneval")[:n]
    programs = [build_program(p, extract_code(p.reference, p.entry_point, p.prompt, base_stops(p))) for p in problems]
    rows = []
    for mode in ["none"] + available_modes():
        with Sandbox(mode, Limits(timeout_s=30), workers=workers) as box:
            box.run(programs[0])  # warm the page cache
            start = time.perf_counter()
            verdicts = box.run_many(programs)
            seconds = time.perf_counter() - start
        rows.append({"backend": mode, "samples": len(programs), "passed": sum(v.passed for v in verdicts),
                     "seconds": round(seconds, 2), "samples_per_second": round(len(programs) / seconds, 2)})
    base = rows[0]["samples_per_second"]
    for r in rows:
        r["vs_plain_subprocess"] = round(r["samples_per_second"] / base, 3)
    return rows


def bench_generation(model_path: str, prompts: int, tokens: int) -> list[dict]:
    from apr_core import pipeline
    from apr_core.torch_bridge import load_tokenizer, to_transformers
    from apr_eval.code.generation import generate_batch
    from apr_eval.code.problems import humaneval_path, load_problems
    from apr_eval.code.task import render, strategy_of
    from apr_eval.prompting.base import PromptOptions

    model = pipeline.load(model_path, verify=False)
    tok, module = load_tokenizer(model), to_transformers(model)
    strategy = strategy_of("standard")
    problems = load_problems(humaneval_path(), want="humaneval")[:prompts]
    texts = [render(tok, strategy.build(p, True, PromptOptions()), True) for p in problems]
    rows = []
    for batch in (1, len(texts)):
        start, produced = time.perf_counter(), 0
        for i in range(0, len(texts), batch):
            out = generate_batch(module, tok, texts[i: i + batch], [()] * len(texts[i: i + batch]),
                                 max_new_tokens=tokens, temperature=0.0, top_p=1.0, seed=0, add_special_tokens=False)
            produced += sum(g.tokens for g in out)
        seconds = time.perf_counter() - start
        rows.append({"batch": batch, "tokens": produced, "seconds": round(seconds, 2),
                     "tokens_per_second": round(produced / seconds, 1)})
    for r in rows:
        r["vs_unbatched"] = round(r["tokens_per_second"] / rows[0]["tokens_per_second"], 2)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=int, default=164)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--model", default=None, help="an .apr for the generation part (skipped without)")
    ap.add_argument("--gen-prompts", type=int, default=8)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-eval.json"))
    args = ap.parse_args()
    result = {"execution": bench_execution(args.problems, args.workers), "workers": args.workers}
    print(f"\nSandboxed execution, {args.problems} HumanEval canonical solutions, {args.workers} workers\n")
    print("| backend | passed | seconds | samples/s | vs plain subprocess |\n|---|---|---|---|---|")
    for r in result["execution"]:
        print(f"| {r['backend']} | {r['passed']}/{r['samples']} | {r['seconds']} | {r['samples_per_second']} | "
              f"{r['vs_plain_subprocess']}x |")
    if args.model:
        result["generation"] = bench_generation(args.model, args.gen_prompts, args.gen_tokens)
        print(f"\nGreedy generation, {args.gen_prompts} HumanEval chat prompts x {args.gen_tokens} new tokens\n")
        print("| batch | tokens | seconds | tokens/s | vs unbatched |\n|---|---|---|---|---|")
        for r in result["generation"]:
            print(f"| {r['batch']} | {r['tokens']} | {r['seconds']} | {r['tokens_per_second']} | {r['vs_unbatched']}x |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
