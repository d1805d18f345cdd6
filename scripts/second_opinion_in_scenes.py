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
flags (plus `--margin`); the veto age whose matched flags call the fewest women aged 26+ minors
is chosen on the photos past `--choose-skip` (ties to the older veto), then the model alone, the
chosen veto at the model's own flags and at the matched raise are judged on the first
`--judge-photos`. With `--weights`, the candidates are instead the teacher's shares in the age
of the faces it reads, with no veto, among those whose ages are no further from the truth than
the model's own (MAE averaged over ages 0-25, less `--mae-margin`; ties to the smaller share). `--reads` takes the reads an
earlier run kept, so that a next candidate is measured on the same faces in seconds, and
`--choose-on validation` chooses on the training photos set aside to validate.

    .venv/bin/python scripts/second_opinion_in_scenes.py --teacher runs/resnet-age/model.safetensors \\
        --data runs/data/utkface-all-m20 --exclude runs/v8-adult-photos.txt --choose-skip 1500 --judge-photos 1500
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
from routes_in_scenes import KINDS, add_photo_options, choosing_then_judging, measures  # scripts/routes_in_scenes.py

from minorage import AgeEstimator
from minorage.config import DetectorConfig, InferenceConfig
from minorage.faces.detection import FaceDetector
from minorage.groups import MINOR_LIMIT, YOUNG_ADULT_MAX
from minorage.model.estimator import blended_ages, with_second_opinion
from minorage.paper.in_scenes import estimates, scene_crops

RAISES = [round(0.1 * k, 1) for k in range(31)]  # the model's flag raised by up to 3 years


def read_scenes(rows: list[dict], barred: bool, detector: FaceDetector, model: AgeEstimator, teacher: AgeEstimator,
                read_barred: bool = False) -> dict[str, np.ndarray]:
    """Per photo in its scene (`in_scenes.scene_crops`): found, taken as barred by the eye-bar
    test, the model's age and flag as `predict` gives them (inf where missed), the teacher's
    age on the aligned chip (inf where missed), and the faces the second opinion leaves alone:
    those taken as barred, or with `read_barred` those taken as open-eyed; and whether the model's
    edge part read the face (its frame left the scene)."""
    framings = model.framings._replace(chip=teacher.net.cfg.image_size)
    (crops,), _, seen_barred = scene_crops(rows, barred, detector, [framings], progress=False)
    age, filled, _ = estimates(model, crops)
    found = np.isfinite(age)
    teacher_age = np.full(len(rows), np.inf)
    if found.any():
        teacher_age[found] = teacher.predict(np.stack([chip for _, _, chip in filter(None, crops)]))
    return {"found": found, "barred": seen_barred, "age": age, "flag": model.flags(filled, seen_barred), "teacher": teacher_age,
            "unread": ~seen_barred if read_barred else seen_barred, "edge": filled}


def kept_reads(path: Path, rows: list[dict]) -> dict[str, dict[str, np.ndarray]] | None:
    """The reads of these photos kept by an earlier run's `--save-reads`, wherever in it they were
    kept (None unless it holds every one of them)."""
    kept = np.load(path)
    where = {photo: (part, i) for part in ("chosen_on", "judged_on") if f"{part}/ids" in kept.files
             for i, photo in enumerate(kept[f"{part}/ids"].tolist())}
    if any(r["id"] not in where for r in rows):
        return None
    reads = {}
    for kind in KINDS:
        keys = {key.split("/")[-1] for key in kept.files if key.count("/") == 2 and key.split("/")[1] == kind}
        reads[kind] = {key: np.array([kept[f"{where[r['id']][0]}/{kind}/{key}"][where[r["id"]][1]] for r in rows]) for key in keys}
        reads[kind].setdefault("unread", reads[kind]["barred"])  # kept before `--read-barred`: the open-eyed faces were read
    return reads


def opinion(veto: float | None, weight: float = 0.0, raise_by: float = 0.0) -> dict:
    """A second opinion as a joined model's card holds it (`estimator.with_second_opinion`)."""
    return {"veto": veto, "weight": weight, "raise": raise_by}


def of_kind(second: dict, kind: str, values: dict) -> dict:
    """A second opinion with one kind's settings changed: its own for normal faces, its barred
    part's for barred ones."""
    return {**second, **values} if kind == "normal" else {**second, "barred": {**second.get("barred", {}), **values}}


def ages_of(read: dict[str, np.ndarray], second: dict) -> np.ndarray:
    """The ages a joined model reports: the teacher's weight in those of the faces it reads."""
    return blended_ages(read["age"], read["teacher"], read["unread"], second)


def flagged(read: dict[str, np.ndarray], second: dict) -> np.ndarray:
    """The model's flags with the second opinion as a joined model applies it: on a face the
    teacher reads (by default those the eye-bar test does not call barred), the age blended by its
    weight, the flag raised by its raise and lifted where it says its veto or more (a missed face
    has no age, so is never flagged)."""
    return ages_of(read, second) < with_second_opinion(read["flag"], read["teacher"], read["unread"], second)


def matched_raise(read: dict[str, np.ndarray], minors: np.ndarray, second: dict, margin: float, kind: str = "normal") -> float:
    """The smallest raise (of `kind`'s faces) at which the second opinion flags as many minors as
    the model alone, plus `margin`."""
    wanted = np.mean(flagged(read, opinion(None))[minors]) + margin
    return next((r for r in RAISES if np.mean(flagged(read, of_kind(second, kind, {"raise": r}))[minors]) >= wanted), RAISES[-1])


def unraised(second: dict) -> dict:
    """The same second opinion at the model's own flags."""
    second = {**second, "raise": 0.0}
    return of_kind(second, "barred", {"raise": 0.0}) if "barred" in second else second


def raised_name(second: dict) -> str:
    raises = [second["raise"], *([second["barred"]["raise"]] if "barred" in second else [])]
    return "flag_raised_" + "_".join(f"{r:g}" for r in raises)


def arms(read: dict, minors: np.ndarray, ages: np.ndarray, people: list, candidates: dict[str, dict]) -> dict:
    """The measures of the model alone and of each candidate at the model's flags and at its
    raise, and of both split by the part of the model that read each face (where the reads say)."""
    alone = opinion(None)
    out = {"model_alone": measures(ages, read["found"], read["age"], flagged(read, alone), people),
           "taken_as_barred": float(read["barred"][read["found"]].mean())}
    for name, second in candidates.items():
        own = unraised(second)
        out[name] = {
            "minors_vetoed": float(np.mean((flagged(read, alone) & ~flagged(read, own))[minors])),
            "at_model_flags": measures(ages, read["found"], ages_of(read, own), flagged(read, own), people),
            raised_name(second): measures(ages, read["found"], ages_of(read, second), flagged(read, second), people)}
    if "edge" in read:
        out["by_part"] = {name: by_part(read, ages, people, flagged(read, second))
                          for name, second in {"model_alone": alone, **candidates}.items()}
    return out


def by_part(read: dict, ages: np.ndarray, people: list, flags: np.ndarray) -> dict:
    """For the faces found, split by the part of the model that read them (the edge part: the
    face's frame left the scene): how many, the minors among them flagged, and the women and men
    aged 26+ among them called minors. Why: a third of the faces in scenes go to the edge part,
    and what is left to mend may lie in one part more than the other."""
    adults, sexes = ages > YOUNG_ADULT_MAX, np.array([p[0] for p in people])
    groups = {("minors", "minors_flagged"): np.rint(ages) < MINOR_LIMIT,  # (its count's key, its flagged share's key)
              **{(f"{s}_26+", f"{s}_26+_called_minors"): adults & (sexes == s) for s in ("female", "male")}}
    out = {}
    for part, faces in (("main", read["found"] & ~read["edge"]), ("edge", read["found"] & read["edge"])):
        out[part] = {"faces": int(faces.sum())}
        for (count, share), group in groups.items():
            whose = faces & group
            out[part].update({count: int(whose.sum()), share: float(np.mean(flags[whose])) if whose.any() else None})
    return out


def no_worse_ages(measured: dict, read: dict, ages: np.ndarray, people: list, margin: float = 0.0) -> bool:
    """Whether a candidate's ages have an MAE averaged over ages 0-25 at least `margin` years
    below the model's alone (a veto leaves the ages, so with no margin it always has)."""
    alone = measures(ages, read["found"], read["age"], flagged(read, opinion(None)), people)
    return measured["MAE_averaged_over_ages"] <= alone["MAE_averaged_over_ages"] - margin


def candidates_of(args: argparse.Namespace, second: dict, kind: str) -> dict[str, dict]:
    """The second opinions to choose among: the weights (no veto) where given, else the vetoes;
    with `--per-kind`, the weights of `kind`'s faces beside the settings already chosen."""
    if args.per_kind:
        return {f"{kind}_weight_{w:g}": of_kind(second, kind, {"weight": w, "raise": 0.0}) for w in args.weights}
    if args.weights:
        return {f"weight_{w:g}": opinion(None, w) for w in args.weights}
    return {f"veto_{v:g}": opinion(v) for v in args.vetoes}


def one_kind_each(second: dict) -> dict[str, dict]:
    """A second opinion's settings for each kind of face alone, the other kind left to the model."""
    return {"open_eyes_only": {k: v for k, v in second.items() if k != "barred"},
            "barred_only": {**second, "weight": 0.0, "raise": 0.0}}


def chosen_kinds(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Which copies of the photos choose, and whose settings they choose: with `--per-kind` the
    normal ones the open-eyed faces', then the barred ones the barred part's; else one set of
    settings for the faces read (the barred copies' with `--read-barred`)."""
    return list(zip(KINDS, KINDS)) if args.per_kind else [("barred" if args.read_barred else "normal", "normal")]


def choose(read: dict, minors: np.ndarray, ages: np.ndarray, people: list, candidates: dict[str, dict],
           args: argparse.Namespace, kind: str) -> str:
    """Each candidate's raise matched to the minors on `kind`'s faces, then the one that calls
    the fewest women aged 26+ minors among those whose ages are no further from the truth."""
    for second in candidates.values():
        second.update(of_kind(second, kind, {"raise": matched_raise(read, minors, second, args.margin, kind)}))
    measured = {name: measures(ages, read["found"], ages_of(read, second), flagged(read, second), people)
                for name, second in candidates.items()}
    women = {name: m["female_26+_called_minors"] for name, m in measured.items() if no_worse_ages(m, read, ages, people, args.mae_margin)}
    if not women:
        raise SystemExit(f"no candidate's ages on {kind} faces are as close as the model's own: {json.dumps(measured)}")
    return min(women, key=women.get) if args.weights else min(reversed(list(women)), key=women.get)  # ties: least weight, oldest veto


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="the model whose flags the second opinion may lift (default: the shipped one)")
    parser.add_argument("--teacher", required=True, help="dlib's age network as a minorage checkpoint (scripts/import_resnet_age.py, or trained on from it)")
    parser.add_argument("--read-barred", action="store_true",
                        help="the veto reads the faces the eye-bar test calls barred instead of the open-eyed ones "
                             "(and is chosen on the barred faces): a measurement; a joined model reads open eyes only")
    parser.add_argument("--vetoes", type=float, nargs="+", default=[25.0, 30.0, 35.0, 40.0], help="veto ages to choose among")
    parser.add_argument("--weights", type=float, nargs="+",
                        help="instead of vetoes, the teacher's shares in the age of the faces it reads to choose among (no veto)")
    parser.add_argument("--per-kind", action="store_true",
                        help="with --weights: the teacher reads every face, open-eyed and barred, each kind with a weight and raise "
                             "of its own, chosen on that kind's faces (normal first); judged also with each kind's settings alone")
    parser.add_argument("--margin", type=float, default=0.0, metavar="SHARE",
                        help="the raise is matched to the model's share of minors flagged plus this share (default: %(default)s)")
    parser.add_argument("--mae-margin", type=float, default=0.0, metavar="YEARS",
                        help="only a candidate whose MAE averaged over ages is this much below the model's is chosen (default: %(default)s)")
    add_photo_options(parser, "the second opinion")
    parser.add_argument("--save-reads", type=Path, metavar="NPZ",
                        help="also keep each face's reads (found, taken as barred, both ages, the flag, the model's part) for the "
                             "analysis of a next step")
    parser.add_argument("--reads", type=Path, metavar="NPZ",
                        help="the reads an earlier run kept with --save-reads (the same model and teacher): photos it holds are not read again")
    args = parser.parse_args()
    if args.per_kind and not args.weights:
        parser.error("--per-kind chooses among --weights")
    detector = FaceDetector(DetectorConfig(factor=InferenceConfig.pyramid_factor))
    model = AgeEstimator.from_pretrained(args.model)
    teacher = functools.cache(lambda: AgeEstimator.from_pretrained(args.teacher).over_whole_range())
    report: dict = {}
    kept: dict[str, np.ndarray] = {}
    for part, rows, ages, people in choosing_then_judging(args):
        minors = np.rint(ages) < MINOR_LIMIT
        reads = (kept_reads(args.reads, rows) if args.reads else None) or dict(zip(KINDS, (
            read_scenes(rows, barred, detector, model, teacher(), args.read_barred) for barred in (False, True))))
        kept.update({f"{part}/ids": np.array([r["id"] for r in rows]), f"{part}/ages": ages,
                     **{f"{part}/{kind}/{key}": values for kind, read in reads.items() for key, values in read.items()}})
        if args.per_kind:
            for read in reads.values():
                read["unread"] = read["barred"]  # every face read, each kind by its own settings
        if part == "chosen_on":
            second, shown, names = opinion(None), {}, []
            for copies, kind in chosen_kinds(args):
                candidates = candidates_of(args, second, kind)
                names.append(choose(reads[copies], minors, ages, people, candidates, args, kind))
                second, shown = candidates[names[-1]], {**shown, **candidates}
            chosen = " and ".join(names)
            report[part] = {"photos": len(rows), "chosen": chosen, "settings": second}
        else:
            shown, report[part] = {chosen: second, **(one_kind_each(second) if args.per_kind else {})}, {"photos": len(rows)}
        for kind, read in reads.items():
            report[part][kind] = arms(read, minors, ages, people, shown)
        print(json.dumps({part: report[part]}, indent=1), flush=True)
    if args.save_reads:
        np.savez_compressed(args.save_reads, **kept)


if __name__ == "__main__":
    main()
