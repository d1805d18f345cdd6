"""Training writes a loadable, documented checkpoint; resumes; and the evaluation command."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from minorage import AgeEstimator
from minorage.cli import main
from minorage.config import TrainConfig
from minorage.model.card import ModelCard
from minorage.model.checkpoint import load_checkpoint, save_checkpoint
from minorage.model.keras import load_pretrained_network
from minorage.faces.detector_training import FACE_FREE_TRAIN, face_free_pictures
from minorage.paper.augment import augment, in_scene, scene_patches
from minorage.paper.store import load_faces, photo_extents
from minorage.paper.training import batch_loss, boundary_loss, sample_weights, teacher_targets, train, training_faces, validation_mask


@pytest.mark.slow
def test_two_epochs_write_a_loadable_checkpoint(small_dataset, tmp_path):
    _, data, _, _ = small_dataset
    card = train(data, tmp_path / "run", TrainConfig(epochs=2, batch_size=32), progress=False)
    for name in ("model.safetensors", "model.json", "history.json", "curves.png"):
        assert (tmp_path / "run" / name).is_file()
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["architecture"]["V"] == 26 and meta["training"]["epochs_run"] == 2
    assert meta["training"]["best_epoch"] in (1, 2) and meta["metrics"]["val_mae"] > 0
    assert 0 <= meta["metrics"]["val_recall_at_spec85"] <= 1 and meta["metrics"]["val_threshold_at_spec85"] <= 25
    assert meta["data"]["dataset"] == str(data) and meta["framing"]["margin"] == 0.4
    assert card["training"]["seed"] == 0
    estimator = AgeEstimator.from_pretrained(tmp_path / "run" / "model.safetensors")
    faces = np.load(data / "faces" / "test_org.npz")["faces"][:8]
    ages = estimator.predict(faces)
    assert ages.shape == (8,) and np.all(np.isfinite(ages))


@pytest.mark.slow
def test_training_is_reproducible_and_resumes(small_dataset, tmp_path):
    _, data, _, _ = small_dataset
    cfg = TrainConfig(epochs=2, batch_size=32, augment=True, balance=True, occluders=0.3)
    train(data, tmp_path / "a", cfg, progress=False)
    train(data, tmp_path / "b", TrainConfig(**{**cfg.__dict__, "epochs": 1}), progress=False)
    # b stopped after epoch 1; run it on to 2 epochs: it resumes from its saved state
    (tmp_path / "b" / "resume.pt").replace(tmp_path / "b" / "resume_1.pt")
    saved = torch.load(tmp_path / "b" / "resume_1.pt", weights_only=True)
    saved["config"]["epochs"] = 2  # as if it had been asked for 2 from the start
    torch.save(saved, tmp_path / "b" / "resume.pt")
    train(data, tmp_path / "b", cfg, progress=False)
    history_a = json.loads((tmp_path / "a" / "history.json").read_text())
    history_b = json.loads((tmp_path / "b" / "history.json").read_text())
    assert len(history_b) == 2
    assert history_a[1]["val_mae"] == history_b[1]["val_mae"]


@pytest.mark.slow
def test_a_refit_on_every_training_photo_keeps_its_last_epoch(small_dataset, tmp_path, capsys):
    """`val_fraction` 0 fits the validation photos too: the last epoch is kept, the card has no
    validation measures, and an ensemble choice refuses such members (nothing left to choose on)."""
    _, data, _, _ = small_dataset
    held = train(data, tmp_path / "held", TrainConfig(epochs=1, batch_size=32), progress=False)
    card = train(data, tmp_path / "all", TrainConfig(epochs=2, batch_size=32, val_fraction=0.0), progress=False)
    assert card["data"]["faces_fit"] == held["data"]["faces_fit"] + held["data"]["faces_val"] and card["data"]["faces_val"] == 0
    assert card["training"]["best_epoch"] == 2 and card["metrics"] == {}
    history = json.loads((tmp_path / "all" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and all("val_mae" not in h for h in history)
    assert (tmp_path / "all" / "curves.png").is_file()
    ages = AgeEstimator.from_pretrained(tmp_path / "all" / "model.safetensors").predict(np.load(data / "faces" / "test_org.npz")["faces"][:4])
    assert np.all(np.isfinite(ages))
    assert main(["combine", str(tmp_path / "all" / "model.safetensors"), "--data", str(data),
                 "--out", str(tmp_path / "bad" / "model.safetensors")]) != 0
    assert "no validation photos" in capsys.readouterr().err
    with pytest.raises(ValueError, match="val_fraction"):
        train(data, tmp_path / "cal", TrainConfig(epochs=1, val_fraction=0.0, minor_recall=0.9), progress=False)


def test_validation_keeps_twins_together():
    ids = np.array(["a", "b", "c", "d", "e", "a", "b", "c", "d", "e"])
    mask = validation_mask(ids, 0.4, seed=1)
    assert mask.sum() == 4 and all(mask[i] == mask[i + 5] for i in range(5))


def test_balanced_sampling_weights_every_age_equally():
    ages = np.array([1, 1, 1, 2, 30, 40])
    w = sample_weights(ages, TrainConfig(balance=True, adult_target=30))
    assert w[:3].sum() == w[3] == w[4:].sum()
    heavy = sample_weights(ages, TrainConfig(balance=True, adult_target=30, adult_weight=3))
    assert heavy[4:].sum() == 3 * heavy[3] == 3 * heavy[:3].sum()


def test_people_balance_shares_each_age_among_sexes_and_the_adults_among_groups():
    """Age 5: a boy and a girl, half each. Age 10: one girl, all of it. Adults (weight 2): three
    (sex, ethnicity) groups, two thirds each, shared by their faces: 1/3 for each of the two White
    men, 2/3 for the Black man, 1/3 for each Asian woman."""
    ages = np.array([5, 5, 30, 30, 30, 30, 40, 10.0])
    people = np.array([("male", "White"), ("female", "White"), ("male", "White"), ("male", "White"), ("male", "Black"),
                       ("female", "Asian"), ("female", "Asian"), ("female", "White")])
    w = sample_weights(ages, TrainConfig(balance=True, balance_people=True, adult_target=30, adult_weight=2), people)
    np.testing.assert_allclose(w, [1 / 2, 1 / 2, 1 / 3, 1 / 3, 2 / 3, 1 / 3, 1 / 3, 1])
    # without it, as before: each age 1, the adults 2, whoever they are
    np.testing.assert_allclose(sample_weights(ages, TrainConfig(balance=True, adult_target=30, adult_weight=2), people),
                               [1 / 2, 1 / 2, 2 / 5, 2 / 5, 2 / 5, 2 / 5, 2 / 5, 1])


def test_young_ethnicities_drawn_equally_each_age_keeping_its_share():
    """Age 5: three White boys and a Black one; age 10: one of each. Scaled per ethnicity (a)
    and per age (c), the White and the Black minors each weigh 1 in all when a_Black / a_White
    = r solves 3 / (3 + r) + 1 / (1 + r) = 1, r = sqrt(3): at age 5 a White boy weighs
    1 / (3 + r) and the Black one r / (3 + r); at age 10, 1 / (1 + r) and r / (1 + r). The
    adult keeps his weight."""
    ages = np.array([5, 5, 5, 5, 10, 10, 40.0])
    people = np.array([("male", e) for e in ("White", "White", "White", "Black", "White", "Black", "White")])
    cfg = TrainConfig(balance=True, balance_people=True, young_ethnicity=True, adult_target=30)
    r = np.sqrt(3)
    np.testing.assert_allclose(sample_weights(ages, cfg, people),
                               [1 / (3 + r)] * 3 + [r / (3 + r), 1 / (1 + r), r / (1 + r), 1], rtol=1e-6)
    # without it, each age shared among its faces, whoever they are
    np.testing.assert_allclose(sample_weights(ages, replace(cfg, young_ethnicity=False), people),
                               [1 / 4] * 4 + [1 / 2, 1 / 2, 1])


@pytest.mark.slow
def test_the_validation_photos_do_not_depend_on_the_seed(small_dataset, tmp_path, capsys):
    """Models of several seeds validate on the same photos (none of them fits those), so an
    ensemble of them can be measured and calibrated there."""
    _, data, _, _ = small_dataset
    cards = [train(data, tmp_path / f"s{seed}", TrainConfig(epochs=1, batch_size=32, seed=seed), progress=False)
             for seed in (0, 1)]
    assert cards[0]["data"]["faces_val"] == cards[1]["data"]["faces_val"]
    faces = training_faces(data, TrainConfig())
    assert (validation_mask(faces.ids, 0.2, 0) == validation_mask(faces.ids, 0.2, TrainConfig(seed=1).val_seed)).all()
    # the ensemble of the two, measured on those shared validation photos, into its card
    out = tmp_path / "ens" / "model.safetensors"
    assert main(["combine", str(tmp_path / "s0" / "model.safetensors"), str(tmp_path / "s1" / "model.safetensors"),
                 "--mirror", "--data", str(data), "--out", str(out)]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["metrics"]["val_mae"] > 0 and card["data"]["dataset"] == str(data) and len(card["data"]["members"]) == 2
    other = train(data, tmp_path / "v1", TrainConfig(epochs=1, batch_size=32, val_seed=1), progress=False)
    assert other["training"]["val_seed"] == 1
    assert main(["combine", str(tmp_path / "s0" / "model.safetensors"), str(tmp_path / "v1" / "model.safetensors"),
                 "--data", str(data), "--out", str(tmp_path / "bad" / "model.safetensors")]) != 0
    assert "not validated on the same photos" in capsys.readouterr().err and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_combine_chooses_the_ensemble_best_on_validation_photos(small_dataset, tmp_path, capsys):
    """The choice scores every ensemble of up to K on the validation photos; its score is what
    the chosen ensemble, built and measured for real, gets there, and no other does better."""
    import itertools

    from minorage.model.ensemble import combine_checkpoints
    from minorage.paper.ensembles import choose_members, validate_combined

    _, data, _, _ = small_dataset
    runs = {"a": TrainConfig(epochs=1, batch_size=32), "b": TrainConfig(epochs=1, batch_size=32, seed=1),
            "c": TrainConfig(epochs=1, batch_size=32, init="scratch")}
    paths = []
    for name, cfg in runs.items():
        train(data, tmp_path / name, cfg, progress=False)
        paths.append(tmp_path / name / "model.safetensors")
    chosen, score = choose_members(paths, data, most=2, mirror=True)
    measured = {}
    for subset in [s for k in (1, 2) for s in itertools.combinations(paths, k)]:
        net, _ = combine_checkpoints(list(subset), mirror=True, name="x")
        measured[subset] = validate_combined(net, [load_checkpoint(p)[1] for p in subset], data)["val_mae_age_averaged"]
    assert score["val_mae_age_averaged"] == pytest.approx(measured[tuple(chosen)], abs=1e-3)
    assert score["val_mae_age_averaged"] <= min(measured.values()) + 1e-3
    out = tmp_path / "ens" / "model.safetensors"
    assert main(["combine", *map(str, paths), "--mirror", "--choose", "2", "--data", str(data), "--out", str(out)]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["training"]["ensemble_of"] == [str(p) for p in chosen]
    assert card["metrics"]["val_mae_age_averaged"] == pytest.approx(measured[tuple(chosen)], abs=1e-3)
    assert "chose" in capsys.readouterr().err
    assert main(["combine", *map(str, paths), "--choose", "2", "--out", str(tmp_path / "no" / "model.safetensors")]) == 2
    with pytest.raises(ValueError, match="1 or more"):
        choose_members(paths, data, most=0, mirror=True)
    assert main(["combine", *map(str, paths), "--choose", "0", "--data", str(data), "--out", str(tmp_path / "no" / "model.safetensors")]) == 2


@pytest.mark.slow
def test_an_earlier_ensemble_is_a_candidate_that_counts_its_networks(small_dataset, tmp_path):
    """A shipped ensemble can compete with new networks: it is chosen or left as a whole, its
    networks count against K, and the new card lists one entry per network."""
    from minorage.model.checkpoint import save_checkpoint
    from minorage.model.ensemble import combine_checkpoints, member_cards
    from minorage.paper.ensembles import choose_members, validate_combined

    _, data, _, _ = small_dataset
    paths = []
    for name, cfg in {"a": TrainConfig(epochs=1, batch_size=32), "b": TrainConfig(epochs=1, batch_size=32, seed=1),
                      "c": TrainConfig(epochs=1, batch_size=32, init="scratch")}.items():
        train(data, tmp_path / name, cfg, progress=False)
        paths.append(tmp_path / name / "model.safetensors")
    pair = save_checkpoint(*combine_checkpoints(paths[:2], mirror=True, name="pair"), tmp_path / "pair" / "model.safetensors")
    candidates = [pair, paths[2]]
    chosen, _ = choose_members(candidates, data, most=2, mirror=True)
    assert chosen in ([pair], [paths[2]])  # the pair and the third together are three networks
    chosen, score = choose_members(candidates, data, most=3, mirror=True)
    net, _ = combine_checkpoints(chosen, mirror=True, name="x")
    assert score["val_mae_age_averaged"] == pytest.approx(
        validate_combined(net, [load_checkpoint(p)[1] for p in chosen], data)["val_mae_age_averaged"], abs=1e-3)
    net, card = combine_checkpoints(candidates, mirror=True, name="all")
    assert len(net.members) == 3
    assert [m.training["seed"] for m in member_cards(card)] == [0, 1, 0]
    assert [m["path"] for m in card.data["members"]] == [str(p) for p in paths]
    with pytest.raises(ValueError, match="more than 1 networks"):
        choose_members([pair], data, most=1, mirror=True)


def test_training_can_start_from_one_network_of_an_ensemble():
    """The shipped default's networks have no checkpoints of their own: `init_member` picks one
    out of the ensemble to fine-tune further."""
    from minorage.model.card import packaged_model_path
    from minorage.paper.training import initial_network

    default = packaged_model_path()
    net, _ = load_checkpoint(default)
    ensemble = getattr(net, "main", net)  # of a model with an edge part, its main part's networks
    start, licence = initial_network(TrainConfig(init=str(default), init_member=1, V=ensemble.cfg.V))
    assert "SSR-Net" in licence
    for key, value in start.state_dict().items():
        assert torch.equal(value, ensemble.members[1].state_dict()[key]), key
    assert not torch.equal(start.x_stream.blocks[0][0].weight, ensemble.members[0].x_stream.blocks[0][0].weight)
    beyond = len(ensemble.members)
    with pytest.raises(ValueError, match=f"init_member {beyond}"):
        initial_network(TrainConfig(init=str(default), init_member=beyond, V=ensemble.cfg.V))


@pytest.mark.slow
def test_combine_can_move_a_fine_tune_back_toward_its_start_and_set_the_flag(small_dataset, tmp_path):
    """`combine --keep-start 0.5`: each weight halfway between the fine-tuned network's and
    the start's (the ensemble member its card names); `--minor-below` is the card's flag; a
    network that did not start from a checkpoint, or a share of 1, is refused."""
    from minorage.model.card import packaged_model_path

    _, data, _, _ = small_dataset
    default = packaged_model_path()
    net = load_checkpoint(default)[0]
    start = getattr(net, "main", net).members[1]  # of a model with an edge part, its main part's networks
    cfg = TrainConfig(init=str(default), init_member=1, V=start.cfg.V, adult_target=30, epochs=1, batch_size=32)
    train(data, tmp_path / "tuned", cfg, progress=False)
    tuned = tmp_path / "tuned" / "model.safetensors"
    out = tmp_path / "half.safetensors"
    assert main(["combine", str(tuned), "--keep-start", "0.5", "--minor-below", "18.2", "--out", str(out)]) == 0
    half, card = load_checkpoint(out)
    after = load_checkpoint(tuned)[0].state_dict()
    moved = 0
    for key, value in half.state_dict().items():  # one network, not mirrored: saved and loaded as that network
        if value.is_floating_point():
            torch.testing.assert_close(value, (after[key] + start.state_dict()[key]) / 2)
            moved += int(not torch.equal(after[key], start.state_dict()[key]))
    assert moved > 0 and card.minor_below == 18.2 and card.training["keep_start"] == 0.5
    train(data, tmp_path / "imdb", TrainConfig(epochs=1, batch_size=32), progress=False)
    assert main(["combine", str(tmp_path / "imdb" / "model.safetensors"), "--keep-start", "0.5", "--out", str(tmp_path / "x.safetensors")]) != 0
    assert main(["combine", str(tuned), "--keep-start", "1", "--out", str(tmp_path / "y.safetensors")]) != 0


@pytest.mark.slow
def test_teacher_targets_blend_the_unbarred_twins_estimate(small_dataset, tmp_path):
    """Both twins of a photo get the same blended target: the label and the teacher's estimate
    on the open-eyed face, never on the barred one."""
    _, data, _, _ = small_dataset
    train(data, tmp_path / "teacher", TrainConfig(epochs=1, batch_size=32), progress=False)
    teacher = AgeEstimator.from_pretrained(tmp_path / "teacher" / "model.safetensors")
    cfg = TrainConfig(teacher=str(tmp_path / "teacher" / "model.safetensors"), teacher_weight=0.25)
    fit = training_faces(data, cfg)
    blended = teacher_targets(fit, fit.ages, cfg)
    org = fit.variants == "org"
    seen = dict(zip(fit.ids[org], teacher.predict(fit.faces[org])))
    expected = np.array([0.75 * a + 0.25 * seen[i] for a, i in zip(fit.ages, fit.ids)])
    np.testing.assert_allclose(blended, expected, atol=1e-3)
    twins = {}
    for i, t in zip(fit.ids, blended):
        twins.setdefault(i, []).append(t)
    assert all(len(v) == 2 and abs(v[0] - v[1]) < 1e-5 for v in twins.values())
    # centred: at every target age the mean target is the label, each photo keeps its deviation
    centred = teacher_targets(fit, fit.ages, replace(cfg, teacher_centred=True))
    for age in np.unique(np.rint(fit.ages)):
        same = np.rint(fit.ages) == age
        assert np.mean(centred[same] - fit.ages[same]) == pytest.approx(0, abs=1e-3)
        np.testing.assert_allclose(centred[same] - np.mean(centred[same]), blended[same] - np.mean(blended[same]), atol=1e-3)
    # young only: adults keep their own target, every face within the range is blended as before
    with_adults = replace(cfg, adult_target=30.0, V=31, teacher_young_only=True)
    fit = training_faces(data, with_adults)
    young = fit.ages <= 25
    assert young.any() and (~young).any()
    anchored = teacher_targets(fit, np.where(young, fit.ages, 30.0).astype(np.float32), with_adults)
    assert np.all(anchored[~young] == 30.0)
    full = teacher_targets(fit, np.where(young, fit.ages, 30.0).astype(np.float32), replace(with_adults, teacher_young_only=False))
    np.testing.assert_allclose(anchored[young], full[young])
    assert np.abs(full[~young] - 30.0).max() > 0  # without it, the teacher moves adults' targets too
    # adults only: the young keep their labels, the adults are blended as without either option
    kept = teacher_targets(fit, np.where(young, fit.ages, 30.0).astype(np.float32),
                           replace(with_adults, teacher_young_only=False, teacher_adults_only=True))
    np.testing.assert_array_equal(kept[young], fit.ages[young])
    np.testing.assert_allclose(kept[~young], full[~young])
    with pytest.raises(ValueError, match="exclude each other"):
        replace(with_adults, teacher_adults_only=True)


def test_augmentation_keeps_shape_and_range():
    g = torch.Generator().manual_seed(0)
    batch = torch.rand(6, 3, 64, 64) * 255
    out = augment(batch, TrainConfig(augment=True, occluders=1.0), g)
    assert out.shape == batch.shape and out.min() >= 0 and out.max() <= 255
    assert (out == 0).float().mean() > 0.03  # the occluders



@pytest.mark.slow
def test_photo_extents_mark_where_the_build_repeated_the_photos_edge(small_dataset):
    """Beyond a stored face's extent its rows repeat one pixel (the chip's edge); within it they
    vary: the extent is where the photo ends."""
    _, data, _, _ = small_dataset
    faces = load_faces(data, "train", "org")
    extents = photo_extents(data, faces.ids)
    assert extents.shape == (len(faces), 4) and np.all(extents[:, :2] < extents[:, 2:])
    margins = 0
    for face, (x0, y0, x1, y1) in zip(faces.faces.astype(float), extents):
        left, rows = int(x0) - 1, slice(int(y0) + 2, int(y1) - 2)
        if left >= 3:  # a margin wide enough to look at
            margins += 1
            assert face[rows, :left].std(axis=1).mean() < 3  # one colour along each row
            assert face[rows, int(x0) + 2 : int(x1) - 2].std(axis=1).mean() > 5  # the photo varies
    assert margins > len(faces) // 2


def test_in_scene_fills_only_the_margin_beyond_the_photo():
    """Inside the photo's extent a face keeps its pixels; outside it shows a face-free patch;
    with a share of 0 nothing changes."""
    patches = scene_patches(face_free_pictures(FACE_FREE_TRAIN), 8, 64, seed=0)
    assert patches.shape == (8, 3, 64, 64) and patches.dtype == torch.uint8
    batch = torch.full((4, 3, 64, 64), 128.0)
    extents = torch.tensor([[10.0, 12.0, 54.0, 56.0]] * 4)
    out = in_scene(batch, extents, patches, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :, 13:55, 11:53], batch[:, :, 13:55, 11:53])
    margin = torch.ones(64, 64, dtype=torch.bool)
    margin[12:56, 10:54] = False
    assert all(any(torch.equal(out[k][:, margin], p.float()[:, margin]) for p in patches) for k in range(4))
    assert torch.equal(in_scene(batch, extents, patches, 0.0, torch.Generator().manual_seed(0)), batch)


def test_seized_looks_and_varied_occluders_keep_shape_and_range_and_change_faces(some_faces):
    """Real faces: every one changed by the seized-photo looks, grey ones left grey, the
    eye band covered by more than black; the old occluders untouched by the new option."""
    import cv2

    faces = np.stack([cv2.resize(cv2.imread(str(p)), (64, 64)) for p in some_faces[:16]])
    batch = torch.from_numpy(faces).permute(0, 3, 1, 2).float()
    out = augment(batch, TrainConfig(robust=1.0), torch.Generator().manual_seed(1))
    assert out.shape == batch.shape and out.min() >= 0 and out.max() <= 255
    assert all((out[k] - batch[k]).abs().mean() > 1 for k in range(16))
    covered = augment(batch, TrainConfig(occluders=1.0, varied_occluders=True), torch.Generator().manual_seed(2))
    changed = (covered != batch).any(dim=1)
    assert changed.float().mean() > 0.05 and ((covered == 0).all(dim=1) | ~changed).float().mean() < 1.0  # not only black
    black = augment(batch, TrainConfig(occluders=1.0), torch.Generator().manual_seed(2))
    assert torch.equal(black, augment(batch, TrainConfig(occluders=1.0), torch.Generator().manual_seed(2)))


@pytest.mark.slow
def test_evaluate_command(small_dataset, tmp_path, capsys):
    _, data, _, _ = small_dataset
    code = main(["evaluate", "--model", "imdb", "--data", str(data), "--format", "json", "--bootstrap", "50"])
    results = json.loads(capsys.readouterr().out)
    assert code == 0 and set(results) == {"org", "ocl"}
    for variant in results.values():
        assert variant["n"] > 0 and 0 <= variant["Acc"] <= 1 and variant["MAE"] > 0
        assert np.array(variant["confusion"]).sum() == variant["n"]
        low, high = variant["intervals"]["MAE"]
        assert low <= variant["MAE"] <= high
    main(["evaluate", "--model", "imdb", "--data", str(data), "--bootstrap", "0"])
    table = capsys.readouterr().out
    assert "| Acc (mean of the groups) |" in table and "bootstrap" not in table
    assert "Minors flagged at the flag threshold, by true age:" in table
    main(["evaluate", "--model", "imdb", "--data", str(data), "--format", "json", "--bootstrap", "0", "--minor-below", "20"])
    wide = json.loads(capsys.readouterr().out)
    assert all(wide[v]["minor_below"] == 20 and wide[v]["minor_recall"] >= results[v]["minor_recall"] for v in wide)
    assert all(wide[v]["flagged_by_age"][a] >= results[v]["flagged_by_age"][a] for v in wide for a in wide[v]["flagged_by_age"])
    main(["evaluate", "--model", "imdb", "--data", str(data), "--format", "json", "--bootstrap", "0", "--look", "grayscale"])
    gray = json.loads(capsys.readouterr().out)
    assert all(gray[v]["n"] == results[v]["n"] and gray[v]["MAE"] != results[v]["MAE"] for v in gray)
    # --record: the measures, per sex and ethnicity, written into a checkpoint's card, its weights untouched
    saved = save_checkpoint(load_pretrained_network("imdb"), ModelCard(name="imdb-copy", metrics={"kept": 1}), tmp_path / "copy")
    weights = saved.read_bytes()
    assert main(["evaluate", "--model", str(saved), "--data", str(data), "--format", "json", "--bootstrap", "0", "--look", "grayscale",
                 "--record", "test_grayscale"]) == 0
    assert json.loads(capsys.readouterr().out)["org"]["MAE"] == gray["org"]["MAE"]
    card = AgeEstimator.from_pretrained(saved).card
    recorded = card.metrics["test_grayscale"]
    assert card.metrics["kept"] == 1 and saved.read_bytes() == weights
    assert recorded["look"] == "grayscale" and "--record test_grayscale" in recorded["command"]
    assert recorded["org"]["MAE"] == gray["org"]["MAE"] and set(recorded["ocl"]["by_sex"]) == set(gray["ocl"]["by_sex"])
    assert main(["evaluate", "--model", "imdb", "--data", str(data), "--bootstrap", "0", "--record", "x"]) == 2
    # the record says how many photos were left out of this data set, not how many the file named
    import csv

    named = [next(r for r in csv.DictReader((data / "manifest.csv").open()) if r["split"] == "test")["id"], "not_in_this_data_set.jpg"]
    (tmp_path / "exclude.txt").write_text("\n".join(named) + "\n")
    assert main(["evaluate", "--model", str(saved), "--data", str(data), "--format", "json", "--bootstrap", "0",
                 "--exclude", str(tmp_path / "exclude.txt"), "--record", "test_less_one"]) == 0
    assert AgeEstimator.from_pretrained(saved).card.metrics["test_less_one"]["left_out"] == 1


def test_grayscale_look_is_the_photo_in_black_and_white():
    """The grayscale look gives each face OpenCV's luma in all three channels."""
    import cv2

    from minorage.paper.evaluation import grayscale

    faces = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    gray = grayscale(faces)
    expected = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in faces])
    assert gray.shape == faces.shape and np.all(gray[..., 0] == gray[..., 2])
    assert np.abs(gray[..., 1].astype(int) - expected).max() <= 1



def test_grayscale_training_shows_every_face_as_evaluate_grays_it(some_faces):
    """`grayscale` training: every real face leaves augmentation in black and white (after the
    colour changes, which would otherwise tint it), and without augmentation exactly as
    `evaluate --look grayscale` shows it."""
    import cv2

    from minorage.paper.evaluation import grayscale

    faces = np.stack([cv2.resize(cv2.imread(str(f)), (64, 64)) for f in some_faces[:8]])
    batch = torch.from_numpy(faces).permute(0, 3, 1, 2).float()
    shown = augment(batch, TrainConfig(augment=True, grayscale=True, occluders=0.5, varied_occluders=True), torch.Generator().manual_seed(1))
    assert torch.equal(shown[:, 0], shown[:, 1]) and torch.equal(shown[:, 1], shown[:, 2])
    assert not torch.equal(augment(batch, TrainConfig(augment=True), torch.Generator().manual_seed(1))[:, 0], shown[:, 0])
    plain = augment(batch, TrainConfig(grayscale=True), torch.Generator().manual_seed(1))
    expected = torch.from_numpy(grayscale(faces)).permute(0, 3, 1, 2).float()
    assert (plain - expected).abs().max() <= 0.5  # evaluation rounds to whole levels


def test_seized_photo_looks_of_evaluate_on_real_faces(some_faces):
    """Real faces: sepia puts red over green over blue in every pixel; a low-resolution face
    holds a 24 px face's detail (it loses most of its fine detail, and the same round again
    changes it far less than the first did); heavy JPEG changes the face but keeps it; the CLI
    offers exactly these looks."""
    import cv2

    from minorage.config import EVALUATION_LOOKS
    from minorage.paper.evaluation import LOOKS, heavy_jpeg, low_resolution, sepia

    assert tuple(LOOKS) == EVALUATION_LOOKS
    faces = np.stack([cv2.resize(cv2.imread(str(p)), (64, 64), interpolation=cv2.INTER_AREA) for p in some_faces[:8]])
    toned = sepia(faces).astype(int)
    assert toned.shape == faces.shape and np.all(toned[..., 2] >= toned[..., 1]) and np.all(toned[..., 1] >= toned[..., 0])

    def detail(x: np.ndarray) -> float:
        return float(np.mean([np.abs(cv2.Laplacian(f, cv2.CV_32F)).mean() for f in x]))

    small = low_resolution(faces)
    assert small.shape == faces.shape and detail(small) < 0.4 * detail(faces)
    assert np.abs(low_resolution(small).astype(int) - small).mean() < 0.6 * np.abs(small.astype(int) - faces).mean()
    squeezed = heavy_jpeg(faces)
    change = np.abs(squeezed.astype(int) - faces).mean()
    assert squeezed.shape == faces.shape and 1.0 < change < 15.0

@pytest.mark.slow
def test_adults_beyond_the_range_are_reported_at_its_end(small_dataset, tmp_path):
    """Adults trained at a target past 25 (V = 31) push them away from the minor flag; the model
    still reports ages on [0, 25], "25" meaning 25 or older."""
    _, data, _, _ = small_dataset
    train(data, tmp_path / "run", TrainConfig(epochs=1, batch_size=32, V=31, adult_target=30), progress=False)
    estimator = AgeEstimator.from_pretrained(tmp_path / "run" / "model.safetensors")
    assert estimator.card.max_age == 25 and estimator.net.cfg.V == 31
    faces = np.load(data / "faces" / "test_org.npz")["faces"]
    with torch.no_grad():
        raw = estimator.runtime(torch.from_numpy(faces).permute(0, 3, 1, 2).float()).numpy()
    ages = estimator.predict(faces)
    np.testing.assert_allclose(ages, np.minimum(raw, 25), atol=1e-4)
    assert ages.max() <= 25


@pytest.mark.slow
def test_per_age_cap_keeps_twins_and_is_order_free(small_dataset):
    _, data, _, _ = small_dataset
    faces = load_faces(data, "train", "org+ocl")
    capped = faces.cap_per_age(3, seed=0)
    ages, counts = np.unique(np.rint(capped.ages), return_counts=True)
    assert counts.max() == 6 and set(capped.ids[capped.variants == "org"]) == set(capped.ids[capped.variants == "ocl"])
    order = np.random.default_rng(1).permutation(len(faces))
    shuffled = faces.subset(order).cap_per_age(3, seed=0)
    assert set(shuffled.ids) == set(capped.ids)


def test_boundary_loss_only_counts_faces_near_or_across_the_flag():
    """Threshold 17.5, margin 1: a 16-year-old estimated 15 and a 19-year-old estimated 20 are
    clear of it; one estimated 17 and one estimated 18 are half a year inside the margin."""
    pred = torch.tensor([15.0, 17.0, 18.0, 20.0], requires_grad=True)
    loss = boundary_loss(pred, torch.tensor([16.0, 16.0, 19.0, 19.0]), TrainConfig(boundary_weight=1.0))
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    assert pred.grad.tolist() == pytest.approx([0, 0.25, -0.25, 0])  # descent: the 16-year-old down, the 19-year-old up


@pytest.mark.slow
def test_mirror_consistency_adds_the_gap_between_a_face_and_its_mirror_image(small_dataset):
    """A real face and its mirror image get different estimates: with `mirror_consistency` the
    loss averages both views' errors and adds the weighted gap; a mirror-symmetric face has none."""
    _, data, _, _ = small_dataset
    faces = torch.from_numpy(np.load(data / "faces" / "test_org.npz")["faces"][:4]).permute(0, 3, 1, 2).float()
    net = load_pretrained_network("imdb").eval()
    target, ages = torch.full((4,), 10.0), torch.full((4,), 10.0)
    plain = TrainConfig()
    with torch.no_grad():
        pred, mirrored = net(faces), net(faces.flip(3))
        gap = (pred - mirrored).abs().mean()
        expected = ((pred - target).abs().mean() + (mirrored - target).abs().mean()) / 2 + 0.5 * gap
        assert gap > 0.01
        assert batch_loss(net, faces, target, ages, plain, torch.nn.L1Loss()).item() == pytest.approx((pred - target).abs().mean().item(), abs=1e-4)
        assert batch_loss(net, faces, target, ages, replace(plain, mirror_consistency=0.5), torch.nn.L1Loss()).item() == pytest.approx(expected.item(), abs=1e-4)
        symmetric = torch.cat([faces[..., :32], faces[..., :32].flip(3)], dim=3)
        own = (net(symmetric) - target).abs().mean()
        assert batch_loss(net, symmetric, target, ages, replace(plain, mirror_consistency=0.5), torch.nn.L1Loss()).item() == pytest.approx(own.item(), abs=1e-4)


def test_training_can_start_from_the_residual_network(tmp_path):
    """A residual-network checkpoint starts a run of its own architecture and licence; its
    range is fixed, so a configuration asking another V is refused; adults keep their own ages
    as targets with `adult_own_age`."""
    from minorage.config import ResNetConfig
    from minorage.model.resnet import AgeResNet
    from minorage.paper.training import initial_network, targets

    torch.manual_seed(0)
    path = save_checkpoint(AgeResNet(ResNetConfig()), ModelCard(name="r", licence="CC0-1.0 test weights"), tmp_path / "r")
    start, licence = initial_network(TrainConfig(init=str(path), V=81))
    assert isinstance(start, AgeResNet) and licence == "CC0-1.0 test weights"
    with pytest.raises(ValueError, match="V must be 81"):
        initial_network(TrainConfig(init=str(path), V=31))
    ages = np.array([5.0, 25.0, 40.0, 95.0])
    assert targets(ages, TrainConfig(V=81, adult_own_age=True)).tolist() == [5, 25, 40, 80]
    assert targets(ages, TrainConfig(V=31, adult_target=30)).tolist() == [5, 25, 30, 30]


def test_label_distribution_loss_is_least_where_the_softmax_matches_the_label():
    """The dldl loss's cross-entropy is smallest for scores that are the label's own Gaussian,
    and grows as the softmax moves away from the target; an SSR-Net, with no softmax over ages,
    cannot be trained with it."""
    from minorage.paper.training import initial_network, label_distribution_loss

    ages = torch.arange(0, 81, dtype=torch.float32)
    target = torch.tensor([10.0])
    at = lambda centre: label_distribution_loss(-((ages - centre) ** 2)[None] / 8, target, ages, 2.0).item()  # noqa: E731
    assert at(10.0) < at(12.0) < at(20.0)
    with pytest.raises(ValueError, match="dldl loss needs a network with a softmax"):
        initial_network(TrainConfig(init="imdb", loss="dldl"))
