#!/usr/bin/env python3
"""The main job: the leaderboard recipe (recipes/leaderboard.yaml) on the embedded SmolLM2-135M.

    python scripts/demo.py [WORKDIR]        # default runs/demo

Three LoRA specialists (Python, Rust, TypeScript) -> DARE/TIES/SLERP tournament -> progressive
distillation into a student depth-pruned to 26 layers -> Wanda 30% -> int4, then a leaderboard (size, held-out perplexity per code domain, HumanEval pass@1 on four
problems, step time) as a table, JSON and PNG. Every step is content-addressed, so a second run
only reads the cache. Afterwards the final merged model is exported to Hugging Face format and
its logits are compared with apr's own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
RECIPE = ROOT / "recipes" / "leaderboard.yaml"


def apr(*args: str, capture: bool = True) -> dict:
    cmd = [sys.executable, "-m", "apr_core.cli", *args]
    print("$ apr " + " ".join(args), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE if capture else None, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"demo failed: apr {' '.join(args)} (exit {proc.returncode})")
    return json.loads(proc.stdout) if capture and proc.stdout.strip().startswith("{") else {}


def missing_sources() -> list[str]:
    """Languages whose code sources `apr data` cannot find (the recipe needs all three)."""
    sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]
    from apr_core import codesources

    return [lang for lang, src in codesources.sources().items()
            if not src.default_root().is_dir() or any(path is None for _, path in src.resolve_heldout())]


def logits_match(apr_path: Path, hf_dir: Path) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    from apr_core import pipeline
    from apr_core.torch_bridge import to_transformers

    ours = to_transformers(pipeline.load(str(apr_path)))
    theirs = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ids = torch.arange(100, 164).unsqueeze(0)
    with torch.inference_mode():
        return (ours(ids).logits - theirs(ids).logits).abs().max().item()


def main() -> None:
    missing = missing_sources()
    if missing:
        raise SystemExit(f"demo: code sources missing for {', '.join(missing)}: run scripts/install-code-sources.sh "
                         f"(Rust crates come from Debian packages, as root; TypeScript from npm)")
    OUT.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    summary = apr("recipe", "run", str(RECIPE), "--workdir", str(OUT), "--json")
    seconds = time.perf_counter() - t
    steps = {s["step"]: s for s in summary["steps"]}
    print((OUT / "leaderboard.md").read_text())
    cached = sum(s["cached"] for s in summary["steps"])
    print(f"recipe leaderboard: {len(steps)} steps ({cached} cached) in {seconds:.0f}s; "
          f"table {summary['leaderboard_json']}, chart {summary['chart']}")
    merged, hf = Path(steps["merged-final"]["output"]), OUT / "merged-final-hf"
    if not (hf / "config.json").is_file():
        apr("export", str(merged), "--format", "hf", "-o", str(hf), "--json")
    diff = logits_match(merged, hf)
    print(f"export hf: {hf} reproduces apr's logits, max |diff| = {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit("exported model does not reproduce the logits")


if __name__ == "__main__":
    main()
