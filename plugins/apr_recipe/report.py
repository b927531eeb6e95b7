"""A recipe's leaderboard: each reported model's size, every metric, and the time its step took,
as a markdown table, JSON and a PNG chart.

Each evaluation is cached like a step: its result is stored under the model's key and the
metric's parameters, so a re-run recomputes nothing. Metrics are any evaluate technique
(perplexity on ``stdlib-code`` / ``rust-code`` / ``typescript-code``, ``humaneval`` on a fixed
subset ...), run through `apr_core.pipeline.evaluate`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .runner import Done
from .spec import Recipe


def _cached_eval(recipe: Recipe, done: Done, metric, context) -> dict[str, Any]:
    from apr_core import pipeline
    from apr_core.atomic import write_bytes

    key = hashlib.sha256(json.dumps([done.key, metric.technique, metric.params], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    path = recipe.workdir / "evals" / f"{done.step}-{metric.technique}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    params = dict(metric.params)
    if "results" in {p.name for p in pipeline.technique_of("evaluate", metric.technique).params}:
        params.setdefault("results", str(path.with_suffix(".samples.jsonl")))
    result = pipeline.evaluate(metric.technique, pipeline.load(done.output), params, context.quieter())
    write_bytes(path, json.dumps(result, indent=2, default=str).encode())
    return result


def leaderboard(recipe: Recipe, done: list[Done], context) -> dict[str, Any]:
    """Evaluate the reported models and return rows plus the table, JSON and chart paths."""
    from apr_core import pipeline

    by_step = {d.step: d for d in done}
    rows = []
    for name in recipe.report_models:
        d = by_step.get(name)
        if d is None:
            continue
        row: dict[str, Any] = {"step": name, "action": recipe.steps[name].action,
                               "technique": recipe.steps[name].technique, "bytes": _size(d.output),
                               "seconds": d.seconds}
        model = pipeline.load(d.output, verify=False)
        row["params"] = model.param_count
        for metric in recipe.metrics:
            if metric.models is not None and name not in metric.models:
                row[metric.name] = None
                continue
            context.log(f"recipe {recipe.name}: {metric.name} of {name}")
            result = _cached_eval(recipe, d, metric, context)
            row[metric.name] = round(float(result["value"]), 4)
        rows.append(row)
    table = markdown(rows, [m.name for m in recipe.metrics])
    (recipe.workdir / "leaderboard.json").write_text(json.dumps(rows, indent=2) + "\n")
    (recipe.workdir / "leaderboard.md").write_text(table + "\n")
    chart = draw(rows, [m.name for m in recipe.metrics], recipe.workdir / "leaderboard.png", recipe.name)
    return {"rows": rows, "table": table, "json": str(recipe.workdir / "leaderboard.json"), "chart": chart}


def _size(path: str) -> int:
    p = Path(path)
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size


def markdown(rows: list[dict[str, Any]], metrics: list[str]) -> str:
    head = ["step", "technique", "size MB", "params M", *metrics, "step time s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        technique = f"{r['action']} {r['technique'] or ''}".strip()
        cells = [r["step"], technique, f"{r['bytes'] / 1e6:.1f}", f"{r['params'] / 1e6:.1f}",
                 *("-" if r[m] is None else f"{r[m]:.4g}" for m in metrics), f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw(rows: list[dict[str, Any]], metrics: list[str], path: Path, title: str) -> str:
    """One panel per metric (bars per model) plus size; returns the path or why it was not drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "not drawn: matplotlib is not installed (pip install 'apr[finetune]')"
    panels = ["size MB", *metrics]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    names = [r["step"] for r in rows]
    for ax, panel in zip(axes[0], panels):
        values = [r["bytes"] / 1e6 if panel == "size MB" else r[panel] for r in rows]
        ax.bar(range(len(rows)), [float("nan") if v is None else v for v in values], color="#4c72b0")
        ax.set_xticks(range(len(rows)), names, rotation=60, ha="right", fontsize=7)
        ax.set_title(panel, fontsize=9)
    fig.suptitle(f"apr recipe {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
