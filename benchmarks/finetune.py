#!/usr/bin/env python3
"""Fine-tuning benchmark: apr against a plain transformers Trainer + peft script, same run.

    python benchmarks/finetune.py [--models tiny,smollm2] [--methods lora,qlora,full] [--steps 20]
        [--batch-size 4] [--max-seq-len 256] [--train 400] [--heldout 64] [--out runs/bench-finetune]

For each model and method, on the same Python code-instruct data (``apr data code-instruct``;
a fixed held-out slice is never trained on), with the same batch, accumulation, steps, learning
rate, schedule and precision (float32 on the CPU):

- ``apr finetune --plan`` gives the predicted peak memory;
- ``apr finetune`` runs in a fresh process; its peak RSS comes from ``wait4`` (on CUDA the
  report's ``torch.cuda.max_memory_allocated`` would be the figure), tokens/s from its report;
- the peer script (benchmarks/peers/finetune_trainer.py) trains the same configuration on the
  same token ids in a fresh process, measured the same way;
- the held-out loss (mean cross-entropy per answer token) of the base, of apr's result and of the
  peer's result is computed by one function, in this process.

apr and the peer alternate, so drifting machine load hits both. Prints a markdown table of ratios
and writes JSON. The LoRA dropout is 0 on both sides (the peer's would draw other random masks).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, child_env, measure  # noqa: E402

sys.path.pop(0)  # else benchmarks/kernels.py shadows the `kernels` package bitsandbytes imports for QLoRA

PEER = ROOT / "benchmarks" / "peers" / "finetune_trainer.py"
LR = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}


def run_measured(cmd: list[str]) -> tuple[str, int]:
    """(stdout, peak RSS bytes) of ``cmd`` in a fresh process."""
    got = measure(cmd, env=child_env(APR_QUIET="1", TOKENIZERS_PARALLELISM="false"))
    return got["stdout"], got["peak_rss"]


def apr(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "apr_core.cli", *args], capture_output=True, text=True,
                          env=child_env(APR_QUIET="1"))
    if proc.returncode != 0:
        raise SystemExit(f"apr {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}


def steady_rate(steps: list[tuple[float, int]]) -> float | None:
    """Tokens/s after the first optimizer step, from (seconds since training began, tokens of
    the step) per step: the rate a long run settles at, without either side's first-step costs
    (lazy initialisation, first allocations), which dominate a short run on a tiny model."""
    if len(steps) < 2 or steps[-1][0] <= steps[0][0]:
        return None
    return round(sum(n for _t, n in steps[1:]) / (steps[-1][0] - steps[0][0]), 2)


def apr_steps(run_output: Path) -> list[tuple[float, int]]:
    """(seconds, tokens) per optimizer step from apr's train_log.json."""
    log = json.loads((run_output / "train_log.json").read_text())
    return [(r["seconds"], r["tokens"]) for r in log if "loss" in r]


def prepare(out: Path, models: list[str], n_train: int, n_held: int) -> dict:
    """The models as .apr and HF directories, the train / held-out jsonl, and their token ids."""
    out.mkdir(parents=True, exist_ok=True)
    data = out / "python-instruct.jsonl"
    if not data.is_file():
        apr("data", "code-instruct", "--language", "python", "-o", str(data), "--json")
    lines = data.read_text().splitlines()
    (out / "train.jsonl").write_text("\n".join(lines[n_held:n_held + n_train]) + "\n")
    (out / "heldout.jsonl").write_text("\n".join(lines[:n_held]) + "\n")
    paths = {}
    for name in models:
        apr_path = out / f"{name}.apr"
        if not apr_path.is_file():
            if name == "tiny":
                from apr_core.testing import write_tiny

                write_tiny(apr_path, "llama", seed=0, hidden_size=128, intermediate_size=256,
                           num_hidden_layers=4, max_position_embeddings=1024)
            else:
                apr("import", "smollm2-135m", "-o", str(apr_path), "--json")
        hf = out / f"{name}-hf"
        if not hf.is_dir():
            apr("export", str(apr_path), "--format", "hf", "-o", str(hf), "--json")
        paths[name] = (apr_path, hf)
    return {"models": paths, "train": out / "train.jsonl", "heldout": out / "heldout.jsonl"}


def token_file(model_path: Path, data: Path, seq: int, out: Path) -> Path:
    """The training examples as input_ids / labels (-100 on the prompt), as apr tokenizes them, in
    the order apr's first epoch visits them (seed 0), so the peer (reading them in file order)
    trains on the same batches."""
    from apr_core import pipeline
    from apr_core.runtime import examples as ex
    from apr_core.runtime.trainer import permutation
    from apr_core.torch_bridge import load_tokenizer

    fmt = ex.Formatter(load_tokenizer(pipeline.load(str(model_path), verify=False)))
    items, _ = ex.tokenize(ex.read_records(data), fmt, seq)
    with open(out, "w") as f:
        for e in (items[i] for i in permutation(len(items), 0, 0)):
            f.write(json.dumps({"input_ids": e.ids, "attention_mask": [1] * len(e.ids),
                                "labels": [i if m else -100 for i, m in zip(e.ids, e.mask)]}) + "\n")
    return out


def heldout_loss(model_path: Path, heldout: Path, seq: int, adapter: Path | None = None,
                 weights: Path | None = None) -> float:
    """Mean cross-entropy per answer token of the held-out examples (one function for all)."""
    import torch

    from apr_core import pipeline
    from apr_core.runtime import examples as ex
    from apr_core.runtime.trainer import collate
    from apr_core.torch_bridge import load_tokenizer, to_transformers
    from apr_finetune.modules import CausalLMLoss

    base = pipeline.load(str(model_path), verify=False)
    items, _ = ex.tokenize(ex.read_records(heldout), ex.Formatter(load_tokenizer(base)), seq)
    if weights is not None:
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(str(weights), dtype=torch.float32)
    else:
        lm = to_transformers(base)
    if adapter is not None:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, str(adapter)).base_model.model
    module = CausalLMLoss(lm).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(items), 8):
            loss, n = module(*collate(items[i:i + 8], "cpu"))
            total += float(loss)
            count += n
    return total / max(count, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--methods", default="lora,qlora,full")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--heldout", type=int, default=64)
    ap.add_argument("--out", default="runs/bench-finetune")
    args = ap.parse_args()
    out = Path(args.out)
    setup = prepare(out, args.models.split(","), args.train, args.heldout)
    rows = []
    for name, (model_path, hf) in setup["models"].items():
        tokens = token_file(model_path, setup["train"], args.max_seq_len, out / f"{name}-tokens.jsonl")
        base_loss = heldout_loss(model_path, setup["heldout"], args.max_seq_len)
        for method in args.methods.split(","):
            common = ["--batch-size", str(args.batch_size), "--grad-accum", str(args.grad_accum),
                      "--max-seq-len", str(args.max_seq_len), "--max-steps", str(args.steps),
                      "--learning-rate", str(LR[method]), "--eval-split", "0", "--save-steps", str(10 ** 6)]
            if method != "full":
                common += ["--rank", str(args.rank), "--alpha", str(2 * args.rank), "--dropout", "0"]
            ours_out = out / f"{name}-{method}-apr{'.apr' if method == 'full' else '/'}"
            plan = apr("finetune", str(model_path), "--method", method, "--data", str(setup["train"]), *common,
                       "--plan", "--json")
            for p in (ours_out, Path(str(ours_out).rstrip("/") + ".run")):
                subprocess.run(["rm", "-rf", str(p)], check=True)
            ours_text, ours_rss = run_measured(
                [sys.executable, "-m", "apr_core.cli", "finetune", str(model_path), "--method", method,
                 "--data", str(setup["train"]), *common, "-o", str(ours_out), "--json", "-q"])
            ours = json.loads(ours_text)["report"]
            peer_out = out / f"{name}-{method}-peer"
            peer_text, peer_rss = run_measured(
                [sys.executable, str(PEER), "--model", str(hf), "--data", str(tokens), "--out", str(peer_out),
                 "--method", method, "--rank", str(args.rank), "--alpha", str(2 * args.rank),
                 "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--grad-accum",
                 str(args.grad_accum), "--learning-rate", str(LR[method])])
            peer = json.loads(peer_text.strip().splitlines()[-1])
            log_dir = ours_out if method != "full" else Path(str(ours_out) + ".run")
            ours_steady = steady_rate(apr_steps(log_dir))
            peer_cum = [(s["seconds"], s["tokens"]) for s in peer["steps"]]
            peer_steady = steady_rate([(t, n - (peer_cum[i - 1][1] if i else 0)) for i, (t, n) in enumerate(peer_cum)])
            if method == "full":
                ours_loss = heldout_loss(ours_out, setup["heldout"], args.max_seq_len)
                peer_loss = heldout_loss(model_path, setup["heldout"], args.max_seq_len, weights=peer_out)
            else:
                ours_loss = heldout_loss(model_path, setup["heldout"], args.max_seq_len, adapter=ours_out)
                peer_loss = heldout_loss(model_path, setup["heldout"], args.max_seq_len, adapter=peer_out)
            row = {"model": name, "method": method, "steps": args.steps,
                   "apr_threads": ours.get("threads"), "apr_omp_wait_policy": ours.get("omp_wait_policy"),
                   "apr_tokens_per_second": ours["tokens_per_second"], "peer_tokens_per_second": peer["tokens_per_second"],
                   "speed_ratio": round(ours["tokens_per_second"] / peer["tokens_per_second"], 3),
                   "apr_steady_tokens_per_second": ours_steady, "peer_steady_tokens_per_second": peer_steady,
                   "steady_speed_ratio": round(ours_steady / peer_steady, 3) if ours_steady and peer_steady else None,
                   "apr_peak_rss": ours_rss, "peer_peak_rss": peer_rss, "memory_ratio": round(ours_rss / peer_rss, 3),
                   "predicted_peak": plan["peak_memory_bytes"],
                   "predicted_over_measured": round(plan["peak_memory_bytes"] / ours_rss, 3),
                   "heldout_loss_base": round(base_loss, 4), "heldout_loss_apr": round(ours_loss, 4),
                   "heldout_loss_peer": round(peer_loss, 4), "plan_parts": {r["part"]: r["bytes"] for r in plan["memory"]}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out / "finetune.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| model | method | apr tok/s | peer tok/s | speed apr/peer | after step 1 apr/peer | apr peak MB | peer peak MB | memory apr/peer "
          "| predicted MB | predicted/measured | held-out loss base | apr | peer |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['method']} | {r['apr_tokens_per_second']:.0f} | {r['peer_tokens_per_second']:.0f} "
              f"| {r['speed_ratio']:.2f} | {r['steady_speed_ratio']} | {r['apr_peak_rss'] / 1e6:.0f} | {r['peer_peak_rss'] / 1e6:.0f} "
              f"| {r['memory_ratio']:.2f} | {r['predicted_peak'] / 1e6:.0f} | {r['predicted_over_measured']:.3f} "
              f"| {r['heldout_loss_base']:.4f} | {r['heldout_loss_apr']:.4f} | {r['heldout_loss_peer']:.4f} |")


if __name__ == "__main__":
    main()
