#!/usr/bin/env python3
"""Whole-process GGUF quantize speed: ``apr quantize --format gguf`` against a gguf-py script.

    python benchmarks/quantize_speed.py [--model /work/runs/smollm2.apr] [--types Q8_0,Q4_0]
        [--repeats 3] [--out runs/bench-quantize-speed]

The peer (benchmarks/peers/gguf_quantize.py) is what a gguf-py user writes: safetensors in,
``gguf.quants.quantize`` per 2-D weight, ``GGUFWriter`` out, tokenizer included. It runs in its
own venv, runs/peers/gguf (made here on first use: gguf at the version apr's venv has, numpy,
safetensors; no torch). Its input is the model's Hugging Face export (``apr export --format hf``,
made once); apr reads the .apr. Same tensors quantized on both sides (Q8_0: every 2-D weight,
apr's ``q8_0``; Q4_0: the block weights, apr's ``int4``, embedding F16), and after the runs
every tensor's type and bytes in the two files are compared (Q4_0 bytes differ by design:
apr's int4 rounds as AprQ4, gguf-py as ggml's Q4_0; see the peer's docstring).

Each round runs, in separate processes and interleaved: apr with its on-disk memo warm (what a
second command on the same model sees, e.g. quantize after import), apr with an empty
``$APR_CACHE`` (cold: transformers is imported to check the tensors and build the tokenizer),
and the peer. Wall time (perf_counter around the child), CPU time (user+sys of the child from
wait4) and peak RSS (ru_maxrss) per run; the table gives medians and the apr/peer ratio of the
medians. Prints a markdown table and writes ``results.json``.

``--llama-quantize BIN`` adds the k-quant mixtures against llama.cpp's own tool: apr's f32 GGUF
export of the model (made once) goes through ``llama-quantize f32.gguf out.gguf Q4_K_S`` / ``Q6_K``
and ``apr quantize f32.gguf --scheme q4k`` / ``q6k``, interleaved, with the same measurements
plus throughput (f32 MB of the input file per wall second) and a per-tensor byte comparison.
(llama-quantize is built from the llama.cpp vendored in the llama-cpp-python sdist; see
docs/quantize.md.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import child_env  # noqa: E402

sys.path.pop(0)

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "benchmarks" / "peers" / "gguf_quantize.py"
APR_SCHEME = {"Q8_0": "q8_0", "Q4_0": "int4"}


def peer_python(venv: Path) -> Path:
    """runs/peers/gguf's python, creating the venv with gguf (apr's version), numpy and safetensors."""
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import gguf, numpy, safetensors"],
                                      capture_output=True).returncode == 0:
        return py
    from importlib.metadata import version

    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    f"gguf=={version('gguf')}", "numpy", "safetensors"], check=True)
    return py


def measured(cmd: list[str], env: dict) -> dict:
    """Wall seconds, CPU seconds (user+sys) and peak RSS of ``cmd`` in a fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    err = proc.stderr.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err.decode(errors='replace')[-3000:]}")
    return {"wall_s": round(wall, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def tensors_equal(a: Path, b: Path) -> dict:
    """Per-tensor comparison of two GGUF files: same names, types and bytes."""
    import gguf
    import numpy as np

    ta = {t.name: t for t in gguf.GGUFReader(str(a)).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(str(b)).tensors}
    common = sorted(set(ta) & set(tb))
    typed = [n for n in common if ta[n].tensor_type == tb[n].tensor_type]
    same = sum(1 for n in typed
               if np.array_equal(np.asarray(ta[n].data).view(np.uint8), np.asarray(tb[n].data).view(np.uint8)))
    return {"tensors_apr": len(ta), "tensors_peer": len(tb), "compared": len(common), "types_equal": len(typed),
            "bytes_equal": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="/work/runs/smollm2.apr")
    ap.add_argument("--types", default="Q8_0,Q4_0")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="runs/bench-quantize-speed")
    ap.add_argument("--peer-venv", default="runs/peers/gguf")
    ap.add_argument("--llama-quantize", default=None, help="path of a llama-quantize binary (k-quant rows)")
    ap.add_argument("--kquant-repeats", type=int, default=2)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = child_env(APR_QUIET="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    apr = [sys.executable, "-m", "apr_core.cli"]
    hf = out / (Path(args.model).stem + "-hf")
    if not hf.is_dir():
        subprocess.run([*apr, "export", args.model, "--format", "hf", "-o", str(hf)], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    py = peer_python(Path(args.peer_venv))
    warm_cache = out / "apr-cache"
    # fill the warm memo once (not timed)
    subprocess.run([*apr, "quantize", args.model, "--scheme", "q8_0", "--format", "gguf", "-o",
                    str(out / "warmup.gguf")], check=True, env=dict(env, APR_CACHE=str(warm_cache)),
                   stdout=subprocess.DEVNULL)
    runs: list[dict] = []
    for rep in range(args.repeats):
        for qtype in args.types.split(","):
            scheme = APR_SCHEME[qtype]
            for who in ("apr", "apr-cold", "peer"):
                target = out / f"{who}-{qtype}.gguf"
                if who == "peer":
                    cmd, run_env = [str(py), str(PEER), str(hf), str(target), "--type", qtype], env
                else:
                    cold = tempfile.mkdtemp(prefix="apr-cache-", dir=out) if who == "apr-cold" else None
                    cmd = [*apr, "quantize", args.model, "--scheme", scheme, "--format", "gguf", "-o", str(target)]
                    run_env = dict(env, APR_CACHE=cold or str(warm_cache))
                r = {"tool": who, "type": qtype, "round": rep, **measured(cmd, run_env)}
                if who == "apr-cold":
                    shutil.rmtree(cold, ignore_errors=True)
                r["bytes"] = target.stat().st_size
                runs.append(r)
                print(json.dumps(r), flush=True)
    checks = {q: tensors_equal(out / f"apr-{q}.gguf", out / f"peer-{q}.gguf") for q in args.types.split(",")}
    summary = []
    for qtype in args.types.split(","):
        med = {who: {k: statistics.median(r[k] for r in runs if r["tool"] == who and r["type"] == qtype)
                     for k in ("wall_s", "cpu_s", "peak_rss_mb")} for who in ("apr", "apr-cold", "peer")}
        for who in ("apr", "apr-cold"):
            summary.append({"type": qtype, "tool": who, **med[who],
                            "peer_wall_s": med["peer"]["wall_s"], "peer_cpu_s": med["peer"]["cpu_s"],
                            "peer_peak_rss_mb": med["peer"]["peak_rss_mb"],
                            "wall_ratio": round(med[who]["wall_s"] / med["peer"]["wall_s"], 2),
                            "cpu_ratio": round(med[who]["cpu_s"] / med["peer"]["cpu_s"], 2),
                            "rss_ratio": round(med[who]["peak_rss_mb"] / med["peer"]["peak_rss_mb"], 2)})
    result = {"model": args.model, "repeats": args.repeats, "cpus": len(os.sched_getaffinity(0)),
              "load_avg": os.getloadavg(), "runs": runs, "summary": summary, "tensor_check": checks}
    if args.llama_quantize:
        result["kquants"] = kquants(args, apr, env, warm_cache, out)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(table(result))


KQUANT = {"Q4_K_S": "q4k", "Q6_K": "q6k"}


def kquants(args, apr: list[str], env: dict, warm_cache: Path, out: Path) -> dict:
    """apr against llama-quantize on the k-quant mixtures, from one f32 GGUF."""
    f32 = out / (Path(args.model).stem + "-f32.gguf")
    if not f32.exists():
        subprocess.run([*apr, "export", args.model, "--format", "gguf", "--dtype", "f32", "-o", str(f32)],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    mb = f32.stat().st_size / 1e6
    warm_env = dict(env, APR_CACHE=str(warm_cache))
    subprocess.run([*apr, "quantize", str(f32), "--scheme", "q8_0", "--format", "gguf", "-o",
                    str(out / "warmup.gguf")], check=True, env=warm_env, stdout=subprocess.DEVNULL)
    runs = []
    for rep in range(args.kquant_repeats):
        for mixture, scheme in KQUANT.items():
            for who in ("apr", "llama-quantize"):
                target = out / f"{who}-{mixture}.gguf"
                cmd = ([*apr, "quantize", str(f32), "--scheme", scheme, "--format", "gguf", "-o", str(target)]
                       if who == "apr" else [args.llama_quantize, str(f32), str(target), mixture])
                r = {"tool": who, "type": mixture, "round": rep, **measured(cmd, warm_env)}
                r["mb_s"] = round(mb / r["wall_s"], 1)
                runs.append(r)
                print(json.dumps(r), flush=True)
    summary = []
    for mixture in KQUANT:
        med = {who: {k: statistics.median(r[k] for r in runs if r["tool"] == who and r["type"] == mixture)
                     for k in ("wall_s", "cpu_s", "peak_rss_mb", "mb_s")} for who in ("apr", "llama-quantize")}
        summary.append({"type": mixture, "apr": med["apr"], "llama_quantize": med["llama-quantize"],
                        "wall_ratio": round(med["apr"]["wall_s"] / med["llama-quantize"]["wall_s"], 2),
                        "check": tensors_equal(out / f"apr-{mixture}.gguf", out / f"llama-quantize-{mixture}.gguf")})
    return {"input_mb": round(mb, 1), "runs": runs, "summary": summary}


def table(result: dict) -> str:
    lines = ["| type | apr run | apr wall s | peer wall s | wall apr/peer | apr CPU s | peer CPU s | CPU apr/peer "
             "| apr peak RSS MB | peer peak RSS MB | RSS apr/peer |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in result["summary"]:
        lines.append(f"| {s['type']} | {s['tool']} | {s['wall_s']:.2f} | {s['peer_wall_s']:.2f} | {s['wall_ratio']} | "
                     f"{s['cpu_s']:.2f} | {s['peer_cpu_s']:.2f} | {s['cpu_ratio']} | {s['peak_rss_mb']:.0f} | "
                     f"{s['peer_peak_rss_mb']:.0f} | {s['rss_ratio']} |")
    lines.append("")
    if "kquants" in result:
        lines += [f"k-quants from the f32 GGUF ({result['kquants']['input_mb']} MB):", "",
                  "| mixture | apr wall s | llama-quantize wall s | wall apr/llama | apr MB/s | llama-quantize MB/s "
                  "| apr CPU s | llama CPU s | apr RSS MB | llama RSS MB | tensors byte-identical |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for k in result["kquants"]["summary"]:
            a, b, c = k["apr"], k["llama_quantize"], k["check"]
            lines.append(f"| {k['type']} | {a['wall_s']:.2f} | {b['wall_s']:.2f} | {k['wall_ratio']} | {a['mb_s']:.1f} | "
                         f"{b['mb_s']:.1f} | {a['cpu_s']:.2f} | {b['cpu_s']:.2f} | {a['peak_rss_mb']:.0f} | "
                         f"{b['peak_rss_mb']:.0f} | {c['bytes_equal']}/{c['compared']} |")
        lines.append("")
    for q, c in result["tensor_check"].items():
        lines.append(f"{q}: {c['types_equal']}/{c['compared']} tensors of the same type, {c['bytes_equal']} "
                     f"byte-identical between apr's and the peer's file ({c['tensors_apr']} vs "
                     f"{c['tensors_peer']} tensors)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
