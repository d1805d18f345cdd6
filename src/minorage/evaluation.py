"""A model on a data set's test split, normal and eye-barred faces apart (the paper's §4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import metrics
from .datasets import load_faces
from .models import AgeEstimator

VARIANT_LABELS = {"org": "Org (normal faces)", "ocl": "Ocl (eye-barred faces)"}


def evaluate_model(estimator: AgeEstimator, data_dir: Path, variants: tuple[str, ...] = ("org", "ocl"), split: str = "test") -> dict[str, dict]:
    """Every measure of `metrics.evaluate` per variant of the split."""
    results = {}
    for variant in variants:
        faces = load_faces(data_dir, split, variant)
        results[variant] = metrics.evaluate(faces.ages, estimator.predict(faces.faces), estimator.minor_below)
    return results


def as_markdown(results: dict[str, dict], title: str = "") -> str:
    """The results as Markdown: one column per variant, then each variant's group confusion."""
    rows = [
        ("faces", "n", "{:d}"),
        ("MAE, ages 0-25", "MAE", "{:.2f}"),
        ("MAE averaged over ages", "MAE_age_averaged", "{:.2f}"),
        *[(f"accuracy [{g}]", g, "{:.1%}") for g in metrics.GROUP_NAMES],
        ("Acc (mean of the groups)", "Acc", "{:.1%}"),
        ("minor flag threshold (estimate below)", "minor_below", "{:.1f}"),
        ("minors' recall (< 18 flagged)", "minor_recall", "{:.1%}"),
        ("specificity on 18-25", "specificity_18_25", "{:.1%}"),
        ("adults 26+ called minors", "adults_called_minors", "{:.1%}"),
    ]
    variants = list(results)
    lines = [f"### {title}" if title else "", "", "| measure | " + " | ".join(VARIANT_LABELS.get(v, v) for v in variants) + " |",
             "|---|" + "---|" * len(variants)]
    for label, key, fmt in rows:
        cells = [fmt.format(results[v][key]) if key in results[v] else "–" for v in variants]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for v in variants:
        lines += ["", f"Group confusion, {VARIANT_LABELS.get(v, v)} (rows true, columns predicted):", "",
                  "| true \\ predicted | " + " | ".join(metrics.ALL_GROUPS) + " |", "|---|" + "---|" * len(metrics.ALL_GROUPS)]
        for name, row in zip(metrics.ALL_GROUPS, np.asarray(results[v]["confusion"])):
            if row.sum():
                lines.append(f"| {name} | " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines).strip() + "\n"
