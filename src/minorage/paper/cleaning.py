"""Step 2 of the build: fingerprints and label cleaning.

Every photo gets the SHA-256 of its bytes and a 64-bit DCT perceptual hash of its pixels.
Copies of one photo (same bytes, or hashes within `near_duplicate_bits` whose grey thumbnails
also correlate by `copy_min_correlation`) form a group; a group whose ages disagree is dropped
whole, the others keep one photo (the paper removed images with wrong labels).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from minorage.evidence.io import ImageReadError, read_image
from minorage.groups import CHILD_LIMIT, MINOR_LIMIT
from minorage.paper.readers import Record

# ---------------------------------------------------------------------------------------------
# 2. Fingerprints and label cleaning


def grey_thumbnail(image: np.ndarray) -> np.ndarray:
    """The photo as a 32x32 grey float copy: what both copy tests below look at."""
    return cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)


def perceptual_hash(image: np.ndarray) -> int:
    """64-bit DCT hash: the signs of the 8x8 lowest frequencies of a 32x32 grey copy against
    their median. Survives re-encoding, resizing and colour changes, and re-crops of about 1 %
    of the side (on aligned faces a 2 % re-crop moves it by up to 6 bits)."""
    low = cv2.dct(grey_thumbnail(image))[:8, :8].ravel()
    bits = low > np.median(low[1:])
    bits[0] = False  # the DC term says only how bright the photo is
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


@dataclass(frozen=True)
class Photo:
    """A record with its fingerprints."""

    record: Record
    sha256: str
    phash: int


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit differences between uint64 hashes (broadcasting)."""
    x = np.bitwise_xor(a, b)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        self.parent[self.find(i)] = self.find(j)


def thumbnail_correlation(a: Path, b: Path, max_pixels: int) -> float:
    """Pearson correlation of two photos' grey thumbnails (-1 when either cannot be read again).

    Why: on aligned faces the 64-bit hash alone joins different photos. Building from UTKFace's
    pool, the check looks at 337 pairs of files within 4 bits (`copy_check.csv`); the 19 below 0.9
    (0.58-0.89) were two different photos in every case (looked at on 2026-11-29, a few of one
    person), those above (0.91 and up) copies re-encoded, resized, recoloured or watermarked."""
    try:
        x, y = (grey_thumbnail(read_image(p, max_pixels)).ravel() for p in (a, b))
    except (ImageReadError, OSError):
        return -1.0
    x, y = x - x.mean(), y - y.mean()
    return float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-6))


def _near_pairs(photos: list[Photo], max_bits: int) -> set[tuple[int, int]]:
    """Index pairs (i < j) whose perceptual hashes are at most `max_bits` apart."""
    hashes = np.array([p.phash for p in photos], dtype=np.uint64)
    blocks = hashes.astype(">u8").view(np.uint8).reshape(-1, 8)
    pairs: set[tuple[int, int]] = set()
    for b in range(8):
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, value in enumerate(blocks[:, b]):
            buckets[int(value)].append(i)
        for members in buckets.values():
            if len(members) < 2:
                continue
            m = np.array(members)
            close = hamming(hashes[m][:, None], hashes[m][None, :]) <= max_bits
            pairs.update((int(m[a]), int(m[c])) for a, c in zip(*np.nonzero(np.triu(close, 1))))
    return pairs


SamePicture = Callable[[Photo, Photo], bool]  # the second look at two photos whose hashes are close


def duplicate_groups(photos: list[Photo], max_bits: int, same_picture: SamePicture | None = None) -> list[list[int]]:
    """Indices of photos that are copies of each other: the same bytes, or perceptual hashes
    at most `max_bits` apart (found through 8 one-byte blocks: two hashes within 7 bits share
    at least one block exactly) that `same_picture` confirms (none: the hash alone decides, as
    in the builds of minorage 0.1)."""
    if max_bits > 7:
        raise ValueError("near-duplicate search supports at most 7 differing bits")
    uf = _UnionFind(len(photos))
    first_with: dict[str, int] = {}
    for i, photo in enumerate(photos):
        uf.union(i, first_with.setdefault(photo.sha256, i))
    for i, j in sorted(_near_pairs(photos, max_bits)):
        if uf.find(i) == uf.find(j):
            continue
        if same_picture is None or same_picture(photos[i], photos[j]):
            uf.union(i, j)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(photos)):
        groups[uf.find(i)].append(i)
    return list(groups.values())


CONFLICT = "conflicting ages"  # the cleaning report's reason for a group of copies labelled differently


def clean_labels(photos: list[Photo], max_bits: int, same_picture: SamePicture | None = None) -> tuple[list[Photo], list[dict]]:
    """Drop groups of copies whose ages disagree, keep one photo of every other group.
    Returns the kept photos and one report row per dropped photo."""
    kept, dropped = [], []
    for group in duplicate_groups(photos, max_bits, same_picture):
        members = sorted((photos[i] for i in group), key=lambda p: (p.record.source, str(p.record.path)))
        ages = sorted({p.record.age for p in members})
        if len(ages) > 1:
            detail = f" {ages} among {len(members)} copies"
            dropped += [_dropped(p, CONFLICT, members[0], detail) for p in members]
            continue
        kept.append(members[0])
        dropped += [_dropped(p, _copy_kind(p, members[0]), members[0]) for p in members[1:]]
    kept.sort(key=lambda p: (p.record.source, str(p.record.path)))
    return kept, dropped


def label_agreement(dropped: list[dict]) -> dict[str, int | float]:
    """How often the source gave one photo two ages, from the cleaning report (its rows, in
    memory or read back from cleaning.csv): every group of copies, those whose ages disagree and
    by how much, and how many copies were labelled both a minor and an adult, overall and where
    a copy was labelled 16 or 17. Why: copies are the only photos labelled twice, so this is the
    one measure of label noise that needs no model; the minor flag cannot beat its labels."""
    groups: dict[str, list[tuple[bool, int]]] = defaultdict(list)
    for row in dropped:
        if row.get("group_of"):  # unreadable files belong to no group
            groups[row["group_of"]].append((row["reason"].startswith(CONFLICT), int(row["age"])))
    conflicts = [sorted(age for _, age in rows) for rows in groups.values() if rows[0][0]]
    near_line = [ages for ages in conflicts if any(CHILD_LIMIT <= a < MINOR_LIMIT for a in ages)]
    near_line_agreeing = sum(1 for rows in groups.values() if not rows[0][0] and CHILD_LIMIT <= rows[0][1] < MINOR_LIMIT)
    return {
        "groups_of_copies": len(groups),
        "groups_with_conflicting_ages": len(conflicts),
        "median_age_span_of_conflicts": float(np.median([a[-1] - a[0] for a in conflicts])) if conflicts else 0.0,
        "groups_labelled_minor_and_adult": sum(1 for a in conflicts if a[0] < MINOR_LIMIT <= a[-1]),
        "groups_with_a_copy_labelled_16_17": len(near_line) + near_line_agreeing,
        "of_which_also_labelled_adult": sum(1 for a in near_line if a[-1] >= MINOR_LIMIT),
    }


@dataclass
class ThumbnailCheck:
    """The second look at photos with close hashes: copies only if their thumbnails correlate by
    `min_correlation`. It keeps every pair it looked at, for `copy_check.csv`: what the hash alone
    would have joined is there to inspect."""

    min_correlation: float
    max_pixels: int
    looked_at: list[dict] = field(default_factory=list)

    def __call__(self, a: Photo, b: Photo) -> bool:
        correlation = thumbnail_correlation(a.record.path, b.record.path, self.max_pixels)
        same = correlation >= self.min_correlation
        self.looked_at.append({"path_a": str(a.record.path), "age_a": a.record.age, "path_b": str(b.record.path), "age_b": b.record.age,
                               "hash_bits_apart": bin(a.phash ^ b.phash).count("1"), "correlation": round(correlation, 4),
                               "copies": "yes" if same else "no"})
        return same


def thumbnail_check(min_correlation: float, max_pixels: int) -> ThumbnailCheck | None:
    """The thumbnail test at `min_correlation`, or none at 0."""
    return ThumbnailCheck(min_correlation, max_pixels) if min_correlation > 0 else None


def _copy_kind(photo: Photo, keeper: Photo) -> str:
    return "exact duplicate" if photo.sha256 == keeper.sha256 else "near duplicate"


def _dropped(photo: Photo, kind: str, keeper: Photo, detail: str = "") -> dict:
    return {"source": photo.record.source, "source_path": str(photo.record.path), "sha256": photo.sha256,
            "age": photo.record.age, "kind": kind, "reason": kind + detail, "group_of": str(keeper.record.path)}
