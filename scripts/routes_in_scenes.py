"""Two models behind one route, measured in scenes: faces whose frame the photo's edge filled
(repeated edge pixels, as in every stored UTKFace face) read by one model at its flag, faces with
the photo's own surroundings in their frame read by another at a flag of its own.

Why: networks fine-tuned with real content around the face read faces in photos far better
than v8 but read the stored faces, whose margins are repeated edge pixels, worse
(docs/model-history.md, steps 14-15); the two kinds of face can be told apart before the
networks run. This measures what such a route would do, before it is built.

Each test photo (and its eye-barred copy) is pasted into a scene as `evaluate --scenes` does,
with the same scenes for the same photos; the detector `predict` uses finds the face once and it
is framed for each model. The route's own flag is the lowest (from 17.5 up, in tenths) at which
the routed pair flags at least as many minors as `--edge-model` alone does at its flag, normal and
barred faces pooled (or, with `--flag-per-kind`, one flag for each kind of face, as the eye-bar
test tells them apart), missed faces unflagged: chosen on the photos given by `--choose-skip`
and `--choose-photos`, then applied unchanged to the photos that judge (`--judge-photos`, from
the first), and to the data set's stored test faces, routed by where each face's frame lay in
its photo.

    .venv/bin/python scripts/routes_in_scenes.py --model runs/scene-v8/model.safetensors --edge-model runs/default-v8/model.safetensors \\
        --data runs/data/utkface-all-m20 --exclude runs/v8-adult-photos.txt --choose-skip 1500 --judge-photos 1500
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from minorage import AgeEstimator
from minorage.config import DetectorConfig, InferenceConfig
from minorage.faces.detection import FaceDetector
from minorage.faces.framing import filled_share, frame_face
from minorage.groups import MINOR_LIMIT, YOUNG_ADULT_MAX
from minorage.paper import metrics
from minorage.paper.evaluation import photo_ids
from minorage.paper.in_scenes import photos_of_split, scene_faces
from minorage.paper.store import frame_shares_past_photo, load_faces, photo_demographics

KINDS = ("normal", "barred")  # each photo as it is, then eye-barred


def read_scenes(rows: list[dict], barred: bool, detector: FaceDetector, edge: AgeEstimator, model: AgeEstimator,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Per photo in its scene (the scenes of `evaluate --scenes` for the same rows and seed):
    found, the share of the edge model's frame past the image, and each model's age (inf where missed)."""
    found, shares, edge_crops, model_crops = [], [], [], []
    for scene, face, _ in scene_faces(rows, barred, detector, seed, progress=False):
        found.append(face is not None)
        shares.append(0.0 if face is None else filled_share(scene.image.shape, face.box, edge.framing.margin))
        if face is not None:
            edge_crops.append(frame_face(scene.image, face.box, edge.framing, face.eyes))
            model_crops.append(frame_face(scene.image, face.box, model.framing, face.eyes))
    found_mask = np.array(found)
    out = {"found": found_mask, "share": np.array(shares)}
    for name, estimator, crops in (("edge", edge, edge_crops), ("model", model, model_crops)):
        ages = np.full(len(rows), np.inf)
        if crops:
            ages[found_mask] = estimator.predict(np.stack(crops))
        out[name] = ages
    return out


def at_share(read: dict[str, np.ndarray], above: float) -> dict[str, np.ndarray]:
    """The read with each face's route: to the edge model where more than `above` of its frame
    lay past the image."""
    return {**read, "leaves": read["share"] > above}


def routed(read: dict[str, np.ndarray]) -> np.ndarray:
    """The routed pair's ages: the edge model's where the frame left the image."""
    return np.where(read["leaves"], read["edge"], read["model"])


def flagged(read: dict[str, np.ndarray], edge_below: float, model_below: float) -> np.ndarray:
    """The routed pair's flags: each face against its own route's threshold (misses unflagged)."""
    return np.where(read["leaves"], read["edge"] < edge_below, read["model"] < model_below)


def choose_flag(reads: list[dict], minors: np.ndarray, edge_below: float, wanted: float | None = None) -> float:
    """The lowest route flag (from the edge model's, in tenths) at which the routed pair flags at
    least the share `wanted` of the minors, normal and barred pooled: by default as many as the
    edge model alone."""
    if not minors.any():
        raise ValueError("no minors among the photos to choose the route's flag on: give more photos")
    if wanted is None:
        wanted = np.mean(np.concatenate([r["edge"][minors] < edge_below for r in reads]))
    below = edge_below
    while np.mean(np.concatenate([flagged(r, edge_below, below)[minors] for r in reads])) < wanted and below < 25:
        below = round(below + 0.1, 1)
    return below


def measures(ages: np.ndarray, found: np.ndarray, est: np.ndarray, flags: np.ndarray, people: list[tuple[str, str]]) -> dict:
    """Minors flagged (misses unflagged), and over the faces found: the MAE on ages 0-25 and
    the people aged 26+ called minors, overall, by sex and worst ethnicity (of 20 or more)."""
    minors, young = np.rint(ages) < MINOR_LIMIT, ages <= YOUNG_ADULT_MAX
    adults = found & ~young
    sexes, ethnicities = (np.array([p[i] for p in people]) for i in (0, 1))
    by_ethnicity = {e: float(np.mean(flags[adults & (ethnicities == e)])) for e in sorted(set(ethnicities.tolist()))
                    if (adults & (ethnicities == e)).sum() >= 20}
    worst = max(by_ethnicity, key=by_ethnicity.get) if by_ethnicity else None
    return {"found": float(found.mean()),
            "MAE": metrics.mae(ages[found & young], est[found & young]),
            "MAE_averaged_over_ages": metrics.age_averaged_mae(ages[found & young], est[found & young]),
            "minors_flagged_with_misses": float(np.mean(flags[minors])),
            "adults_called_minors": float(np.mean(flags[adults])),
            **{f"{s}_26+_called_minors": float(np.mean(flags[adults & (sexes == s)])) for s in ("female", "male")},
            "worst_ethnicity": {worst: by_ethnicity[worst]} if worst else {}}


def stored(data: Path, left_out: list[str], edge: AgeEstimator, model: AgeEstimator, routes: dict[float, dict[str, float]]) -> dict:
    """The route on the data set's stored test faces, for each share `above` and its flags: a face
    more of whose frame than that lay past its photo (where the build repeated the edge pixels)
    to the edge model, the others to the model at the route flag."""
    known, (skip, _) = photo_demographics(data), photo_ids(data, left_out)
    out: dict = {}
    for kind, variant in zip(KINDS, ("org", "ocl")):
        faces = load_faces(data, "test", variant)
        faces = faces.subset(~np.isin(faces.ids, list(skip)))
        read = {"found": np.ones(len(faces), bool), "edge": edge.predict(faces.faces), "model": model.predict(faces.faces),
                "share": frame_shares_past_photo(data, faces.ids)}
        people = [known[i] for i in faces.ids.tolist()]
        out[kind] = {"faces": len(faces), "edge_model_alone": measures(faces.ages, read["found"], read["edge"], read["edge"] < edge.minor_below, people)}
        for above, flags in routes.items():
            r = at_share(read, above)
            out[kind][f"edge_above_{above}"] = {
                "routed_to_edge_model": float(r["leaves"].mean()),
                "routed_at_route_flag": measures(faces.ages, r["found"], routed(r), flagged(r, edge.minor_below, flags[kind]), people)}
    return out


def choose_share(reads: list[dict], ages: np.ndarray, people: list[tuple[str, str]], shares: list[float], edge_below: float,
                 per_kind: bool, match: dict[str, float] | None = None) -> tuple[float, dict[float, dict[str, float]]]:
    """Each candidate share's route flags (`choose_flag`: as many minors as the edge model alone
    flags, or, with `match`, as the route at share 0 and those flags per kind), and the share
    whose route calls the fewest women aged 26+ minors at them, normal and barred faces summed;
    ties to the smaller share."""
    minors = np.rint(ages) < MINOR_LIMIT

    def wanted(kinds: list[tuple[str, dict]]) -> float | None:
        return None if match is None else float(np.mean(np.concatenate(
            [flagged(at_share(r, 0.0), edge_below, match[kind])[minors] for kind, r in kinds])))

    flags, women = {}, {}
    for above in sorted(set(shares)):
        mine = [at_share(r, above) for r in reads]
        flags[above] = ({kind: choose_flag([r], minors, edge_below, wanted([(kind, raw)])) for kind, r, raw in zip(KINDS, mine, reads)}
                        if per_kind else dict.fromkeys(KINDS, choose_flag(mine, minors, edge_below, wanted(list(zip(KINDS, reads))))))
        women[above] = sum(measures(ages, r["found"], routed(r), flagged(r, edge_below, flags[above][kind]), people)["female_26+_called_minors"]
                           for kind, r in zip(KINDS, mine))
    return min(sorted(women), key=women.get), flags


def add_photo_options(parser: argparse.ArgumentParser, chosen: str) -> None:
    """The options naming the data set's test photos in scenes that choose and that judge."""
    parser.add_argument("--data", required=True, help="a data set from `minorage dataset build`")
    parser.add_argument("--exclude", help="a file of photo names or ids to leave out")
    parser.add_argument("--choose-on", choices=("test", "validation"), default="test",
                        help=f"{chosen} is chosen on the test split's photos after --choose-skip (default), or on the training "
                             "photos training sets aside to validate (then --choose-skip counts those)")
    parser.add_argument("--choose-skip", type=int, required=True, help=f"{chosen} is chosen on the photos after the first K")
    parser.add_argument("--choose-photos", type=int, default=0, help="at most this many of them (default: all)")
    parser.add_argument("--judge-photos", type=int, default=0, help="then judged on the first N photos (default: none)")


def choosing_then_judging(args: argparse.Namespace) -> Iterator[tuple[str, list[dict], np.ndarray, list[tuple[str, str]]]]:
    """("chosen_on", ...) for the photos past `--choose-skip` (of the test split, or of the
    validation part with `--choose-on validation`), then ("judged_on", ...) for the test split's
    first `--judge-photos` where asked: each part's manifest rows, true ages and (sex, ethnicity)."""
    data, left_out = Path(args.data), (Path(args.exclude).read_text().split() if args.exclude else [])
    known = photo_demographics(data)
    for part, (photos, skip, split) in (("chosen_on", (args.choose_photos, args.choose_skip, args.choose_on)),
                                        ("judged_on", (args.judge_photos, 0, "test"))):
        if part == "judged_on" and not args.judge_photos:
            return
        rows = photos_of_split(data, left_out, photos, skip, split)
        yield part, rows, np.array([float(r["age"]) for r in rows]), [known[r["id"]] for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the model for faces with the photo's own surroundings")
    parser.add_argument("--edge-model", required=True, help="the model for faces whose frame the edge filled (v8 until 0.4.8's default)")
    add_photo_options(parser, "the route's flag")
    parser.add_argument("--flag-per-kind", action="store_true",
                        help="choose the route's flag for normal and for eye-barred faces apart, each against the edge model's "
                             "share of that kind's minors (default: one flag, the two kinds pooled)")
    parser.add_argument("--match-route", type=float, nargs=2, metavar=("FLAG", "FLAG_BARRED"),
                        help="choose the flags to flag as many minors as the route at share 0 with these flags (the shipped "
                             "model's), normal and eye-barred faces, instead of as many as the edge model alone")
    parser.add_argument("--edge-above", type=float, nargs="+", default=[0.0],
                        help="shares of a face's frame past the image above which it goes to the edge model, each with its own "
                             "flags; the one calling the fewest women aged 26+ minors on the choosing photos is judged, beside "
                             "0 (any of the frame past the image) when 0 is among them (default: 0)")
    args = parser.parse_args()
    data, left_out = Path(args.data), (Path(args.exclude).read_text().split() if args.exclude else [])
    detector = FaceDetector(DetectorConfig(factor=InferenceConfig.pyramid_factor))
    edge, model = AgeEstimator.from_pretrained(args.edge_model), AgeEstimator.from_pretrained(args.model)
    if edge.edge is not None or model.edge is not None:
        parser.error("the route is measured here from two models of one part each; a model with an edge part is one already")
    report: dict = {}
    for part, rows, ages, people in choosing_then_judging(args):
        reads = [read_scenes(rows, barred, detector, edge, model) for barred in (False, True)]
        if part == "chosen_on":
            best, flags = choose_share(reads, ages, people, args.edge_above, edge.minor_below, args.flag_per_kind,
                                       dict(zip(KINDS, args.match_route)) if args.match_route else None)
            shown = flags  # every candidate where it is chosen; then only the chosen share and 0
            routes = {above: flags[above] for above in sorted({best} | ({0.0} & set(args.edge_above)))}
        report[part] = {"photos": len(rows), **({"edge_above_chosen": best} if part == "chosen_on" else {})}
        for kind, r in zip(KINDS, reads):
            report[part][kind] = {"edge_model_alone": measures(ages, r["found"], r["edge"], r["edge"] < edge.minor_below, people),
                                  "model_alone_at_edge_flag": measures(ages, r["found"], r["model"], r["model"] < edge.minor_below, people)}
            for above, kinds in (shown if part == "chosen_on" else routes).items():
                mine = at_share(r, above)
                report[part][kind][f"edge_above_{above}"] = {
                    "route_flag": kinds[kind], "routed_to_edge_model": float(mine["leaves"][mine["found"]].mean()),
                    "routed_at_route_flag": measures(ages, mine["found"], routed(mine), flagged(mine, edge.minor_below, kinds[kind]), people)}
        print(json.dumps({part: report[part]}, indent=1), flush=True)
    print(json.dumps({"stored_test_faces": stored(data, left_out, edge, model, routes)}, indent=1))


if __name__ == "__main__":
    main()
