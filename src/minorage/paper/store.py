"""A built data set on disk and back: `manifest.csv`, one compressed face array per split and
variant (`faces/{split}_{variant}.npz`), its counts, and contact sheets to look at it.
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from minorage import config
from minorage.config import Framing
from minorage.faces.framing import framed_square
from minorage.groups import AGE_GROUPS
from minorage.paper.cleaning import label_agreement
from minorage.paper.readers import demographics

VARIANTS = ("org", "ocl")


SPLITS = ("train", "test")


MANIFEST_COLUMNS = ("id", "source", "source_path", "sha256", "phash", "age", "split", "variant", "box", "eyes")


def _read_csv(path: Path) -> list[dict]:
    """A report's rows, none when it is missing (a data set from before the report existed)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# Reading a built data set


@dataclass
class FaceSet:
    """Faces of one split: uint8 (N, 64, 64, 3) BGR, ages (N,), photo ids (N,), variants (N,)."""

    faces: np.ndarray
    ages: np.ndarray
    ids: np.ndarray
    variants: np.ndarray

    def __len__(self) -> int:
        return len(self.ages)

    def subset(self, mask: np.ndarray) -> "FaceSet":
        return FaceSet(self.faces[mask], self.ages[mask], self.ids[mask], self.variants[mask])

    def cap_per_age(self, per_age: int, seed: int = 0) -> "FaceSet":
        """At most `per_age` photos of each whole age, a seeded choice that does not depend
        on the order of the faces; a photo's Org and Ocl faces stay together (the paper's
        training sizes: N photos per age)."""
        photos = sorted(set(zip(self.ids.tolist(), np.rint(self.ages).astype(int).tolist())))
        rng = np.random.default_rng(seed)
        keys = rng.permutation(len(photos))
        kept: set = set()
        for age in {a for _, a in photos}:
            mine = sorted((k, i) for k, (i, a) in zip(keys, photos) if a == age)
            kept.update(i for _, i in mine[:per_age])
        return self.subset(np.isin(self.ids, list(kept)))


def load_faces(data_dir: Path, split: str, variant: str = "org") -> FaceSet:
    """One split's faces in one call; variant "org", "ocl" or "org+ocl" (both, twins share ids)."""
    parts = []
    for v in VARIANTS if variant == "org+ocl" else (variant,):
        if v not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; org, ocl or org+ocl")
        path = Path(data_dir) / "faces" / f"{split}_{v}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"no {split} faces at {path}: is {data_dir} a data set built by `minorage dataset build`?")
        with np.load(path) as f:
            parts.append(FaceSet(f["faces"], f["ages"].astype(np.float32), f["ids"], np.full(len(f["ids"]), v)))
    return FaceSet(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("faces", "ages", "ids", "variants")))


def photo_demographics(data_dir: Path) -> dict[str, tuple[str, str]]:
    """Photo id -> (sex, ethnicity), from a data set's manifest (see `demographics`)."""
    path = Path(data_dir) / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no manifest.csv in {data_dir}: build it with `minorage dataset build`")
    return {row["id"]: demographics(row["source"], row["source_path"]) for row in _read_csv(path)}


def source_path(row: dict) -> Path:
    """The photo a manifest row was built from: its path as recorded, or, when the data set was
    built from another folder, the same file name in `../shared`'s UTKFace folder."""
    path = Path(row["source_path"])
    return path if path.is_file() else config.utkface_dir() / path.name


def source_image(row: dict) -> np.ndarray:
    """The photo of a manifest row, BGR."""
    path = source_path(row)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"{path}: the photo of {row['id']} cannot be read")
    return image


def photo_extents(data_dir: Path, ids: np.ndarray) -> np.ndarray:
    """(N, 4) float: where each stored face's source photo lies in its frame (x0, y0, x1, y1 in
    the frame's pixels, clipped to it), for photo ids `ids`.

    Why: beyond the photo the build repeated its edge pixels, a margin no face in a real photo
    has (there it holds hair, shoulders, the room); training can fill it with other content
    (`augment.in_scene`)."""
    data_dir = Path(data_dir)
    framing = Framing.from_dict(json.loads((data_dir / "dataset.json").read_text())["config"]["framing"])
    rows = {r["id"]: r for r in _read_csv(data_dir / "manifest.csv") if r["variant"] == "org"}
    extents = {}
    for photo in sorted(set(ids.tolist())):
        with Image.open(source_path(rows[photo])) as image:  # the header only
            w, h = image.size
        left, top, right, _ = framed_square(tuple(json.loads(rows[photo]["box"])), framing.margin)
        scale = framing.size / (right - left)
        extents[photo] = np.clip(np.array([-left, -top, w - left, h - top]) * scale, 0, framing.size)
    return np.stack([extents[i] for i in ids.tolist()]).astype(np.float32)


def frame_shares_past_photo(data_dir: Path, ids: np.ndarray) -> np.ndarray:
    """(N,) float: the share of each stored face's frame that lay past its photo, where the build
    filled it from the photo's edge (`framing.filled_share`, for the stored faces)."""
    if not len(ids):
        return np.zeros(0, np.float32)
    extents = photo_extents(data_dir, ids)
    size = Framing.from_dict(json.loads((Path(data_dir) / "dataset.json").read_text())["config"]["framing"]).size
    return 1.0 - (extents[:, 2] - extents[:, 0]) * (extents[:, 3] - extents[:, 1]) / size**2


def frames_left_photo(data_dir: Path, ids: np.ndarray, above: float = 0.0) -> np.ndarray:
    """(N,) bool: whether more than `above` of each stored face's frame reached past its photo;
    a model's edge part reads these faces (`framing.frame_routed`)."""
    return frame_shares_past_photo(data_dir, ids) > above


def dataset_info(data_dir: Path) -> dict:
    """Counts per age, split and variant of a built data set, from its manifest, and the label
    agreement among the copies its cleaning found."""
    path = Path(data_dir) / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no manifest.csv in {data_dir}: build it with `minorage dataset build`")
    rows = _read_csv(path)
    counts: dict[int, Counter] = defaultdict(Counter)
    for row in rows:
        counts[int(row["age"])][f"{row['split']}_{row['variant']}"] += 1
    summary = json.loads((Path(data_dir) / "dataset.json").read_text()) if (Path(data_dir) / "dataset.json").is_file() else {}
    return {
        "folder": str(data_dir),
        "photos": len({row["id"] for row in rows}),
        "faces": len(rows),
        "sources": dict(Counter(row["source"] for row in rows if row["variant"] == "org")),
        "per_age": {age: dict(c) for age, c in sorted(counts.items())},
        "shortfall_per_age": summary.get("shortfall_per_age", {}),
        "cleaning": summary.get("cleaning", {}),
        "label_agreement": label_agreement(_read_csv(Path(data_dir) / "cleaning.csv")),
        "no_face": summary.get("no_face"),
        "framing": summary.get("config", {}).get("framing"),
    }


def write_contact_sheets(data_dir: Path, per_sheet: int = 64) -> list[Path]:
    """One PNG per age group (and adults): org and ocl faces of the training split side by side,
    labelled with their ages, for the manual inspection the paper did."""
    written = []
    train_org, train_ocl = load_faces(data_dir, "train", "org"), load_faces(data_dir, "train", "ocl")
    groups = [*AGE_GROUPS, ("26+", 26, 200)]
    for name, low, high in groups:
        index = np.flatnonzero((train_org.ages >= low) & (train_org.ages <= high))
        if not len(index):
            continue
        index = index[np.linspace(0, len(index) - 1, min(per_sheet, len(index))).astype(int)]
        tiles = []
        for i in index:
            pair = np.concatenate([train_org.faces[i], train_ocl.faces[i]], axis=1)
            tile = cv2.resize(pair, (256, 128), interpolation=cv2.INTER_NEAREST)
            cv2.putText(tile, str(int(train_org.ages[i])), (4, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 255), 2)
            tiles.append(tile)
        columns = 8
        tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
        sheet = np.concatenate([np.concatenate(tiles[r : r + columns], axis=1) for r in range(0, len(tiles), columns)], axis=0)
        path = Path(data_dir) / "contact" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), sheet)
        written.append(path)
    return written
