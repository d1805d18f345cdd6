"""Data sets: readers in their real layouts, label cleaning, balance, split and storage."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from minorage import config
from minorage.paper.build import _Cache, _config_key, build_dataset, prepare_faces
from minorage.paper.cleaning import (
    Photo,
    clean_labels,
    duplicate_groups,
    label_agreement,
    perceptual_hash,
    thumbnail_check,
    thumbnail_correlation,
)
from minorage.paper.readers import (
    Record,
    read_agedb,
    read_appa_real,
    read_csv_folder,
    read_fgnet,
    read_imdb_wiki,
    read_source,
    read_utkface,
)
from minorage.paper.store import dataset_info, load_faces

from .conftest import utkface_age

# --- readers on miniatures laid out in each data set's published format ----------------------


def _put(path: Path, face: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(face, path)


def test_utkface_reader_on_the_real_folder(utkface_files):
    read = read_utkface(utkface_files[0].parent)
    assert len(read.records) == len(utkface_files) == 21723  # the count ../shared/data/README.md gives
    assert all(r.age == utkface_age(r.path) for r in read.records[:500])


def test_utkface_reader_reports_malformed_names(tmp_path, some_faces):
    _put(tmp_path / "23_1_2_20170116174525125.jpg.chip.jpg", some_faces[0])
    _put(tmp_path / "61_1_20170109142408075.jpg.chip.jpg", some_faces[1])  # real UTKFace: no race
    _put(tmp_path / "55_0_0_20170116232725357jpg.chip.jpg", some_faces[2])  # real UTKFace: no dot
    _put(tmp_path / "portrait_1_2.jpg", some_faces[3])
    read = read_utkface(tmp_path)
    assert sorted(r.age for r in read.records) == [23, 55, 61] and len(read.skipped) == 1


def test_appa_real_reader(tmp_path, some_faces):
    root = tmp_path / "appa-real-release"
    for split, names in (("train", ["000000.jpg", "000001.jpg"]), ("valid", ["005613.jpg"])):
        with open(root / f"gt_avg_{split}.csv", "w", newline="") if (root.mkdir(exist_ok=True) or True) else None as f:
            writer = csv.writer(f)
            writer.writerow(["file_name", "num_ratings", "apparent_age_avg", "apparent_age_std", "real_age"])
            for k, name in enumerate(names):
                _put(root / split / name, some_faces[k])
                writer.writerow([name, 38, 17.6 + k, 3.2, 15 + k])
    real = read_appa_real(root)
    assert sorted(r.age for r in real.records) == [15, 15, 16]
    apparent = read_appa_real(root, apparent=True)
    assert sorted(r.age for r in apparent.records) == [18, 18, 19]


def test_agedb_reader(tmp_path, some_faces):
    _put(tmp_path / "0_MariaCallas_35_f.jpg", some_faces[0])
    _put(tmp_path / "16107_RobertDeNiro_19_m.jpg", some_faces[1])
    _put(tmp_path / "notes.jpg", some_faces[2])
    read = read_agedb(tmp_path)
    assert sorted(r.age for r in read.records) == [19, 35] and len(read.skipped) == 1


def test_fgnet_reader(tmp_path, some_faces):
    _put(tmp_path / "images" / "001A02.JPG", some_faces[0])
    _put(tmp_path / "images" / "001A43a.JPG", some_faces[1])
    _put(tmp_path / "images" / "082A16.JPG", some_faces[2])
    read = read_fgnet(tmp_path)
    assert sorted(r.age for r in read.records) == [2, 16, 43]


def _datenum(year: int, month: int, day: int) -> float:
    from datetime import date

    return date(year, month, day).toordinal() + 366.0


def test_imdb_wiki_reader(tmp_path, some_faces):
    from scipy.io import savemat

    paths = ["01/nm0000001_rm1_1990_2005.jpg", "02/nm0000002_rm2_1980_2000.jpg", "03/nm3_rm3_1999_2010.jpg", "04/nm4_rm4_2001_2012.jpg"]
    for k, rel in enumerate(paths):
        _put(tmp_path / rel, some_faces[k])
    table = {
        "dob": np.array([[_datenum(1990, 3, 1), _datenum(1980, 8, 1), _datenum(1999, 1, 1), _datenum(2001, 1, 1)]]),
        "photo_taken": np.array([[2005, 2000, 2010, 2012]]),
        "full_path": np.array([[np.array([p]) for p in paths]], dtype=object),
        "face_score": np.array([[3.5, 2.0, -np.inf, 4.0]]),
        "second_face_score": np.array([[np.nan, np.nan, np.nan, 1.5]]),
    }
    savemat(tmp_path / "imdb.mat", {"imdb": table})
    read = read_imdb_wiki(tmp_path, "imdb")
    assert sorted(r.age for r in read.records) == [15, 20]
    reasons = sorted(why for _, why in read.skipped)
    assert reasons[0] == "a second face" and "face score" in reasons[1]


def test_csv_reader(tmp_path, some_faces):
    _put(tmp_path / "a" / "x.jpg", some_faces[0])
    _put(tmp_path / "y.png", some_faces[1])
    (tmp_path / "labels.csv").write_text("path,age\na/x.jpg,7\ny.png,12.4\nmissing.jpg,3\nbad.jpg,?\n")
    read = read_csv_folder(tmp_path)
    assert sorted(r.age for r in read.records) == [7, 12] and len(read.skipped) == 2


def test_withdrawn_and_unknown_sources_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="withdrawn"):
        read_source("dif", tmp_path)
    with pytest.raises(ValueError, match="unknown source"):
        read_source("celeb", tmp_path)
    with pytest.raises(FileNotFoundError, match="appa-real"):
        read_source("appa-real", tmp_path / "nowhere")


# --- cleaning -----------------------------------------------------------------------------------


def _photo(path: Path, age: int, data: bytes | None = None, image: np.ndarray | None = None) -> Photo:
    import hashlib

    data = data if data is not None else path.read_bytes()
    image = image if image is not None else cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return Photo(Record("utkface", path, age), hashlib.sha256(data).hexdigest(), perceptual_hash(image))


def test_near_duplicates_survive_reencoding_and_recropping(some_faces):
    image = cv2.imread(str(some_faces[3]))
    reencoded = cv2.imdecode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 60])[1], cv2.IMREAD_COLOR)
    recropped = cv2.resize(image[1:-1, 1:-1], (200, 200))
    original = perceptual_hash(image)
    for copy in (reencoded, recropped):
        assert bin(original ^ perceptual_hash(copy)).count("1") <= 4
    others = [perceptual_hash(cv2.imread(str(f))) for f in some_faces[4:12]]
    assert all(bin(original ^ other).count("1") > 4 for other in others)


def test_the_thumbnail_check_keeps_different_faces_with_close_hashes_apart(tmp_path, utkface_files):
    """Two different real UTKFace photos whose hashes are 4 bits apart, and a re-encoded copy of
    the first under another age: the hash alone groups all three; with the thumbnail check only
    the copy joins its original, and the two differently labelled copies are dropped."""
    first, other = (config.utkface_dir() / name for name in ("26_0_0_20170112205800959.jpg.chip.jpg", "42_0_0_20170117185635954.jpg.chip.jpg"))
    copy = tmp_path / "30_0_0_copy.jpg"
    copy.write_bytes(cv2.imencode(".jpg", cv2.imread(str(first)), [cv2.IMWRITE_JPEG_QUALITY, 70])[1].tobytes())
    photos = [_photo(first, 26), _photo(other, 42), _photo(copy, 30)]
    assert bin(photos[0].phash ^ photos[1].phash).count("1") <= 4
    assert thumbnail_correlation(first, other, 10**8) < 0.9 <= thumbnail_correlation(first, copy, 10**8)
    assert sorted(map(sorted, duplicate_groups(photos, 4))) == [[0, 1, 2]]
    assert sorted(map(sorted, duplicate_groups(photos, 4, thumbnail_check(0.9, 10**8)))) == [[0, 2], [1]]
    check = thumbnail_check(0.9, 10**8)
    kept, dropped = clean_labels(photos, 4, check)
    assert [p.record.age for p in kept] == [42] and sorted(d["age"] for d in dropped) == [26, 30]
    assert sorted((r["age_a"], r["age_b"], r["copies"]) for r in check.looked_at) == [(26, 30, "yes"), (26, 42, "no"), (42, 30, "no")]
    assert thumbnail_check(0, 10**8) is None


def test_cleaning_drops_conflicts_and_keeps_one_copy(tmp_path, some_faces):
    a, b, c = some_faces[0], some_faces[1], some_faces[2]
    photos = [
        _photo(a, 10), _photo(tmp_path / "a_copy.jpg", 10, a.read_bytes()),  # exact copy, same age
        _photo(b, 20), _photo(tmp_path / "b_copy.jpg", 21, b.read_bytes()),  # exact copy, other age
        _photo(c, 30),
    ]
    image = cv2.imread(str(c))
    reencoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 70])[1].tobytes()
    photos.append(_photo(tmp_path / "c_near.jpg", 31, reencoded))  # near copy, other age
    assert sorted(len(g) for g in duplicate_groups(photos, 4)) == [2, 2, 2]
    kept, dropped = clean_labels(photos, 4)
    assert [p.sha256 for p in kept] == [photos[0].sha256]
    reasons = sorted(d["reason"].split(" [")[0] for d in dropped)
    assert reasons == ["conflicting ages"] * 4 + ["exact duplicate"]


def test_label_agreement_counts_the_copies_labelled_twice():
    """Three groups of copies: ages 16 and 19 (minor and adult, 3 years apart), 10 and 11, and
    two copies both 17 (agreeing; only the dropped copy is in the report); an unreadable file
    belongs to no group."""
    rows = [
        {"reason": "conflicting ages [16, 19] among 2 copies", "age": "16", "group_of": "a"},
        {"reason": "conflicting ages [16, 19] among 2 copies", "age": "19", "group_of": "a"},
        {"reason": "conflicting ages [10, 11] among 2 copies", "age": "10", "group_of": "b"},
        {"reason": "conflicting ages [10, 11] among 2 copies", "age": "11", "group_of": "b"},
        {"reason": "exact duplicate", "age": "17", "group_of": "c"},
        {"reason": "unreadable: truncated", "age": "5", "group_of": ""},
    ]
    assert label_agreement(rows) == {
        "groups_of_copies": 3, "groups_with_conflicting_ages": 2, "median_age_span_of_conflicts": 2.0,
        "groups_labelled_minor_and_adult": 1, "groups_with_a_copy_labelled_16_17": 2, "of_which_also_labelled_adult": 1,
    }
    assert label_agreement([])["groups_of_copies"] == 0


# --- the build on real UTKFace photos -------------------------------------------------------


@pytest.fixture(scope="module")
def built(small_dataset):
    return small_dataset


def _manifest(out: Path) -> list[dict]:
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_no_photo_on_both_sides_of_the_split(built):
    _, out, _, _ = built
    rows = _manifest(out)
    sides: dict[str, set] = {}
    for row in rows:
        sides.setdefault(row["sha256"], set()).add(row["split"])
    assert all(len(s) == 1 for s in sides.values())
    train = [int(r["phash"], 16) for r in rows if r["split"] == "train" and r["variant"] == "org"]
    test = [int(r["phash"], 16) for r in rows if r["split"] == "test" and r["variant"] == "org"]
    assert min(bin(a ^ b).count("1") for a in train for b in test) > 4
    # the twin of every face is on its side, with the same id
    for split in ("train", "test"):
        org, ocl = load_faces(out, split, "org"), load_faces(out, split, "ocl")
        assert np.array_equal(org.ids, ocl.ids) and len(org) > 0


@pytest.mark.slow
def test_conflicting_copies_are_gone(built):
    _, out, summary, victim = built
    rows = _manifest(out)
    assert victim.name not in {Path(r["source_path"]).name for r in rows}
    with open(out / "cleaning.csv", newline="") as f:
        dropped = list(csv.DictReader(f))
    assert sum(victim.name[3:] in d["source_path"] for d in dropped) == 2
    agreement = summary["label_agreement"]
    assert agreement["groups_with_conflicting_ages"] >= 1
    assert agreement["groups_of_copies"] >= agreement["groups_with_conflicting_ages"]
    assert dataset_info(out)["label_agreement"] == agreement  # read back from cleaning.csv


@pytest.mark.slow
def test_counts_per_age_never_above_n(built):
    cfg, out, summary, _ = built
    info = dataset_info(out)
    for age, counts in info["per_age"].items():
        photos = counts.get("train_org", 0) + counts.get("test_org", 0)
        assert photos <= (cfg.per_age if age <= 25 else cfg.adults_per_age)
    assert summary["shortfall_per_age"]  # 500 photos cannot give 12 of every age


@pytest.mark.slow
def test_faces_are_framed_and_barred(built):
    _, out, _, _ = built
    org, ocl = load_faces(out, "train", "org"), load_faces(out, "train", "ocl")
    assert org.faces.shape[1:] == (64, 64, 3) and org.faces.dtype == np.uint8
    black_org = (org.faces.max(axis=3) == 0).mean()
    black_ocl = (ocl.faces.max(axis=3) == 0).mean()
    assert black_ocl > black_org + 0.05  # the bar is there
    both = load_faces(out, "train", "org+ocl")
    assert len(both) == 2 * len(org) and set(both.variants) == {"org", "ocl"}
    assert sorted(p.name for p in (out / "contact").glob("*.png"))


@pytest.mark.slow
def test_same_seed_same_manifest_and_resume(built, tmp_path):
    cfg, out, _, _ = built
    again = tmp_path / "again"
    shutil.copytree(out / "cache", again / "cache")  # an interrupted build resumes from its cache
    build_dataset(cfg, again, progress=False)
    assert (again / "manifest.csv").read_text() == (out / "manifest.csv").read_text()
    summary = json.loads((again / "dataset.json").read_text())
    assert summary["faces"] == json.loads((out / "dataset.json").read_text())["faces"]


@pytest.mark.slow
def test_two_face_workers_build_the_same_data_set(built, tmp_path):
    """Faces prepared by two processes of one thread each are the very faces one process makes."""
    cfg, out, _, _ = built
    parallel = tmp_path / "parallel"
    build_dataset(cfg, parallel, progress=False, workers=2)
    assert (parallel / "manifest.csv").read_text() == (out / "manifest.csv").read_text()
    for split in ("train", "test"):
        for variant in ("org", "ocl"):
            assert np.array_equal(load_faces(parallel, split, variant).faces, load_faces(out, split, variant).faces)


@pytest.mark.slow
def test_faces_resumed_from_the_cache_share_their_chunks_arrays(built):
    """A resumed build reads each cached chunk's arrays once: its faces are views into one array
    per chunk, not each a view into a whole chunk of its own (which took 24 GB resuming the full
    UTKFace build, in minorage 0.1)."""
    cfg, out, _, _ = built
    cache = _Cache(out, _config_key(cfg))
    faces = [f for f in prepare_faces([], cfg, cache, progress=False).values() if f is not None]
    chunks = len(list(cache.folder.glob("faces_*.npz")))
    assert len(faces) > chunks >= 1
    assert len({id(f.org.base) for f in faces}) == chunks and len({id(f.ocl.base) for f in faces}) == chunks


@pytest.mark.slow
def test_cleaning_selection_and_split_on_the_whole_real_folder(tmp_path, utkface_files):
    """All 21,723 UTKFace photos: after cleaning no two photos are copies (bytes or hash), no
    conflicting group survives, the split never separates copies, counts stay within N."""
    from minorage.paper.build import _Cache, assign_splits, fingerprint, select_balanced

    records = read_utkface(utkface_files[0].parent).records
    photos, unreadable = fingerprint(records, _Cache(tmp_path, "k"), 10**8, progress=False)
    assert len(photos) == 21723 and not unreadable
    kept, dropped = clean_labels(photos, 4)
    assert all(len(group) == 1 for group in duplicate_groups(kept, 4))  # no copies left at all
    conflicted = {d["source_path"] for d in dropped if d["reason"].startswith("conflicting")}
    assert len(conflicted) > 100 and not conflicted & {str(p.record.path) for p in kept}
    chosen, shortfall = select_balanced(kept, range(0, 26), 100, seed=0)
    counts = {}
    for p in chosen:
        counts[p.record.age] = counts.get(p.record.age, 0) + 1
    assert max(counts.values()) <= 100 and shortfall[0] == 100 and 11 in shortfall
    split = assign_splits(chosen, 0.2, seed=0)
    assert split == assign_splits(list(reversed(chosen)), 0.2, seed=0)  # stable, order-free
    # every copy of a chosen photo (its dropped duplicates) would land on the same side: they
    # share the kept photo's group, and groups are never split because only one photo remains
    test_share = sum(s == "test" for s in split.values()) / len(split)
    assert 0.18 <= test_share <= 0.22
    assert select_balanced(kept, range(0, 26), 100, seed=0)[0] == chosen


def test_a_tiny_build_writes_a_store_that_reads_back_and_evaluates(tmp_path, utkface_files):
    """The whole build on 57 real photos (three per age 1-17, and of two adult ages): its manifest, face
    arrays and counts agree, each twin pair is the same photo barred, and `evaluate` measures a
    model on its test split per variant and per group of people."""
    from minorage.config import DatasetConfig
    from minorage.paper.evaluation import AGE_MIX_NOTE, as_markdown, evaluate_predictor, photo_ids

    folder = tmp_path / "utk"
    folder.mkdir()
    by_age: dict[int, list[Path]] = {}
    for f in utkface_files:
        by_age.setdefault(utkface_age(f), []).append(f)
    for age in [*range(1, 18), 30, 40]:
        for f in by_age[age][:3]:
            (folder / f.name).symlink_to(f)
    out = tmp_path / "ds"
    summary = build_dataset(DatasetConfig(sources=(("utkface", str(folder)),), per_age=3, adults_per_age=3, adult_max_age=40), out, progress=False)
    info = dataset_info(out)
    assert info["photos"] == summary["selected"] - summary["no_face"] and info["faces"] == 2 * info["photos"]
    train, test = load_faces(out, "train", "org+ocl"), load_faces(out, "test", "org+ocl")
    assert len(train) + len(test) == info["faces"] and set(train.ids).isdisjoint(test.ids)
    org, ocl = load_faces(out, "test", "org"), load_faces(out, "test", "ocl")
    assert (org.ids == ocl.ids).all() and not np.array_equal(org.faces, ocl.faces)
    results = evaluate_predictor(lambda faces: np.full(len(faces), 10.0, np.float32), out)
    assert set(results) == {"org", "ocl"} and results["org"]["n"] == len(org)
    assert {"female", "male"} >= set(results["org"]["by_sex"]) and results["org"]["minor_below"] == 17.5
    assert all(group["minor_recall_age_mix"] == 1.0 for group in results["org"]["by_sex"].values() if group["n_minors"])
    assert "minors flagged, all minors' ages" in as_markdown(results) and AGE_MIX_NOTE in as_markdown(results)
    manifest = list(csv.DictReader((out / "manifest.csv").open()))
    tested = sorted({Path(r["source_path"]).name for r in manifest if r["split"] == "test"})
    fewer = evaluate_predictor(lambda faces: np.full(len(faces), 10.0, np.float32), out, exclude=tested[:2])
    assert fewer["org"]["n"] == results["org"]["n"] - 2 and fewer["ocl"]["n"] == results["ocl"]["n"] - 2
    assert photo_ids(out, [tested[0], "no_such_photo.jpg"])[1] == ["no_such_photo.jpg"]  # named, not held: said
