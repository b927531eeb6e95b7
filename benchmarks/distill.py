#!/usr/bin/env python3
"""Distillation benchmark: a depth-pruned SmolLM2 student under the same token budget, five ways.

    python benchmarks/distill.py [--teacher /work/runs/smollm2.apr] [--data /work/runs/py-instruct.jsonl]
        [--steps 12] [--batch-size 2] [--max-seq-len 160] [--train 48] [--heldout 24] [--classify 10]
        [--out runs/bench-distill]

Teacher: SmolLM2-135M-Instruct. Student: the teacher depth-pruned to half its layers by block
influence (``apr prune --method depth --target-ratio 0.5``). Second teacher for the ensemble: a
"code specialist", the teacher LoRA-fine-tuned on the training slice for the same number of steps.
Then, with the same steps, batch, sequence length, learning rate and seed:

- (a) the student untouched; (b) CE-only training (``apr distill --alpha 0``, the same code path
  without the KD term); (c) ``standard`` (``--temperature``, default 1, ``--alpha`` 0.5, forward KL); (d) ``progressive``
  (3 stages, combined difficulty); (e) ``ensemble`` (teacher + specialist, confidence weights).

Measured for each and for the teacher: held-out code perplexity = exp(mean cross-entropy per
answer token) on a slice of the data never trained on, and ``apr eval --task classify`` accuracy on
the first ``--classify`` HumanEval problems. HumanEval pass@1 is not run here (generation plus the
sandbox is far beyond this benchmark's CPU budget). Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def slices(data: str, out: Path, n_train: int, n_held: int) -> tuple[str, str]:
    rows = [line for line in Path(data).read_text().splitlines() if line.strip()]
    if len(rows) < n_train + n_held:
        raise SystemExit(f"{data} has {len(rows)} rows, fewer than --train + --heldout")
    train, held = out / "train.jsonl", out / "heldout.jsonl"
    train.write_text("\n".join(rows[:n_train]) + "\n")
    held.write_text("\n".join(rows[-n_held:]) + "\n")  # the far end: never trained on
    return str(train), str(held)


def heldout_ce(path: str, held: str, seq: int) -> float:
    """Mean cross-entropy per answer token of ``path`` on the held-out jsonl (the trainer's loss)."""
    import torch

    from apr_core import pipeline
    from apr_core.runtime import examples as ex
    from apr_core.runtime.trainer import collate
    from apr_core.torch_bridge import load_tokenizer, to_transformers
    from apr_finetune.modules import CausalLMLoss

    model = pipeline.load(path)
    examples = ex.tokenize(ex.read_records(held), ex.Formatter(load_tokenizer(model)), seq)[0]
    loss = CausalLMLoss(to_transformers(model))
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), 4):
            s, n = loss(*collate(examples[i:i + 4], "cpu"))
            total, count = total + float(s), count + n
    return total / count


def classify(path: str, limit: int) -> float:
    from apr_core import pipeline

    return pipeline.run("evaluate", "classify", [path], {"limit": limit})["value"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", default="/work/runs/smollm2.apr")
    ap.add_argument("--data", default="/work/runs/py-instruct.jsonl")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-seq-len", type=int, default=160)
    ap.add_argument("--train", type=int, default=48)
    ap.add_argument("--heldout", type=int, default=24)
    ap.add_argument("--classify", type=int, default=10)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--runs", default="baselines,ce,standard,progressive,ensemble",
                    help="which rows to measure (comma-separated)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-distill"))
    args = ap.parse_args()

    from apr_core import pipeline
    from apr_core.technique import RunContext

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, held = slices(args.data, out, args.train, args.heldout)
    ctx = lambda: RunContext(quiet=True, seed=0)  # noqa: E731
    began = time.perf_counter()
    student = str(out / "student.apr")
    if not Path(student).exists():
        pipeline.run("prune", "depth", [args.teacher], {"target_ratio": 0.5, "calibration_samples": 16,
                                                         "calibration_seq_len": 128}, student, context=ctx())
    common = {"data": train, "eval_data": held, "max_steps": args.steps, "batch_size": args.batch_size,
              "max_seq_len": args.max_seq_len, "warmup_ratio": 0.0}
    specialist = str(out / "specialist.apr")
    if not Path(specialist).exists():
        pipeline.run("finetune", "lora", [args.teacher], {**common, "dropout": 0.0, "eval_data": None,
                                                          "eval_split": 0.0}, specialist, context=ctx())
    kd = {"temperature": args.temperature, "alpha": args.alpha}
    tag = f"T={args.temperature:g}, alpha={args.alpha:g}"
    runs = {
        "ce": ("CE only (alpha 0)", "standard", [args.teacher], {"alpha": 0.0}),
        "standard": (f"standard ({tag})", "standard", [args.teacher], kd),
        "progressive": (f"progressive ({tag})", "progressive", [args.teacher], {**kd, "stages": 3}),
        "ensemble": (f"ensemble ({tag})", "ensemble", [args.teacher, specialist], kd),
    }
    wanted = [r.strip() for r in args.runs.split(",")]
    rows = []
    for label, path in (("teacher", args.teacher), ("student untouched", student)) if "baselines" in wanted else ():
        rows.append({"model": label, "steps": 0, "train_seconds": 0.0,
                     "heldout_ppl": math.exp(heldout_ce(path, held, args.max_seq_len)),
                     "classify_acc": classify(path, args.classify)})
        print(json.dumps(rows[-1]), flush=True)
    for key, (label, strategy, teachers, extra) in runs.items():
        if key not in wanted:
            continue
        target = str(out / f"{strategy}-T{extra.get('temperature', 0):g}-a{extra['alpha']:g}.apr")
        result = pipeline.run("distill", strategy, teachers, {**common, "student": student, **extra}, target,
                              context=ctx())
        report = result.get("report", {})
        rows.append({"model": label, "steps": args.steps, "train_seconds": report.get("seconds"),
                     "heldout_ppl": math.exp(heldout_ce(target, held, args.max_seq_len)),
                     "classify_acc": classify(target, args.classify)})
        print(json.dumps(rows[-1]), flush=True)
    summary = {"settings": vars(args), "tokens_per_run": args.steps * args.batch_size * args.max_seq_len,
               "seconds": round(time.perf_counter() - began, 1), "rows": rows}
    name = "results.json" if args.runs == ap.get_default("runs") else f"results-{'-'.join(wanted)}-T{args.temperature:g}.json"
    (out / name).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\n{args.steps} steps x {args.batch_size} examples x <= {args.max_seq_len} tokens each run; "
          f"{summary['seconds']} s in all\n")
    print("| model | steps | held-out code perplexity | classify accuracy | train s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['steps']} | {r['heldout_ppl']:.2f} | {r['classify_acc']:.4f} | "
              f"{r['train_seconds']:.0f} |")


if __name__ == "__main__":
    main()
