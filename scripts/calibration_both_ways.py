"""The calibration procedure judged both ways round: fit on the even half of a test split and
judged on the odd half, fit on the odd half and judged on the even half, and the two pooled
(every face judged once, by the fit on the half it is not in), for each part of the model.
Why: each half holds a few hundred minors, so one direction alone moves a group's coverage by
several points.

    .venv/bin/python scripts/calibration_both_ways.py --data runs/data/utkface-all-m20 --exclude runs/v8-adult-photos.txt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from minorage import AgeEstimator
from minorage.groups import ALL_GROUPS
from minorage.paper.calibration import CALIBRATION, CHECK, as_markdown, calibrate, check, parts, wilson


def pooled(first: dict, second: dict) -> dict:
    """Two directions' coverage tables as one: each group's covered faces summed."""
    def merge(a: dict, b: dict) -> dict:
        table = {}
        for group in (g for g in ALL_GROUPS if g in a or g in b):
            cells = [t[group] for t in (a, b) if group in t]
            faces, hits = sum(c["faces"] for c in cells), round(sum(c["faces"] * c["covered"] for c in cells))
            table[group] = {"faces": faces, "covered": hits / faces, **dict(zip(("low", "high"), wilson(hits, faces)))}
        return table

    out = {}
    for variant in first:
        one, two = first[variant], second[variant]
        out[variant] = {"n": one["n"] + two["n"], "reliability": [], "coverage": merge(one["coverage"], two["coverage"]),
                        "coverage_by_sex": {s: merge(one["coverage_by_sex"].get(s, {}), two["coverage_by_sex"].get(s, {}))
                                            for s in one["coverage_by_sex"].keys() | two["coverage_by_sex"].keys()}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", required=True, help="a built data set (its test split)")
    parser.add_argument("--exclude", help="a file naming photos the model may have seen")
    args = parser.parse_args()
    exclude = Path(args.exclude).read_text().split() if args.exclude else []
    estimator = AgeEstimator.from_pretrained(args.model)
    readers = parts(estimator)
    results: dict[str, dict[str, dict]] = {name: {} for name in readers}
    for half in (CALIBRATION, CHECK):
        calibrations, _ = calibrate(estimator, Path(args.data), exclude, half)
        for name, calibration in calibrations.items():
            readers[name].card.calibration = calibration.to_dict()
            results[name][half] = check(estimator, Path(args.data), exclude, name)
            fitted = {kind: calibration.fitted_on["faces"][kind] for kind in ("normal", "barred")}
            print(f"\n## {name.capitalize()} part: fit on the {half} half, judged on the other\n\nchosen: {fitted}\n")
            print(as_markdown(results[name][half], "of the other half"))
    for name, both in results.items():
        print(f"\n## {name.capitalize()} part: both directions pooled\n")
        print(as_markdown(pooled(both[CALIBRATION], both[CHECK]), "of both halves, each judged by the fit on the other"))


if __name__ == "__main__":
    main()
