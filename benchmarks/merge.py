#!/usr/bin/env python3
"""Merge benchmark: throughput and peak memory of every strategy next to the safetensors I/O floor.

    nice -n 10 python benchmarks/merge.py [--gb 2] [--out runs/bench-merge] [--only ties,dare]

Builds a synthetic bf16 Llama-shaped model of about ``--gb`` GB (a base and three
"fine-tunes": base + small seeded noise), writes each as .apr and as
.safetensors, then in separate processes:

- the I/O floor: ``safetensors.torch.load_file`` + ``save_file`` of one model
  (reads N bytes, writes N bytes);
- ``apr merge`` through the CLI for each strategy (two inputs; the task-vector
  strategies also read the base).

Throughput is (bytes read + bytes written) / wall seconds, so a merge that reads
three models is credited for it, and is reported as a ratio to the floor. Peak
memory is sampled from /proc every 20 ms as anonymous RSS (what the process
allocates; memory-mapped input pages are page cache that the kernel can drop)
and as ru_maxrss (which also counts the mapped file pages touched). The inputs
are usually in the page cache after being written, so this measures the merge
itself rather than the disk. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

STRATEGIES = [
    ("average", []),
    ("weighted", ["--weights", "0.7,0.3"]),
    ("slerp", ["--weights", "0.85,0.15"]),
    ("task_arithmetic", ["--base-model", "{base}"]),
    ("ties", ["--base-model", "{base}", "--density", "0.2"]),
    ("dare", ["--base-model", "{base}", "--drop-rate", "0.3"]),
    ("dare_ties", ["--base-model", "{base}", "--drop-rate", "0.3"]),
]
HIDDEN, INTER, VOCAB = 2048, 5632, 32000


def synthetic_config(gb: float) -> dict:
    per_layer = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTER + 2 * HIDDEN
    layers = max(1, round((gb * 1e9 / 2 - 2 * VOCAB * HIDDEN) / per_layer))
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN,
            "intermediate_size": INTER, "num_hidden_layers": layers, "num_attention_heads": 16,
            "num_key_value_heads": 16, "vocab_size": VOCAB, "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


def synthetic_model(config: dict, noise_seed: int | None):
    """Lazy bf16 tensors: base weights seeded by name; a fine-tune adds seeded noise."""
    import zlib

    import torch

    from apr_core.model import LazyTensor, Model, TensorSpec
    from apr_core.testing import tiny_tokenizer_files

    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    shapes = {"model.embed_tokens.weight": (VOCAB, h), "lm_head.weight": (VOCAB, h), "model.norm.weight": (h,)}
    for n in range(layers):
        p = f"model.layers.{n}."
        for proj in ("q", "k", "v", "o"):
            shapes[f"{p}self_attn.{proj}_proj.weight"] = (h, h)
        shapes[f"{p}mlp.gate_proj.weight"] = (i, h)
        shapes[f"{p}mlp.up_proj.weight"] = (i, h)
        shapes[f"{p}mlp.down_proj.weight"] = (h, i)
        shapes[f"{p}input_layernorm.weight"] = (h,)
        shapes[f"{p}post_attention_layernorm.weight"] = (h,)

    def make(name, shape):
        def load():
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            t = torch.randn(shape, generator=g).mul_(0.02)
            if noise_seed is not None:
                g2 = torch.Generator().manual_seed(zlib.crc32(name.encode()) + 7919 * noise_seed)
                t.add_(torch.randn(shape, generator=g2).mul_(0.002))
            return t.to(torch.bfloat16)
        return LazyTensor(TensorSpec(name, "BF16", shape), load)

    tensors = {n: make(n, s) for n, s in shapes.items()}
    return Model(tensors=tensors, config=dict(config), tokenizer=dict(tiny_tokenizer_files()),
                 source="base" if noise_seed is None else f"ft{noise_seed}")


def measure(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; wall seconds, peak anonymous RSS (sampled) and ru_maxrss of that process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peak_anon = 0
    stop = threading.Event()

    def sample():
        nonlocal peak_anon
        path = f"/proc/{proc.pid}/status"
        while not stop.is_set():
            try:
                for line in open(path):
                    if line.startswith("RssAnon:"):
                        peak_anon = max(peak_anon, int(line.split()[1]) * 1024)
            except OSError:
                return
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stop.set()
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err}")
    return {"seconds": seconds, "peak_anon_bytes": peak_anon, "maxrss_bytes": usage.ru_maxrss * 1024}


FLOOR = "from safetensors.torch import load_file, save_file; import sys; save_file(load_file(sys.argv[1]), sys.argv[2])"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.0, help="size of each synthetic model in GB (bf16)")
    ap.add_argument("--out", default="runs/bench-merge")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per run (1: fair on a shared machine, where spinning threads stall)")
    ap.add_argument("--only", default=None, help="comma list of strategies to run (the floor always runs)")
    args = ap.parse_args()
    from apr_core.formats.apr import write_apr
    from apr_core.formats.safetensors import write_safetensors

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = synthetic_config(args.gb)
    paths = {}
    for key, seed in (("base", None), ("a", 1), ("b", 2)):
        model = synthetic_model(config, seed)
        paths[key] = out / f"{key}.apr"
        if not paths[key].exists():
            write_apr(model, paths[key])
        if key == "a" and not (out / "a.safetensors").exists():
            write_safetensors(model.tensors, out / "a.safetensors")
    size = paths["a"].stat().st_size
    env = dict(os.environ, APR_QUIET="1", OMP_NUM_THREADS=str(args.threads))
    rows = []
    floor = measure([sys.executable, "-c", FLOOR, str(out / "a.safetensors"), str(out / "floor.safetensors")], env)
    floor.update(strategy="safetensors read + write (I/O floor)", bytes_moved=2 * size)
    rows.append(floor)
    only = set(args.only.split(",")) if args.only else None
    for name, extra in STRATEGIES:
        if only and name not in only:
            continue
        extra = [e.format(base=paths["base"]) for e in extra]
        reads = 3 if "--base-model" in extra else 2
        cmd = [sys.executable, "-m", "apr_core.cli", "merge", str(paths["a"]), str(paths["b"]), "--strategy", name,
               *extra, "-o", str(out / f"merged-{name}.apr"), "--json", "-q"]
        r = measure(cmd, env)
        r.update(strategy=name, bytes_moved=(reads + 1) * size)
        (out / f"merged-{name}.apr").unlink()
        rows.append(r)
    (out / "floor.safetensors").unlink(missing_ok=True)
    floor_gbs = rows[0]["bytes_moved"] / rows[0]["seconds"] / 1e9
    print(f"\nsynthetic bf16 Llama, {config['num_hidden_layers']} layers, {size / 1e9:.2f} GB per model "
          f"({os.cpu_count()} CPUs, {args.threads} torch thread(s) per run)\n")
    print("| strategy | seconds | GB/s (read+write) | vs floor | peak anon RSS | ru_maxrss |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        gbs = r["bytes_moved"] / r["seconds"] / 1e9
        r["gb_per_s"] = gbs
        r["vs_floor"] = gbs / floor_gbs
        print(f"| {r['strategy']} | {r['seconds']:.1f} | {gbs:.2f} | {gbs / floor_gbs:.2f}x | "
              f"{r['peak_anon_bytes'] / 2**20:.0f} MiB | {r['maxrss_bytes'] / 2**20:.0f} MiB |")
    (out / "merge.json").write_text(json.dumps({"model_bytes": size, "config": config, "rows": rows}, indent=2))
    print(f"\nJSON: {out / 'merge.json'}")


if __name__ == "__main__":
    main()
