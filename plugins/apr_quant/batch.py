"""The ``apr quantize --batch`` comparison: size, bits/weight, perplexity change, time, chart.

Each output is reopened and measured the same way as the input (perplexity
on the same tokens and windows), so the change is a like-for-like ratio.
The chart needs matplotlib (``pip install 'apr[quant]'``); without it the
report says so and the table is unaffected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _perplexity(source: str, options: dict[str, Any], context) -> float:
    from apr_core import pipeline

    quiet = context.quieter()
    result = pipeline.evaluate("perplexity", pipeline.load(source, verify=False),
                               {"dataset": options["eval_dataset"], "max_tokens": options["eval_tokens"],
                                "seq_len": options["eval_seq_len"]}, quiet)
    return float(result["value"])


def compare(source: str, rows: list[dict[str, Any]], options: dict[str, Any], context) -> dict[str, Any]:
    """Add bits/weight and perplexity change to each batch row; write table JSON and chart."""
    import json

    from apr_core import pipeline

    base = pipeline.load(source, verify=False)
    report: dict[str, Any] = {"input_bytes": base.nbytes,
                              "input_bits_per_weight": round(base.bits_per_weight, 3)}
    evaluate = options["eval_tokens"] > 0
    if evaluate:
        context.log(f"perplexity of the input on {options['eval_dataset']} ({options['eval_tokens']} tokens)")
        base_ppl = _perplexity(source, options, context)
        report["input_perplexity"] = round(base_ppl, 4)
        report["eval_dataset"] = options["eval_dataset"]
    for row in rows:
        out = pipeline.load(row["output"], verify=False)
        row["bits_per_weight"] = round(out.bits_per_weight, 3)
        row["size_ratio"] = round(row["bytes"] / Path(source).stat().st_size, 4) if Path(source).is_file() else None
        if evaluate:
            ppl = _perplexity(row["output"], options, context)
            row["perplexity"] = round(ppl, 4)
            row["perplexity_change_pct"] = round(100 * (ppl / base_ppl - 1), 3)
    directory = Path(rows[0]["output"]).parent
    (directory / "comparison.json").write_text(json.dumps({**report, "rows": rows}, indent=2))
    report["table"] = str(directory / "comparison.json")
    report["chart"] = chart(rows, directory / "comparison.png", evaluate)
    return report


def chart(rows: list[dict[str, Any]], path: Path, with_perplexity: bool) -> str:
    """A two-panel bar chart (size in MB; perplexity change in %) as PNG; returns the path or a note."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "not drawn: matplotlib is not installed (pip install 'apr[quant]')"
    names = [r["technique"] for r in rows]
    panels = 2 if with_perplexity else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.2), squeeze=False)
    ax = axes[0][0]
    ax.bar(names, [r["bytes"] / 2**20 for r in rows], color="#4c72b0")
    ax.set_ylabel("size (MiB)")
    for i, r in enumerate(rows):
        ax.annotate(f"{r['bits_per_weight']:.2f} b/w", (i, r["bytes"] / 2**20), ha="center", va="bottom",
                    fontsize=8)
    if with_perplexity:
        ax = axes[0][1]
        ax.bar(names, [r["perplexity_change_pct"] for r in rows], color="#dd8452")
        ax.set_ylabel("perplexity change (%)")
        ax.axhline(0, color="black", linewidth=0.6)
    fig.suptitle("apr quantize --batch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
