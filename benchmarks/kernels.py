#!/usr/bin/env python3
"""Achieved memory bandwidth of apr's Triton kernels and of their torch references, on CUDA.

    python benchmarks/kernels.py [--shapes 4096x4096,4096x14336] [--out runs/bench-kernels]

Every kernel of apr_core.kernels (quant: AprQ4 quantize / dequantize, Q4_K dequantize;
sparsity: 2:4 N:M mask, row-wise lowest-k mask; merge: DARE drop-and-rescale, TIES combine of
three task vectors) runs on float32 matrices of each shape, once as the Triton kernel and once
as its torch reference (the definition the kernel is tested against, here on the same CUDA
tensors). Bandwidth is the *minimum* traffic of the operation (each input read once, each
output written once; sizes in the table) divided by the time per call (CUDA events around a
loop of calls after a warm-up, at least ~0.2 s or 50 calls), so it reads as "fraction of the
memory system used"; kernels that read their input several times (the row mask's bisection
reads each row 33 times) show below their true traffic. The reference is the device's
memory bandwidth: the peak from ``torch.cuda.get_device_properties`` (2 x bus width x memory
clock) where torch reports them, and a measured device-to-device copy of 1 GiB. Each pair's
outputs are compared (equal, or the largest difference where the kernel may fuse an FMA).
Prints a markdown table and writes ``results.json``.

Without a CUDA device (or without triton) it says so and exits 0. ``--interpret`` runs the
same code on the CPU under ``TRITON_INTERPRET=1`` at small shapes: a check of this script,
not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

NEEDS_GPU = "benchmarks/kernels.py needs a CUDA GPU with triton installed ({why}); nothing was measured."


@dataclass
class Case:
    name: str
    make: Callable[[int, int, Any], tuple]  # (rows, cols, device) -> inputs
    triton: Callable[..., Any]
    torch: Callable[..., Any]
    traffic: Callable[[int, int], int]  # minimum bytes read + written
    note: str = ""


def cases() -> list[Case]:
    import torch

    from apr_core.kernels.merge import reference as merge_ref
    from apr_core.kernels.merge import triton as merge_tri
    from apr_core.kernels.quant import reference as quant_ref
    from apr_core.kernels.quant import triton as quant_tri
    from apr_core.kernels.sparsity import reference as sparse_ref
    from apr_core.kernels.sparsity import triton as sparse_tri

    def weights(rows, cols, device):
        g = torch.Generator(device="cpu").manual_seed(0)
        return (torch.randn(rows, cols, generator=g) * 0.02).to(device)

    def int4_raw(rows, cols, device):
        return (quant_ref.int4_quantize(weights(rows, cols, device)).reshape(-1), rows, cols)

    def q4k_raw(rows, cols, device):
        # valid Q4_K blocks without running the k-quant search: random codes and 6-bit scales,
        # d and dmin set to small f16 values (bandwidth does not depend on the values)
        g = torch.Generator(device="cpu").manual_seed(1)
        blocks = torch.randint(0, 256, (rows * cols // 256, 144), generator=g, dtype=torch.uint8)
        scale = torch.tensor([1e-3, 2e-4], dtype=torch.float16).view(torch.uint8)
        blocks[:, :4] = scale
        return (blocks.reshape(-1).to(device), rows, cols)

    def scores(rows, cols, device):
        return (weights(rows, cols, device).abs(),)

    dare_p, seed = 0.5, 1234
    k = 3
    return [
        Case("int4_quantize (AprQ4)", lambda r, c, d: (weights(r, c, d),), quant_tri.int4_quantize,
             quant_ref.int4_quantize, lambda r, c: r * c * 4 + r * c // 32 * 18),
        Case("int4_dequantize (AprQ4)", int4_raw, quant_tri.int4_dequantize, quant_ref.int4_dequantize,
             lambda r, c: r * c // 32 * 18 + r * c * 4),
        Case("q4k_dequantize (Q4_K)", q4k_raw, quant_tri.q4k_dequantize, quant_ref.q4k_dequantize,
             lambda r, c: r * c // 256 * 144 + r * c * 4, "GPU may fuse an FMA: <= 1 ulp"),
        Case("nm_mask 2:4", lambda r, c, d: (*scores(r, c, d), 2, 4), sparse_tri.nm_mask, sparse_ref.nm_mask,
             lambda r, c: r * c * 4 + r * c),
        Case("row_prune_mask k=cols/2", lambda r, c, d: (*scores(r, c, d), c // 2), sparse_tri.row_prune_mask,
             sparse_ref.row_prune_mask, lambda r, c: r * c * 4 + r * c, "kernel reads each row 33 times"),
        Case("dare_ p=0.5 (in place)", lambda r, c, d: (weights(r, c, d).reshape(-1),),
             lambda x: merge_tri.dare_(x, merge_ref.drop_threshold(dare_p), merge_ref.rescale(dare_p), seed, 0),
             lambda x: merge_ref.dare_(x, dare_p, seed, 0), lambda r, c: 2 * r * c * 4,
             "torch reference draws Philox words with numpy on the CPU"),
        Case(f"ties_combine K={k}",
             lambda r, c, d: (torch.stack([weights(r, c, d).reshape(-1) * (i + 1) for i in range(k)]),
                              [0.01] * k, [1.0 / k] * k, True),
             merge_tri.ties_combine, merge_ref.ties_combine, lambda r, c: (k + 1) * r * c * 4),
    ]


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], Any], device, min_seconds: float = 0.2, max_calls: int = 50) -> float:
    """Time per call after a warm-up (compilation), CUDA events on a GPU, a loop of calls."""
    import torch

    fn()
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    once = time.perf_counter() - start
    calls = max(1, min(max_calls, int(min_seconds / max(once, 1e-9))))
    if device.type == "cuda":
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3 / calls
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def compare(a, b) -> str:
    import torch

    a, b = a.reshape(-1), b.reshape(-1)
    if a.dtype == torch.bool or b.dtype == torch.bool or not a.dtype.is_floating_point:
        return "equal" if torch.equal(a.to(b.dtype), b) else f"{int((a.to(b.dtype) != b).sum())} differ"
    if torch.equal(a, b):
        return "equal"
    return f"max |diff| {float((a - b).abs().max()):.3g}"


def device_bandwidth(device) -> dict:
    """Peak (from the device properties, where torch has them) and a measured 1 GiB copy, GB/s."""
    import torch

    out: dict[str, Any] = {"name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        bus, clock = getattr(props, "memory_bus_width", 0), getattr(props, "memory_clock_rate", 0)
        if bus and clock:
            out["peak_gb_s"] = round(2 * bus / 8 * clock * 1e3 / 1e9, 1)
    n = (1 << 30) // 4 if device.type == "cuda" else 1 << 22
    src = torch.empty(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = seconds_per_call(lambda: dst.copy_(src), device)
    out["copy_gb_s"] = round(2 * n * 4 / t / 1e9, 1)
    return out


def run(shapes: list[tuple[int, int]], device, wanted: list[str] = ()) -> dict:
    bw = device_bandwidth(device)
    ref = bw.get("peak_gb_s") or bw["copy_gb_s"]
    rows_out = []
    for case in cases():
        if wanted and not any(w in case.name for w in wanted):
            continue
        for r, c in shapes:
            inputs = case.make(r, c, device)
            got = case.triton(*[x.clone() if hasattr(x, "clone") else x for x in inputs])
            want = case.torch(*[x.clone() if hasattr(x, "clone") else x for x in inputs])
            match = compare(got, want)
            del got, want
            t_tri = seconds_per_call(lambda: case.triton(*inputs), device)
            t_ref = seconds_per_call(lambda: case.torch(*inputs), device, max_calls=10)
            nbytes = case.traffic(r, c)
            row = {"kernel": case.name, "shape": f"{r}x{c}", "traffic_mb": round(nbytes / 1e6, 1),
                   "triton_ms": round(t_tri * 1e3, 3), "triton_gb_s": round(nbytes / t_tri / 1e9, 1),
                   "torch_ms": round(t_ref * 1e3, 3), "torch_gb_s": round(nbytes / t_ref / 1e9, 1),
                   "speedup": round(t_ref / t_tri, 2), "outputs": match, "note": case.note}
            row["triton_pct_of_peak"] = round(100 * row["triton_gb_s"] / ref, 1)
            row["torch_pct_of_peak"] = round(100 * row["torch_gb_s"] / ref, 1)
            rows_out.append(row)
            print(json.dumps(row), flush=True)
            del inputs
    return {"device": bw, "reference_gb_s": ref, "results": rows_out}


def table(result: dict) -> str:
    bw = result["device"]
    head = (f"device: {bw['name']}; peak {bw.get('peak_gb_s', 'n/a')} GB/s (device properties), "
            f"device-to-device copy {bw['copy_gb_s']} GB/s; % columns against {result['reference_gb_s']} GB/s")
    lines = [head, "", "| kernel | shape | traffic MB | Triton ms | Triton GB/s | % | torch ms | torch GB/s | % "
             "| Triton speedup | outputs |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["results"]:
        lines.append(f"| {r['kernel']} | {r['shape']} | {r['traffic_mb']} | {r['triton_ms']} | {r['triton_gb_s']} | "
                     f"{r['triton_pct_of_peak']} | {r['torch_ms']} | {r['torch_gb_s']} | {r['torch_pct_of_peak']} | "
                     f"{r['speedup']}x | {r['outputs']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="4096x4096,4096x14336")
    ap.add_argument("--out", default="runs/bench-kernels")
    ap.add_argument("--kernels", default="", help="only kernels whose name contains one of these (comma-separated)")
    ap.add_argument("--interpret", action="store_true",
                    help="check this script on the CPU under TRITON_INTERPRET=1 (small shapes; not a measurement)")
    args = ap.parse_args(argv)
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import importlib.util

    import torch

    if importlib.util.find_spec("triton") is None:
        print(NEEDS_GPU.format(why="triton is not installed"))
        return 0
    if not args.interpret and not torch.cuda.is_available():
        print(NEEDS_GPU.format(why="torch.cuda.is_available() is False"))
        return 0
    device = torch.device("cpu" if args.interpret else "cuda")
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
    wanted = [k for k in args.kernels.split(",") if k]
    result = run(shapes, device, wanted)
    result["interpret"] = args.interpret
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
