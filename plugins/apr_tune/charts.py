"""The study's two charts: optimisation history and parameter importance (matplotlib, optional).

Drawn from the trial rows and importances the results directory already holds, so they show
exactly what trials.jsonl and importances.json say.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def history(rows: list[dict[str, Any]], direction: str, path: Path) -> str | None:
    """Each completed trial's objective by trial number, the best so far as a line; pruned
    trials as crosses at their last intermediate value."""
    plt = _pyplot()
    done = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    if plt is None or not done:
        return None
    from apr_core.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot([r["number"] for r in done], [r["value"] for r in done], "o", markersize=4, label="completed")
    pruned = [(r["number"], list(r["intermediate"].values())[-1]) for r in rows
              if r["state"] == "pruned" and r["intermediate"]]
    if pruned:
        ax.plot(*zip(*pruned), "x", color="grey", markersize=5, label="pruned (last report)")
    best, line = None, []
    pick = min if direction == "minimize" else max
    for r in done:
        best = r["value"] if best is None else pick(best, r["value"])
        line.append((r["number"], best))
    ax.step(*zip(*line), where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return str(path)


def importance(importances: dict[str, float], path: Path) -> str | None:
    plt = _pyplot()
    if plt is None or not importances:
        return None
    from apr_core.atomic import atomic_path

    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(5.5, 0.5 + 0.4 * len(names)))
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (fANOVA)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return str(path)
