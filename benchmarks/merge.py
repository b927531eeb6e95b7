#!/usr/bin/env python3
"""Merge benchmark: throughput and peak memory of every strategy next to the safetensors I/O floor.

    nice -n 10 python benchmarks/merge.py [--gb 0.5] [--out runs/bench-merge] [--only ties,dare] [--no-peer]

Builds a synthetic bf16 Llama-shaped model of about ``--gb`` GB (a base and three
"fine-tunes": base + small seeded noise), writes each as .apr and as
.safetensors, then in separate processes:

- the I/O floor: ``safetensors.torch.load_file`` + ``save_file`` of one model
  (reads N bytes, writes N bytes);
- ``apr merge`` through the CLI for each strategy (two inputs; the task-vector
  strategies also read the base);
- the peer, mergekit's ``mergekit-yaml`` with the equivalent YAML (see
  benchmarks/peers/mergekit_peer.py; installed into runs/peers/mergekit on first use), on the
  same tensors written as Hugging Face safetensors directories, run right after apr's run of
  the same strategy (apr, mergekit, apr, mergekit ... with ``--repeats``).

Throughput is (bytes read + bytes written) / wall seconds, so a merge that reads
three models is credited for it, and is reported as a ratio to the floor. Peak
memory is sampled from /proc every 20 ms as anonymous RSS (what the process
allocates; memory-mapped input pages are page cache that the kernel can drop)
and as ru_maxrss (which also counts the mapped file pages touched). The inputs
are usually in the page cache after being written, so this measures the merge
itself rather than the disk. CPU time is the child's user + system time (os.wait4). Every
run gets the same ``--threads`` (OMP_NUM_THREADS, and mergekit's ``-j``). Prints a markdown
table (medians over the repeats) with apr/mergekit ratios and writes JSON with every run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import child_env  # noqa: E402

sys.path.pop(0)

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
    return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_anon_bytes": peak_anon,
            "maxrss_bytes": usage.ru_maxrss * 1024}


FLOOR = "from safetensors.torch import load_file, save_file; import sys; save_file(load_file(sys.argv[1]), sys.argv[2])"


def median_row(runs: list[dict]) -> dict:
    """Medians of the timed fields over repeated runs of one command."""
    import statistics

    row = dict(runs[0])
    for key in ("seconds", "cpu_seconds", "peak_anon_bytes", "maxrss_bytes"):
        row[key] = statistics.median(r[key] for r in runs)
    row["runs"] = runs
    return row


def agreement(apr_out: Path, peer_out: Path, name: str = "model.layers.0.mlp.down_proj.weight") -> dict:
    """How close apr's and mergekit's outputs are on one tensor (a sanity check of the parameters)."""
    from safetensors import safe_open

    from apr_core.formats.apr import read_apr

    ours = read_apr(apr_out).tensor(name).float()
    files = sorted(peer_out.glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), "pt") as h:
            if name in h.keys():
                theirs = h.get_tensor(name).float()
                diff = (ours - theirs).abs()
                return {"tensor": name, "equal_fraction": float((diff == 0).float().mean()),
                        "max_abs_diff": float(diff.max()), "scale": float(ours.abs().mean())}
    return {"tensor": name, "missing": True}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=0.5, help="size of each synthetic model in GB (bf16)")
    ap.add_argument("--out", default="runs/bench-merge")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per run, apr's and mergekit's (1: fair on a shared machine)")
    ap.add_argument("--only", default=None, help="comma list of strategies to run (the floor always runs)")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved apr/mergekit runs per strategy")
    ap.add_argument("--no-peer", action="store_true", help="skip mergekit")
    ap.add_argument("--peer-venv", default="runs/peers/mergekit", help="mergekit's own venv (made if missing)")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
    import mergekit_peer

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
    peer = None
    if not args.no_peer:
        venv = Path(args.peer_venv)
        exe = mergekit_peer.install(venv)
        hf = {k: mergekit_peer.write_hf_dir(paths[k], out / "hf" / k) for k in paths}
        peer = {"exe": exe, "hf": hf, "version": mergekit_peer.version(venv)}
    size = paths["a"].stat().st_size
    env = child_env(APR_QUIET="1", OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    floor_cmd = [sys.executable, "-c", FLOOR, str(out / "a.safetensors"), str(out / "floor.safetensors")]
    floors = [measure(floor_cmd, env)]
    rows = []
    only = set(args.only.split(",")) if args.only else None
    for name, extra in STRATEGIES:
        if only and name not in only:
            continue
        extra = [e.format(base=paths["base"]) for e in extra]
        reads = 3 if "--base-model" in extra else 2
        merged = out / f"merged-{name}.apr"
        cmd = [sys.executable, "-m", "apr_core.cli", "merge", str(paths["a"]), str(paths["b"]), "--strategy", name,
               *extra, "-o", str(merged), "--json", "-q"]
        ours, theirs, agree = [], [], None
        if peer:
            cfg = mergekit_peer.config(name, peer["hf"]["a"], peer["hf"]["b"], peer["hf"]["base"])
            yaml_path = mergekit_peer.write_yaml(cfg, out / f"mergekit-{name}.yaml")
            peer_out = out / f"mergekit-{name}"
            peer_cmd = mergekit_peer.command(peer["exe"], yaml_path, peer_out, args.threads)
        for _ in range(args.repeats):
            ours.append(measure(cmd, env))
            if peer:
                shutil.rmtree(peer_out, ignore_errors=True)
                theirs.append(measure(peer_cmd, env))
        if peer:
            agree = agreement(merged, peer_out)
            shutil.rmtree(peer_out, ignore_errors=True)
        merged.unlink()
        row = median_row(ours)
        row.update(strategy=name, bytes_moved=(reads + 1) * size)
        if peer:
            row["mergekit"] = median_row(theirs)
            row["mergekit"]["method"] = cfg["merge_method"]
            row["agreement"] = agree
        rows.append(row)
    floors.append(measure(floor_cmd, env))
    (out / "floor.safetensors").unlink(missing_ok=True)
    floor = dict(min(floors, key=lambda r: r["seconds"]))  # the faster of the floor runs before and after
    floor.update(strategy="safetensors read + write (I/O floor)", bytes_moved=2 * size, runs=floors)
    floor_gbs = floor["bytes_moved"] / floor["seconds"] / 1e9
    print(f"\nsynthetic bf16 Llama, {config['num_hidden_layers']} layers, {size / 1e9:.2f} GB per model "
          f"({os.cpu_count()} CPUs, {args.threads} torch thread(s) per run, median of {args.repeats}"
          f"{', peer ' + peer['version'] if peer else ''})\n")
    print(f"I/O floor (safetensors load_file + save_file, faster of 2 runs): {floor['seconds']:.1f} s "
          f"({floor['cpu_seconds']:.1f} s CPU), {floor_gbs:.2f} GB/s read+write, "
          f"peak anon {floor['peak_anon_bytes'] / 2**20:.0f} MiB\n")
    floor_cpu = floor["bytes_moved"] / floor["cpu_seconds"]
    print("| strategy | apr s | apr CPU s | apr vs floor (wall / CPU) | apr peak anon | apr maxrss | mergekit method | "
          "mergekit s | mergekit CPU s | mergekit vs floor (wall / CPU) | mergekit peak anon | mergekit maxrss | "
          "apr/mk wall | apr/mk CPU | apr/mk anon | apr/mk maxrss |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    mib = 2 ** 20
    for r in rows:
        r["gb_per_s"] = r["bytes_moved"] / r["seconds"] / 1e9
        r["vs_floor"] = r["gb_per_s"] / floor_gbs
        r["vs_floor_cpu"] = r["bytes_moved"] / r["cpu_seconds"] / floor_cpu
        cells = [r["strategy"], f"{r['seconds']:.1f}", f"{r['cpu_seconds']:.1f}",
                 f"{r['vs_floor']:.2f}x / {r['vs_floor_cpu']:.2f}x",
                 f"{r['peak_anon_bytes'] / mib:.0f} MiB", f"{r['maxrss_bytes'] / mib:.0f} MiB"]
        mk = r.get("mergekit")
        if mk:
            mk["vs_floor"] = r["bytes_moved"] / mk["seconds"] / 1e9 / floor_gbs
            mk["vs_floor_cpu"] = r["bytes_moved"] / mk["cpu_seconds"] / floor_cpu
            r["ratios"] = {"wall": r["seconds"] / mk["seconds"], "peak_anon": r["peak_anon_bytes"] / mk["peak_anon_bytes"],
                           "maxrss": r["maxrss_bytes"] / mk["maxrss_bytes"], "cpu": r["cpu_seconds"] / mk["cpu_seconds"]}
            cells += [mk["method"], f"{mk['seconds']:.1f}", f"{mk['cpu_seconds']:.1f}",
                      f"{mk['vs_floor']:.2f}x / {mk['vs_floor_cpu']:.2f}x",
                      f"{mk['peak_anon_bytes'] / mib:.0f} MiB", f"{mk['maxrss_bytes'] / mib:.0f} MiB",
                      f"{r['ratios']['wall']:.2f}", f"{r['ratios']['cpu']:.2f}", f"{r['ratios']['peak_anon']:.2f}",
                      f"{r['ratios']['maxrss']:.2f}"]
        else:
            cells += ["-"] * 10
        print("| " + " | ".join(cells) + " |")
    if peer:
        print("\nagreement with mergekit on one tensor (DARE's random masks differ by design):")
        for r in rows:
            a = r["agreement"]
            if not a.get("missing"):
                print(f"  {r['strategy']}: {a['equal_fraction'] * 100:.1f}% equal, max |diff| {a['max_abs_diff']:.2e} "
                      f"(mean |x| {a['scale']:.2e})")
    result = {"model_bytes": size, "config": config, "threads": args.threads, "repeats": args.repeats,
              "peer": peer["version"] if peer else None,
              "peer_command": mergekit_peer.command(Path("mergekit-yaml"), Path("CONFIG"), Path("OUT"), args.threads),
              "floor": floor, "rows": rows}
    (out / "merge.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"\nJSON: {out / 'merge.json'}")


if __name__ == "__main__":
    main()
