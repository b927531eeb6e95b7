#!/usr/bin/env python3
"""Tuning benchmark: TPE + ASHA against random search without pruning, same trial budget.

    python benchmarks/tune.py [--budget 12] [--epochs 9] [--rows 32] [--seeds 0] [--model tiny|PATH]
        [--out runs/bench-tune]

A small LoRA task: a tiny random Qwen2 (or ``--model PATH``, e.g. SmolLM2) fine-tuned on
``--rows`` short code instructions, a quarter of them held out; each trial trains up to
``--epochs`` epochs and is scored on the held-out loss. Both searches run through
`apr_tune.runner.run`, exactly what ``apr tune`` runs, over the same declared space (learning
rate, rank, alpha, dropout), each in its own study:

- ``tpe+asha``: multivariate TPE, successive halving on the held-out loss at each epoch;
- ``random``: random sampling, every trial trained to the end.

Compute is counted in trial-epochs (optimizer steps run / steps per epoch, summed over trials);
pruned trials count what they ran. Prints a markdown table and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]


def data(path: Path, rows: int) -> Path:
    ops = [("adds {i} to", "x + {i}"), ("multiplies x by {i}", "x * {i}"), ("subtracts {i} from", "x - {i}"),
           ("returns the remainder of x divided by {j}", "x % {j}")]
    lines = []
    for n in range(rows):
        text, code = ops[n % len(ops)]
        i, j = n, n + 2
        lines.append(json.dumps({"instruction": f"Write a function that {text.format(i=i, j=j)} x.",
                                 "output": f"def f(x):\n    return {code.format(i=i, j=j)}\n"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def search(model: str, data_path: Path, out: Path, strategy: str, scheduler: str, budget: int, epochs: int,
           seed: int) -> dict:
    from apr_core.technique import RunContext
    from apr_tune import runner

    settings = runner.Settings(models=[model], data=str(data_path), budget=budget, strategy=strategy,
                               scheduler=scheduler, max_epochs=epochs, output_dir=str(out),
                               fixed={"eval_split": "0.25", "batch_size": "4", "max_seq_len": "64"})
    start = time.perf_counter()
    summary = runner.run(settings, RunContext(quiet=True, seed=seed))
    return {"search": f"{strategy}+{scheduler}" if scheduler != "none" else strategy, "seed": seed,
            "best": summary["best"]["value"], "trial_epochs": summary["trial_epochs"],
            "trials": summary["trials"], "seconds": round(time.perf_counter() - start, 1),
            "best_params": summary["best"]["params"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=9)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--out", default="runs/bench-tune")
    args = ap.parse_args()
    import os
    import shutil

    os.environ.setdefault("APR_QUIET", "1")
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model = args.model
    if model == "tiny":
        from apr_core.testing import write_tiny

        model = write_tiny(out / "tiny.apr", "qwen2", seed=0)
    data_path = data(out / "data.jsonl", args.rows)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for strategy, scheduler in (("random", "none"), ("tpe", "asha")):
            row = search(model, data_path, out / f"{strategy}-{scheduler}-{seed}", strategy, scheduler,
                         args.budget, args.epochs, seed)
            rows.append(row)
            print(f"  {row['search']} seed {seed}: best {row['best']:.5f}, {row['trial_epochs']} trial-epochs, "
                  f"{row['seconds']}s", file=sys.stderr)
    lines = ["| search | seed | best held-out loss | trial-epochs | compute vs random | gap to random's best | "
             "trials | seconds |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        base = next(r for r in rows if r["seed"] == row["seed"] and r["search"] == "random")
        row["compute_ratio"] = round(row["trial_epochs"] / base["trial_epochs"], 3)
        row["gap"] = round((row["best"] - base["best"]) / base["best"], 5)
        trials = ", ".join(f"{v} {k}" for k, v in row["trials"].items())
        lines.append(f"| {row['search']} | {row['seed']} | {row['best']:.5f} | {row['trial_epochs']:g} | "
                     f"{row['compute_ratio']:.0%} | {row['gap']:+.2%} | {trials} | {row['seconds']} |")
    table = "\n".join(lines)
    print(table)
    report = {"budget": args.budget, "epochs": args.epochs, "rows": args.rows, "model": args.model, "results": rows,
              "table": table}
    (out / "tune.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON: {out / 'tune.json'}")


if __name__ == "__main__":
    main()
