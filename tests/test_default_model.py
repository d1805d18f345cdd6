"""The shipped default model: loads with no shared folder, ages real faces plausibly."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from minorage import AgeEstimator, config
from minorage.faces.framing import crop_box, frame_face
from minorage.model.card import packaged_model_path

from .conftest import utkface_age


def test_default_model_is_small_and_documented():
    path = packaged_model_path()
    assert path.is_file() and path.stat().st_size < 2_000_000  # at most two ensembles of three small networks
    estimator = AgeEstimator.from_pretrained("default")
    info = estimator.describe()
    assert info["age_range"] == [0, 25]
    parts = [info] + ([info["edge"]] if "edge" in info else [])  # with its part for the frames the photo's edge filled
    members = [m for part in parts for m in part["data"].get("members", [part])]  # an ensemble keeps each member's card
    assert all(m["training"]["best_epoch"] >= 1 and m["training"]["seed"] >= 0 for m in members)
    assert all(part["data"]["dataset_config"]["sources"] for part in parts)
    for m in members:  # measured on its validation photos, or refit on all of them (last epoch kept)
        refit = m["training"].get("val_fraction") == 0
        assert m["training"]["best_epoch"] == m["training"]["epochs_run"] if refit else m["metrics"]["val_mae"] < 5
    assert 17.5 <= estimator.minor_below <= 21


def test_default_model_needs_no_shared_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(config.SHARED_ENV, str(tmp_path / "nothing-here"))
    estimator = AgeEstimator.from_pretrained("default")
    ages = estimator.predict(np.full((2, 64, 64, 3), 128, np.uint8))
    assert ages.shape == (2,) and np.all(np.isfinite(ages))


@pytest.mark.slow
def test_default_model_ages_real_faces(utkface_files):
    estimator = AgeEstimator.from_pretrained("default")
    picks = {"babies": (1, 2), "children": (8, 10), "adults": (40, 60)}
    ages = {}
    for name, (low, high) in picks.items():
        files = [f for f in utkface_files if low <= utkface_age(f) <= high][::7][:30]
        faces = []
        for f in files:
            image = cv2.imread(str(f))
            faces.append(frame_face(image, crop_box(image, 1.0), estimator.framing))
        ages[name] = estimator.predict(np.stack(faces))
    assert np.median(ages["babies"]) < 5
    assert 5 <= np.median(ages["children"]) <= 13
    assert np.mean(ages["adults"] < estimator.minor_below) <= 0.1  # adults are not called minors
