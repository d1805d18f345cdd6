"""A second opinion on the faces with open eyes, measured in scenes: dlib's age network (by
Cydral Technology, CC0-1.0, imported by `scripts/import_resnet_age.py`, as it is or fine-tuned on
a data set stored on its template, `dataset build --template`) reads each face the eye-bar test
does not call barred, on a chip aligned to dlib's five-point template
(`framing.template_chip`), and the model's flag on such a face stands only where that network
puts it below a veto age.

Why: the model calls many adult women minors, in scenes far more than on the stored faces
(docs/model-history.md, step 19), and every change to its own networks has traded minors for
adults along one curve. The other network was trained on other photos and calls almost no adult
a minor on aligned faces, but reads a barred face as an adult: on open eyes only, it may clear
adults the model flags without costing minors. What it costs on barred faces the eye-bar test
misses is measured too, since those reach it.

Each test photo (and its eye-barred copy) is pasted into a scene as `evaluate --scenes` does,
with the same scenes for the same photos, and the detector `predict` uses finds the face once.
For each veto age, the model's flag on the faces the teacher reads is raised, in tenths of a
year, until as many normal minors are flagged (a missed face unflagged) as the model alone
flags; the veto age whose matched flags call the fewest women aged 26+ minors is chosen on the
photos past `--choose-skip` (ties to the older veto), then the model alone, the chosen veto at
the model's own flags and at the matched raise are judged on the first `--judge-photos`.

    .venv/bin/python scripts/second_opinion_in_scenes.py --teacher runs/resnet-age/model.safetensors \\
        --data runs/data/utkface-all-m20 --exclude runs/v8-adult-photos.txt --choose-skip 1500 --judge-photos 1500
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from routes_in_scenes import KINDS, add_photo_options, choosing_then_judging, measures  # scripts/routes_in_scenes.py

from minorage import AgeEstimator
from minorage.config import DetectorConfig, InferenceConfig
from minorage.faces.detection import FaceDetector
from minorage.groups import MINOR_LIMIT
from minorage.model.estimator import with_second_opinion
from minorage.paper.in_scenes import estimates, scene_crops

RAISES = [round(0.1 * k, 1) for k in range(31)]  # the model's flag raised by up to 3 years


def read_scenes(rows: list[dict], barred: bool, detector: FaceDetector, model: AgeEstimator, teacher: AgeEstimator,
                read_barred: bool = False) -> dict[str, np.ndarray]:
    """Per photo in its scene (`in_scenes.scene_crops`): found, taken as barred by the eye-bar
    test, the model's age and flag as `predict` gives them (inf where missed), the teacher's
    age on the aligned chip (inf where missed), and the faces the teacher's veto leaves alone:
    those taken as barred, or with `read_barred` those taken as open-eyed."""
    framings = model.framings._replace(chip=teacher.net.cfg.image_size)
    (crops,), _, seen_barred = scene_crops(rows, barred, detector, [framings], progress=False)
    age, filled, _ = estimates(model, crops)
    found = np.isfinite(age)
    teacher_age = np.full(len(rows), np.inf)
    if found.any():
        teacher_age[found] = teacher.predict(np.stack([chip for _, _, chip in filter(None, crops)]))
    return {"found": found, "barred": seen_barred, "age": age, "flag": model.flags(filled, seen_barred), "teacher": teacher_age,
            "unread": ~seen_barred if read_barred else seen_barred}


def flagged(read: dict[str, np.ndarray], veto: float, raise_by: float = 0.0) -> np.ndarray:
    """The model's flags with the second opinion as a joined model applies it
    (`estimator.with_second_opinion`): on a face the teacher reads (by default those the eye-bar
    test does not call barred), the flag raised by `raise_by` and lifted where the teacher says
    `veto` or more (a missed face has no age, so is never flagged)."""
    return read["age"] < with_second_opinion(read["flag"], read["teacher"], read["unread"], {"veto": veto, "raise": raise_by})


def matched_raise(read: dict[str, np.ndarray], minors: np.ndarray, veto: float) -> float:
    """The smallest raise at which the veto keeps as many minors flagged as the model alone."""
    wanted = np.mean(flagged(read, np.inf)[minors])
    return next((r for r in RAISES if np.mean(flagged(read, veto, r)[minors]) >= wanted), RAISES[-1])


def arms(read: dict, minors: np.ndarray, ages: np.ndarray, people: list, vetoes: dict[float, float]) -> dict:
    """The measures of the model alone and of each veto at the model's flags and at its raise."""
    out = {"model_alone": measures(ages, read["found"], read["age"], flagged(read, np.inf), people),
           "taken_as_barred": float(read["barred"][read["found"]].mean())}
    for veto, raise_by in vetoes.items():
        out[f"veto_{veto:g}"] = {
            "minors_vetoed": float(np.mean((flagged(read, np.inf) & ~flagged(read, veto))[minors])),
            "at_model_flags": measures(ages, read["found"], read["age"], flagged(read, veto), people),
            f"flag_raised_{raise_by:g}": measures(ages, read["found"], read["age"], flagged(read, veto, raise_by), people)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="the model whose flags the second opinion may lift (default: the shipped one)")
    parser.add_argument("--teacher", required=True, help="dlib's age network as a minorage checkpoint (scripts/import_resnet_age.py, or trained on from it)")
    parser.add_argument("--read-barred", action="store_true",
                        help="the veto reads the faces the eye-bar test calls barred instead of the open-eyed ones "
                             "(and is chosen on the barred faces): a measurement; a joined model reads open eyes only")
    parser.add_argument("--vetoes", type=float, nargs="+", default=[25.0, 30.0, 35.0, 40.0], help="veto ages to choose among")
    add_photo_options(parser, "the veto")
    parser.add_argument("--save-reads", type=Path, metavar="NPZ",
                        help="also keep each face's reads (found, taken as barred, both ages, the flag) for the analysis of a next step")
    args = parser.parse_args()
    detector = FaceDetector(DetectorConfig(factor=InferenceConfig.pyramid_factor))
    model, teacher = AgeEstimator.from_pretrained(args.model), AgeEstimator.from_pretrained(args.teacher).over_whole_range()
    report: dict = {}
    kept: dict[str, np.ndarray] = {}
    for part, rows, ages, people in choosing_then_judging(args):
        minors = np.rint(ages) < MINOR_LIMIT
        reads = dict(zip(KINDS, (read_scenes(rows, barred, detector, model, teacher, args.read_barred) for barred in (False, True))))
        kept.update({f"{part}/ids": np.array([r["id"] for r in rows]), f"{part}/ages": ages,
                     **{f"{part}/{kind}/{key}": values for kind, read in reads.items() for key, values in read.items()}})
        if part == "chosen_on":
            read = reads["barred" if args.read_barred else "normal"]  # the kind of face the veto is chosen on
            raises = {v: matched_raise(read, minors, v) for v in args.vetoes}
            women = {v: measures(ages, read["found"], read["age"], flagged(read, v, r), people)["female_26+_called_minors"]
                     for v, r in raises.items()}
            chosen = min(sorted(women, reverse=True), key=women.get)
            shown, report[part] = raises, {"photos": len(rows), "veto_chosen": chosen, "raise_chosen": raises[chosen]}
        else:
            shown, report[part] = {chosen: raises[chosen]}, {"photos": len(rows)}
        for kind, read in reads.items():
            report[part][kind] = arms(read, minors, ages, people, shown)
        print(json.dumps({part: report[part]}, indent=1), flush=True)
    if args.save_reads:
        np.savez_compressed(args.save_reads, **kept)


if __name__ == "__main__":
    main()
