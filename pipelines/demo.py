"""`make demo`'s verdict: compare runs on the sample dataset, focusing on the classes that differ only in order.

Usage: ``python -m vidfeat.pipelines.demo RUN_DIR...`` (the first run is the order-blind baseline).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from vidfeat.pipelines.sample import REVERSAL_PAIRS
from vidfeat.temporal.runs import compare_runs, format_comparison


def order_only_accuracy(run_dir: Path) -> float:
    """Mean per-class test accuracy over the classes whose videos are exact time reversals of each other."""
    per_class = json.loads((run_dir / "metrics.json").read_text())["per_class"]
    classes = [c for pair in REVERSAL_PAIRS for c in pair]
    return sum(per_class[c] for c in classes) / len(classes)


def report(run_dirs: list[Path]) -> str:
    lines = [format_comparison(compare_runs(run_dirs)), ""]
    pairs = ", ".join(f"{a}/{b}" for a, b in REVERSAL_PAIRS)
    lines.append(f"order-only classes ({pairs}; chance = 50% within each pair):")
    heads = [json.loads((run_dir / "config.json").read_text())["head"] for run_dir in run_dirs]
    scores = {head: order_only_accuracy(run_dir) for head, run_dir in zip(heads, run_dirs)}
    for head, score in scores.items():
        lines.append(f"  {head:12s} {100 * score:5.1f}%")
    baseline, *temporal = heads
    best = max(temporal, key=scores.__getitem__)
    verdict = "clearly wins" if scores[best] - scores[baseline] >= 0.25 else "does NOT clearly win"
    lines.append(
        f"the best temporal head ({best}) {verdict} on the order-only classes: "
        f"{100 * scores[best]:.1f}% vs {100 * scores[baseline]:.1f}% for the order-blind {baseline}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(report([Path(p) for p in sys.argv[1:]]))
