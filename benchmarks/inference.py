#!/usr/bin/env python3
"""Inference benchmark: `apr eval` generation and perplexity next to plain transformers, same run.

    nice -n 10 python benchmarks/inference.py [--model runs/smollm2.apr] [--out runs/bench-inference]
        [--dtypes f32,bf16] [--prompts 8] [--gen-tokens 64] [--ppl-tokens 8192] [--repeats 2]

For each stored precision in ``--dtypes`` (the model as given, and a bf16-stored copy made with
``apr import --dtype bf16``) and each repeat, alternating apr and the peer in fresh processes:

- perplexity: ``apr eval M --task perplexity`` over the first --ppl-tokens tokens of stdlib-code
  in 512-token windows, against a plain ``model(ids, labels=ids)`` loop over the very same
  windows (benchmarks/peers/transformers_inference.py);
- generation: ``apr eval M --task humaneval`` on the first --prompts problems (chat prompts,
  greedy, --gen-tokens new tokens, one batch), against ``model.generate`` on the same rendered
  prompts with their stop strings through ``stop_strings=``; the completions are compared.

Both sides run with their own defaults: apr chooses its thread count, OpenMP wait policy and
compute precision (``--threads``/``--dtype`` unset); the peer loads with ``from_pretrained``'s
default dtype and torch's default threads. The peer runs in its own environment
(runs/peers/transformers: the same torch and transformers versions apr uses, nothing else).
Reports in-loop tokens/s (apr's own figure from its JSON, the peer's from its loop) and the
whole process's wall time, CPU time and peak RSS, each as the median over repeats, and the
ratios apr/peer. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, measure, peer_python, ratio  # noqa: E402

sys.path.insert(0, str(ROOT / "plugins"))
PEER = ROOT / "benchmarks" / "peers" / "transformers_inference.py"


def apr_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "apr_core.cli", *args]


def clean_env() -> dict:
    """The environment without thread settings, so each side picks its own."""
    drop = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "APR_THREADS", "APR_THREADS_SOURCE", "APR_WAIT_POLICY",
            "MKL_NUM_THREADS")
    return {k: v for k, v in os.environ.items() if k not in drop} | {"APR_QUIET": "1"}


def prepare(model: Path, out: Path, dtypes: list[str]) -> dict[str, tuple[Path, Path]]:
    """For each stored precision: an .apr and its HF export for the peer."""
    models = {}
    for dt in dtypes:
        apr_path = model if dt == "f32" else out / f"model-{dt}.apr"
        hf = out / f"model-{dt}-hf"
        if dt != "f32" and not apr_path.exists():
            first = models.get("f32", (None, out / "model-f32-hf"))[1]
            if not first.exists():
                measure(apr_cmd("export", str(model), "--format", "hf", "-o", str(first), "-q"), env=clean_env())
            measure(apr_cmd("import", str(first), "--dtype", dt, "-o", str(apr_path), "-q"), env=clean_env())
        if not hf.exists():
            measure(apr_cmd("export", str(apr_path), "--format", "hf", "-o", str(hf), "-q"), env=clean_env())
        models[dt] = (apr_path, hf)
    return models


def inputs(model: Path, out: Path, n_prompts: int, ppl_tokens: int, seq_len: int) -> tuple[Path, Path, list]:
    """The rendered HumanEval prompts (with stop strings) and the perplexity windows, computed
    with apr's own tokenizer and renderer so both sides see identical inputs."""
    from apr_core import pipeline
    from apr_core.corpora import load_corpus
    from apr_core.runtime.tokens import consecutive_windows, encode
    from apr_core.torch_bridge import load_tokenizer
    from apr_eval.code.problems import humaneval_path, load_problems
    from apr_eval.code.task import render, strategy_of
    from apr_eval.prompting.base import PromptOptions

    m = pipeline.load(str(model), verify=False)
    tok = load_tokenizer(m)
    strategy = strategy_of("standard")
    problems = load_problems(humaneval_path(), want="humaneval")[:n_prompts]
    prompts = []
    for p in problems:
        built = strategy.build(p, True, PromptOptions())
        prompts.append({"task_id": p.task_id, "text": render(tok, built, True), "stops": list(built.stops)})
    ids = encode(tok, load_corpus("stdlib-code", "text").text)[:ppl_tokens]
    windows = consecutive_windows(ids, seq_len)
    prompt_file, window_file = out / "prompts.json", out / "windows.json"
    prompt_file.write_text(json.dumps(prompts))
    window_file.write_text(json.dumps(windows.tolist()))
    return prompt_file, window_file, prompts


def run_pair(task: str, apr_model: Path, hf: Path, args, files, peer, out: Path) -> tuple[dict, dict]:
    prompt_file, window_file = files
    if task == "perplexity":
        ours = measure(apr_cmd("eval", str(apr_model), "--task", "perplexity", "--max-tokens", str(args.ppl_tokens),
                               "--seq-len", str(args.seq_len), "--json"), env=clean_env())
        record = json.loads(ours["stdout"])
        ours.update(tokens_per_second=record["tokens_per_second"], quality=record["value"], dtype=record["dtype"])
        theirs = measure([peer, str(PEER), "perplexity", "--model", str(hf), "--windows", str(window_file)],
                         env=clean_env())
        record = json.loads(theirs["stdout"].strip().splitlines()[-1])
        theirs.update(tokens_per_second=record["tokens_per_second"], quality=record["perplexity"],
                      dtype=record["dtype"])
        return ours, theirs
    results = out / "humaneval-samples.jsonl"
    results.unlink(missing_ok=True)
    ours = measure(apr_cmd("eval", str(apr_model), "--task", "humaneval", "--limit", str(args.prompts),
                           "--max-tokens", str(args.gen_tokens), "--batch-size", str(args.prompts),
                           "--allow-code-execution", "--no-resume", "--results", str(results), "--json"),
                   env=clean_env())
    record = json.loads(ours["stdout"])
    samples = [json.loads(line) for line in results.read_text().splitlines()[1:] if line.strip()]
    ours.update(tokens_per_second=record["tokens_per_second"], dtype=record.get("dtype"),
                texts=[s["completion"] for s in sorted(samples, key=lambda s: int(s["task_id"].split("/")[-1]))])
    theirs = measure([peer, str(PEER), "generate", "--model", str(hf), "--prompts", str(prompt_file),
                      "--max-new-tokens", str(args.gen_tokens), "--batch-size", str(args.prompts)], env=clean_env())
    record = json.loads(theirs["stdout"].strip().splitlines()[-1])
    theirs.update(tokens_per_second=record["tokens_per_second"], dtype=record["dtype"], texts=record["texts"])
    return ours, theirs


def summarise(task: str, dt: str, pairs: list[tuple[dict, dict]]) -> dict:
    def med(side: int, key: str) -> float:
        return statistics.median(p[side][key] for p in pairs)

    row = {"task": task, "stored": dt, "apr_dtype": pairs[0][0]["dtype"], "peer_dtype": pairs[0][1]["dtype"],
           "repeats": len(pairs)}
    for key in ("tokens_per_second", "wall_s", "cpu_s", "peak_rss"):
        row[f"apr_{key}"], row[f"peer_{key}"] = med(0, key), med(1, key)
        row[f"{key}_ratio"] = ratio(row[f"apr_{key}"], row[f"peer_{key}"])
    if task == "perplexity":
        row["apr_perplexity"], row["peer_perplexity"] = pairs[0][0]["quality"], pairs[0][1]["quality"]
    else:
        a, b = pairs[0][0]["texts"], pairs[0][1]["texts"]
        row["same_completions"] = f"{sum(x.strip() == y.strip() for x, y in zip(a, b))}/{len(b)}"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "runs" / "smollm2.apr"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-inference"))
    ap.add_argument("--dtypes", default="f32,bf16", help="stored precisions to compare: f32 (the model), bf16")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--ppl-tokens", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tasks", default="perplexity,generation")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(args.model)
    if not model.exists():
        model.parent.mkdir(parents=True, exist_ok=True)
        measure(apr_cmd("import", "smollm2-135m", "-o", str(model), "-q"), env=clean_env())
    import transformers

    peer = peer_python("transformers", [f"transformers=={transformers.__version__}"])
    models = prepare(model, out, args.dtypes.split(","))
    files = inputs(model, out, args.prompts, args.ppl_tokens, args.seq_len)[:2]
    rows = []
    for task in args.tasks.split(","):
        for dt, (apr_model, hf) in models.items():
            pairs = [run_pair(task, apr_model, hf, args, files, peer, out) for _ in range(args.repeats)]
            rows.append(summarise(task, dt, pairs))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"\n`apr eval` vs plain transformers, {os.cpu_count()} CPUs, median of {args.repeats} alternating runs\n")
    print("| task | stored | apr dtype | peer dtype | apr tok/s | peer tok/s | tok/s apr/peer | wall apr/peer "
          "| CPU apr/peer | peak RSS apr/peer | check |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        check = (f"ppl {r['apr_perplexity']:.4f} vs {r['peer_perplexity']:.4f}" if r["task"] == "perplexity"
                 else f"same completions {r['same_completions']}")
        print(f"| {r['task']} | {r['stored']} | {r['apr_dtype']} | {r['peer_dtype']} | {r['apr_tokens_per_second']:.1f} "
              f"| {r['peer_tokens_per_second']:.1f} | {r['tokens_per_second_ratio']} | {r['wall_s_ratio']} "
              f"| {r['cpu_s_ratio']} | {r['peak_rss_ratio']} | {check} |")
    (out / "inference.json").write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=2))
    print(f"\nwrote {out / 'inference.json'}")


if __name__ == "__main__":
    main()
