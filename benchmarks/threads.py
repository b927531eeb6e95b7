#!/usr/bin/env python3
"""Thread-count, OpenMP wait policy and CPU precision sweep: the measurements behind apr's defaults.

    python benchmarks/threads.py [--model runs/smollm2.apr] [--out runs/bench-threads.json] [--busy 0]

Each configuration runs in a fresh process (the wait policy is read when torch loads): threads
1..cores x OMP_WAIT_POLICY active/passive x float32/bfloat16, timing a 512-token forward pass
(prefill; median of 3) and 32 single-token decode steps with the KV cache. ``--busy N`` starts
N busy-looping processes for the duration, to show the shared-machine case (CI machines and
laptops running other jobs). A last row runs apr's own choice (``threads.configure()`` with no
override) for reference. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, measure  # noqa: E402

PROBE = r"""
import json, statistics, sys, time
from apr_core.runtime import threads
path, n, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
if n == "apr":
    threads.prepare_environment()  # as apr's command line does before torch loads
import torch
from apr_core import pipeline
from apr_core.torch_bridge import to_transformers
if n == "apr":
    threads.configure()
else:
    torch.set_num_threads(int(n))
module = to_transformers(pipeline.load(path, verify=False), dtype=dtype)
ids = torch.randint(0, 1000, (1, 512), generator=torch.Generator().manual_seed(0))
times = []
with torch.inference_mode():
    module(ids)
    for _ in range(3):
        t = time.perf_counter(); module(ids); times.append(time.perf_counter() - t)
    cache = module(ids[:, :128], use_cache=True).past_key_values
    step = ids[:, 128:129]
    t = time.perf_counter()
    for _ in range(32):
        cache = module(step, past_key_values=cache, use_cache=True).past_key_values
    decode = (time.perf_counter() - t) / 32
print(json.dumps({"threads": torch.get_num_threads(), "prefill_tokens_per_second": 512 / statistics.median(times),
                  "decode_ms_per_token": decode * 1000}))
"""


def spin(stop) -> None:
    while not stop.is_set():
        pass


def policy_env(policy: str) -> dict[str, str]:
    """The environment of one wait policy (``apr``: whatever apr chooses itself)."""
    if policy in ("default", "apr"):
        return {}
    if policy.startswith("spin:"):
        return {"GOMP_SPINCOUNT": policy.split(":", 1)[1]}
    return {"OMP_WAIT_POLICY": policy}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "runs" / "smollm2.apr"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-threads.json"))
    ap.add_argument("--busy", type=int, default=0, help="busy-looping processes to run alongside")
    ap.add_argument("--policies", default="ACTIVE,PASSIVE,default",
                    help="OpenMP wait policies: ACTIVE, PASSIVE, default (unset: libgomp spins a while, "
                         "then sleeps) or spin:N (unset policy, GOMP_SPINCOUNT=N)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", default="", help="thread counts to try (default 1..CPUs)")
    args = ap.parse_args()
    stop = multiprocessing.Event()
    hogs = [multiprocessing.Process(target=spin, args=(stop,), daemon=True) for _ in range(args.busy)]
    for h in hogs:
        h.start()
    base = {k: v for k, v in os.environ.items()
            if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "APR_THREADS", "APR_THREADS_SOURCE",
                         "APR_WAIT_POLICY")}
    counts = [int(n) for n in args.threads.split(",") if n] or list(range(1, (os.cpu_count() or 1) + 1))
    dtypes = args.dtypes.split(",")
    configs = [(str(n), policy, dtype) for dtype in dtypes for policy in args.policies.split(",") for n in counts]
    configs += [("apr", "apr", dtype) for dtype in dtypes]
    rows = []
    try:
        for n, policy, dtype in configs:
            got = measure([sys.executable, "-c", PROBE, args.model, n, dtype], env=base | policy_env(policy))
            row = json.loads(got["stdout"].strip().splitlines()[-1])
            row.update(requested=n, wait_policy=policy, dtype=dtype)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        stop.set()
        for h in hogs:
            h.join()
    print(f"\n{os.cpu_count()} CPUs, {args.busy} busy-looping processes alongside\n")
    print("| threads | wait policy | dtype | prefill tok/s | decode ms/token |\n|---|---|---|---|---|")
    for r in rows:
        label = f"{r['threads']} (apr auto)" if r["requested"] == "apr" else r["threads"]
        print(f"| {label} | {r['wait_policy']} | {r['dtype']} | {r['prefill_tokens_per_second']:.0f} "
              f"| {r['decode_ms_per_token']:.1f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"busy": args.busy, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
