#!/usr/bin/env python3
"""apr before and after the issue-16 speed work, and the gguf-py peer, interleaved (same runs).

    python benchmarks/quantize_before_after.py --before-apr /work/main/.venv/bin/apr [--repeats 2]

Runs ``apr quantize MODEL --scheme q8_0|int4 --format gguf`` with this checkout's python and with
``--before-apr`` (the ``apr`` script of an install of the older apr, e.g. main's venv: its own
script, since ``python -m apr_core.cli`` here would import this checkout's apr_core), each with a warm memo, and the
peer script of benchmarks/quantize_speed.py, in turn; prints medians (wall, CPU, peak RSS) and
checks that both apr files are byte-identical. Needs benchmarks/quantize_speed.py's outputs
(the HF export and the peer venv) from a run of that script.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantize_speed import APR_SCHEME, PEER, measured  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import child_env  # noqa: E402

sys.path.pop(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before-apr", required=True)
    ap.add_argument("--model", default="/work/runs/smollm2.apr")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="runs/bench-quantize-speed")
    ap.add_argument("--peer-venv", default="runs/peers/gguf")
    args = ap.parse_args()
    out = Path(args.out)
    hf = out / (Path(args.model).stem + "-hf")
    env = child_env(APR_QUIET="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               APR_CACHE=str(out / "apr-cache"))
    tools = {"before": [args.before_apr], "after": [sys.executable, "-m", "apr_core.cli"]}
    runs = []
    for rep in range(args.repeats):
        for qtype, scheme in APR_SCHEME.items():
            for who in ("before", "after", "peer"):
                target = out / f"ba-{who}-{qtype}.gguf"
                cmd = ([str(Path(args.peer_venv) / "bin" / "python"), str(PEER), str(hf), str(target), "--type", qtype]
                       if who == "peer" else [*tools[who], "quantize", args.model, "--scheme", scheme, "--format",
                                              "gguf", "-o", str(target)])
                r = {"tool": who, "type": qtype, "round": rep, **measured(cmd, env)}
                runs.append(r)
                print(json.dumps(r), flush=True)
    lines = ["| type | tool | wall s | CPU s | peak RSS MB | wall / peer |", "|---|---|---:|---:|---:|---:|"]
    summary = []
    for qtype in APR_SCHEME:
        med = {w: {k: statistics.median(r[k] for r in runs if r["tool"] == w and r["type"] == qtype)
                   for k in ("wall_s", "cpu_s", "peak_rss_mb")} for w in ("before", "after", "peer")}
        same = (hashlib.sha256((out / f"ba-before-{qtype}.gguf").read_bytes()).hexdigest()
                == hashlib.sha256((out / f"ba-after-{qtype}.gguf").read_bytes()).hexdigest())
        for w in ("before", "after", "peer"):
            m = med[w]
            lines.append(f"| {qtype} | {w} | {m['wall_s']:.2f} | {m['cpu_s']:.2f} | {m['peak_rss_mb']:.0f} | "
                         f"{m['wall_s'] / med['peer']['wall_s']:.2f} |")
        summary.append({"type": qtype, **{w: med[w] for w in med}, "before_after_bytes_equal": same})
        lines.append(f"| {qtype} | before = after bytes | {same} | | | |")
    (out / "before_after.json").write_text(json.dumps({"runs": runs, "summary": summary,
                                                       "load_avg": os.getloadavg()}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
