"""A model on a data set's test split, normal and eye-barred faces apart (the paper's §4)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from minorage import groups
from minorage.config import DetectorConfig
from minorage.faces.detection import Face, FaceDetector
from minorage.faces.framing import template_chip
from minorage.faces.occlusion import occlude
from minorage.faces.wild import LUMA_BGR, jpeg_round_trip, sepia
from minorage.model.estimator import AgeEstimator
from minorage.paper import metrics
from minorage.paper.readers import UNKNOWN
from minorage.paper.store import FaceSet, frames_left_photo, load_faces, photo_demographics, source_image

VARIANT_LABELS = {"org": "Org (normal faces)", "ocl": "Ocl (eye-barred faces)"}


def grayscale(faces: np.ndarray) -> np.ndarray:
    """BGR faces as a grayscale photo gives them (three equal channels): seized photos are
    often black and white, and a model must not read colour it cannot have."""
    gray = np.rint(faces.astype(np.float32) @ LUMA_BGR).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def low_resolution(faces: np.ndarray, side: int = 24) -> np.ndarray:
    """Each face as a `side`-pixel face enlarged again: a small face in a large photo, or a
    thumbnail, holds no more than this."""
    size = faces.shape[1]
    return np.stack([cv2.resize(cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA), (size, size), interpolation=cv2.INTER_LINEAR)
                     for f in faces])


def heavy_jpeg(faces: np.ndarray, quality: int = 15) -> np.ndarray:
    """Each face through JPEG at this quality and back, as a photo shared again and again is."""
    return np.stack([jpeg_round_trip(f, quality) for f in faces])


#: how the test faces may be shown to the model: as they are, or as a seized photo might hold them
#: (the CLI offers `config.EVALUATION_LOOKS`, these names)
LOOKS: dict[str, Callable[[np.ndarray], np.ndarray] | None] = {
    "as-is": None, "grayscale": grayscale, "sepia": sepia, "low-resolution": low_resolution, "jpeg": heavy_jpeg}
FAIRNESS_KEYS = ("by_sex", "by_ethnicity")  # in the order of `datasets.demographics`
AGE_MIX_NOTE = ("All minors' ages: a group's minors taken year by year, each year weighted by its share of all the "
                "minors in the table, so that groups whose children are of different ages compare.")


def evaluate_model(estimator: AgeEstimator, data_dir: Path, variants: tuple[str, ...] = ("org", "ocl"), split: str = "test",
                   per_age: int = 0, resamples: int = 0, exclude: Iterable[str] = (), look: str = "as-is") -> dict[str, dict]:
    """Every measure of `metrics.evaluate` per variant of the split, with the model's flag (and,
    given `resamples`, the bootstrap intervals of the headline measures); `look` one of `LOOKS`.
    A model with an edge part reads the stored faces whose frame left their photo with that part,
    each face flagged by its own part's flag for its kind (eye-barred for "ocl"); a model with a
    second opinion has it read the normal faces (`second_opinions`; the barred ones too where it
    has a barred part) and blend, raise and lift as the model says."""
    change = LOOKS[look]

    def read(faces: FaceSet, variant: str) -> tuple[np.ndarray, metrics.Below, dict]:
        shown = faces.faces if change is None else change(faces.faces)
        barred = variant == "ocl"
        if estimator.edge is None and estimator.opinion is None:
            return estimator.predict(shown), estimator.flag(barred), {}
        filled = frames_left_photo(data_dir, faces.ids, estimator.framings.edge_above) if estimator.edge else np.zeros(len(faces), bool)
        reads = estimator.opinion is not None and (not barred or "barred" in estimator.card.second_opinion)
        opinions = second_opinions(estimator, data_dir, faces.ids, change, barred) if reads else None
        ages = estimator.blended(estimator.predict(shown, edge_filled=filled), barred, opinions)
        below = estimator.flags(filled, barred, opinions)
        noted = {"routed_to_edge": float(filled.mean()) if len(filled) else 0.0,
                 "minor_below": estimator.flag(barred), "edge_minor_below": estimator.edge.flag(barred)} if estimator.edge else {}
        if opinions is not None:
            noted["second_opinion"] = {"read": float(np.isfinite(opinions).mean()) if len(opinions) else 0.0,
                                       "flags_lifted": float(np.mean(estimator.lifted(ages, filled, barred, opinions)))}
        return ages, below, noted

    return evaluate_reader(read, data_dir, variants, split, per_age, resamples, exclude)


def second_opinions(estimator: AgeEstimator, data_dir: Path, ids: np.ndarray,
                    change: Callable[[np.ndarray], np.ndarray] | None = None, barred: bool = False) -> np.ndarray:
    """The second opinion's age of each stored face, on the chip aligned from the eye and nose
    points O-Net places in the stored box (the build kept no nose point), given the same look;
    `barred`: the photo eye-barred first, as the data set bars its faces."""
    rows = {r["id"]: r for r in csv.DictReader((Path(data_dir) / "manifest.csv").open()) if r["variant"] == "org"}
    detector, size = FaceDetector(DetectorConfig()), estimator.opinion.net.cfg.image_size
    chips = []
    for photo in tqdm(ids.tolist(), desc="second opinion", unit="photo", leave=False):
        image, box = source_image(rows[photo]), np.array(json.loads(rows[photo]["box"]))
        points = detector.points_at(image, box)[0]
        if barred:
            image, _ = occlude(image, Face(tuple(box), 1.0, np.array(json.loads(rows[photo]["eyes"]), float)))
        chips.append(template_chip(image, points, size))
    if not chips:
        return np.zeros(0)
    chips = np.stack(chips)
    return estimator.opinion.predict(chips if change is None else change(chips)).astype(float)


def evaluate_predictor(predict: Callable[[np.ndarray], np.ndarray], data_dir: Path, variants: tuple[str, ...] = ("org", "ocl"),
                       split: str = "test", per_age: int = 0, minor_below: float = groups.MINOR_BELOW,
                       resamples: int = 0, exclude: Iterable[str] = ()) -> dict[str, dict]:
    """`evaluate_reader` of any faces-to-ages function, every face flagged below `minor_below`."""
    return evaluate_reader(lambda faces, _: (predict(faces.faces), minor_below, {}), data_dir, variants, split, per_age,
                           resamples, exclude)


Reader = Callable[[FaceSet, str], tuple[np.ndarray, metrics.Below, dict]]  # faces, variant -> ages, flags, what else to record


def evaluate_reader(read: Reader, data_dir: Path, variants: tuple[str, ...] = ("org", "ocl"), split: str = "test", per_age: int = 0,
                    resamples: int = 0, exclude: Iterable[str] = ()) -> dict[str, dict]:
    """`metrics.evaluate` per variant of the faces `read` ages and flags (at most `per_age` photos
    of each age when set: the paper's test sets grow with the training size), leaving out the
    photos `exclude` names (ids or file names): those a model saw in another data set."""
    results = {}
    people = photo_demographics(data_dir)
    left_out, _ = photo_ids(data_dir, exclude)
    for variant in variants:
        faces = load_faces(data_dir, split, variant)
        if left_out:
            faces = faces.subset(~np.isin(faces.ids, list(left_out)))
        if per_age:
            faces = faces.cap_per_age(per_age)
        ages, below, noted = read(faces, variant)
        results[variant] = {**metrics.evaluate(faces.ages, ages, below), **noted}
        if resamples:
            results[variant]["intervals"] = metrics.bootstrap_intervals(faces.ages, ages, below, resamples)
        for index, key in enumerate(FAIRNESS_KEYS):
            groups = np.array([people.get(i, (UNKNOWN, UNKNOWN))[index] for i in faces.ids.tolist()])
            results[variant][key] = metrics.by_group(faces.ages, ages, groups, below, resamples)
    return results


def photo_ids(data_dir: Path, names: Iterable[str]) -> tuple[set[str], list[str]]:
    """The data set's photo ids for a list of ids or source file names, and the names it does
    not hold (a photo its cleaning dropped as a copy, or one of another data set)."""
    wanted = set(names)
    if not wanted:
        return set(), []
    rows = list(csv.DictReader((Path(data_dir) / "manifest.csv").open()))
    found = {r["id"] for r in rows if r["id"] in wanted or Path(r["source_path"]).name in wanted}
    known = {r["id"] for r in rows} | {Path(r["source_path"]).name for r in rows}
    return found, sorted(wanted - known)


def as_markdown(results: dict[str, dict], title: str = "") -> str:
    """The results as Markdown: one column per variant, then each variant's group confusion."""
    rows = [
        ("faces", "n", "{:d}"),
        ("MAE, ages 0-25", "MAE", "{:.2f}"),
        ("MAE averaged over ages", "MAE_age_averaged", "{:.2f}"),
        *[(f"accuracy [{g}]", g, "{:.1%}") for g in groups.GROUP_NAMES],
        ("Acc (mean of the groups)", "Acc", "{:.1%}"),
        ("minor flag threshold (estimate below)", "minor_below", "{:.1f}"),
        ("  faces read by the edge part (frame left the photo)", "routed_to_edge", "{:.1%}"),
        ("  the edge part's flag threshold", "edge_minor_below", "{:.1f}"),
        ("  faces the eye-bar test calls barred (in scenes: they get the barred flag)", "taken_as_barred", "{:.1%}"),
        ("minors' recall (< 18 flagged)", "minor_recall", "{:.1%}"),
        ("specificity on 18-25", "specificity_18_25", "{:.1%}"),
        ("adults 26+ called minors", "adults_called_minors", "{:.1%}"),
        ("minors' recall at 85% specificity (best threshold)", "recall_at_spec85", "{:.1%}"),
        ("  that threshold", "threshold_at_spec85", "{:.1f}"),
        ("  recall on the under-16s at that threshold", "recall_at_spec85_under16", "{:.1%}"),
    ]
    variants = list(results)
    lines = [f"### {title}" if title else "", "", "| measure | " + " | ".join(VARIANT_LABELS.get(v, v) for v in variants) + " |",
             "|---|" + "---|" * len(variants)]
    for label, key, fmt in rows:
        cells = [_cell(results[v], key, fmt) for v in variants]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for v in variants:
        lines += ["", f"Group confusion, {VARIANT_LABELS.get(v, v)} (rows true, columns predicted):", "",
                  "| true \\ predicted | " + " | ".join(groups.ALL_GROUPS) + " |", "|---|" + "---|" * len(groups.ALL_GROUPS)]
        for name, row in zip(groups.ALL_GROUPS, np.asarray(results[v]["confusion"])):
            if row.sum():
                lines.append(f"| {name} | " + " | ".join(str(c) for c in row) + " |")
    lines += _by_age_table(results, "flagged_by_age", "Minors flagged at the flag threshold, by true age:", "{:.0%}")
    lines += _by_age_table(results, "estimate_by_age", "Mean estimate by true age (the bias at each age):", "{:.1f}")
    fairness = _fairness_tables(results)
    if fairness:
        fairness += ["", AGE_MIX_NOTE]
    lines += fairness
    lines += _scenes_tables(results)
    if any("intervals" in results[v] for v in variants):
        lines += ["", "In brackets: 95 % bootstrap intervals (the test faces drawn again with replacement)."]
    return "\n".join(lines).strip() + "\n"


def _by_age_table(results: dict[str, dict], key: str, title: str, fmt: str) -> list[str]:
    """One row per variant, one column per true age, of a measure kept age by age (none for
    results saved before the measure existed)."""
    ages = sorted({a for by_age in (r.get(key, {}) for r in results.values()) for a in by_age})
    if not ages:
        return []
    lines = ["", title, "", "| variant | " + " | ".join(map(str, ages)) + " |", "|---|" + "---|" * len(ages)]
    for v, result in results.items():
        values = result.get(key, {})
        lines.append(f"| {VARIANT_LABELS.get(v, v)} | " + " | ".join(fmt.format(values[a]) if a in values else "–" for a in ages) + " |")
    return lines


_FAIRNESS_COLUMNS = (("MAE averaged over ages", "MAE_age_averaged", "{:.2f}"), ("minors flagged", "minor_recall", "{:.1%}"),
                     ("minors flagged, all minors' ages", "minor_recall_age_mix", "{:.1%}"),
                     ("18-25 left unflagged", "specificity_18_25", "{:.1%}"), ("26+ called minors", "adults_called_minors", "{:.1%}"),
                     ("minors read older by (years)", "minor_bias", "{:+.2f}"),
                     ("the same, all minors' ages", "minor_bias_age_mix", "{:+.2f}"))


def _fairness_tables(results: dict[str, dict]) -> list[str]:
    """Per variant, one table by sex and one by ethnicity: each group's headline measures, with
    the faces they rest on (none for results saved before the measure existed)."""
    lines = []
    for v, result in results.items():
        for key in FAIRNESS_KEYS:
            if key not in result:
                continue
            lines += ["", f"{VARIANT_LABELS.get(v, v)}, {key.replace('_', ' ')}:", "",
                      "| group | faces (minors / 18-25 / 26+) | " + " | ".join(label for label, _, _ in _FAIRNESS_COLUMNS) + " |",
                      "|---|---|" + "---|" * len(_FAIRNESS_COLUMNS)]
            for name, measured in result[key].items():
                counts = f"{measured['n']} ({measured['n_minors']} / {measured['n_18_25']} / {measured['n_26plus']})"
                lines.append(f"| {name} | {counts} | " + " | ".join(_cell(measured, k, fmt) for _, k, fmt in _FAIRNESS_COLUMNS) + " |")
    return lines


def _scenes_tables(results: dict[str, dict]) -> list[str]:
    """For results measured in scenes (`in_scenes`): per variant, the faces the detector found and
    the minors flagged counting a missed child as unflagged, overall, per degradation and per
    group of people."""
    lines = []
    for v, result in results.items():
        scenes = result.get("scenes")
        if not scenes:
            continue
        lines += ["", f"{VARIANT_LABELS.get(v, v)}, in scenes: faces found by the detector, and minors flagged with a missed face "
                  "counted as unflagged (the age measures above are over the faces found):", "",
                  "| photos | kind | found | minors flagged, misses included | MAE, ages 0-25 found | 26+ found called minors |", "|---|---|---|---|---|---|"]
        parts = [("all", {"all": scenes}), *((key.replace("by_", ""), scenes[key]) for key in ("by_degradation", *FAIRNESS_KEYS) if key in scenes)]
        for axis, by in parts:
            for name, measured in by.items():
                label = name if axis == "all" else f"{axis}: {name}"
                cells = [_cell(measured, key, fmt) for key, fmt in (("minors_flagged_with_misses", "{:.1%}"), ("MAE", "{:.2f}"), ("adults_called_minors", "{:.1%}"))]
                lines.append(f"| {measured['photos']} | {label} | {measured['found']:.1%} | " + " | ".join(cells) + " |")
    return lines


def _cell(result: dict, key: str, fmt: str) -> str:
    """One measure, with its bootstrap interval where there is one."""
    if key not in result:
        return "–"
    low_high = result.get("intervals", {}).get(key)
    return fmt.format(result[key]) + (f" ({fmt.format(low_high[0])}–{fmt.format(low_high[1])})" if low_high else "")
