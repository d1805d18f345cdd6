"""The SSR-Net port against the original Keras network, and the project's checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from minorage import AgeEstimator, config
from minorage.config import SSRNetConfig
from minorage.model.card import ModelCard
from minorage.model.checkpoint import load_checkpoint, save_checkpoint
from minorage.model.network import SSRNet
from minorage.model.runtime import predict_ages


@pytest.fixture(scope="module")
def reference():
    return np.load(config.ssrnet_fixture())


@pytest.mark.parametrize("name", ["imdb", "morph2", "wiki"])
def test_port_reproduces_keras_outputs(reference, name):
    ages = AgeEstimator.from_pretrained(name).predict(reference["images"])
    np.testing.assert_allclose(ages, reference[f"age_{name}"], atol=1e-3, rtol=0)


def test_megaface_asian_loads_and_gives_adult_ages(reference):
    ages = AgeEstimator.from_pretrained("megaface_asian").predict(reference["images"])
    assert ages.shape == (64,) and np.all((ages > 0) & (ages < 101))


def test_batching_does_not_change_results(reference):
    estimator = AgeEstimator.from_pretrained("imdb")
    whole = estimator.predict(reference["images"])
    # fp32 sums in another order per batch shape: up to a few 1e-6 relative (1.5e-5 years on a 35-year
    # estimate seen on an AMD EPYC); 1e-4 years is far below anything an age can show
    np.testing.assert_allclose(estimator.predict(reference["images"], batch_size=5), whole, atol=1e-4)


@pytest.mark.slow
def test_fast_runtime_gives_the_networks_own_ages(reference):
    """`predict` runs bulk batches through a folded, TorchScript-frozen copy in 32-face slices,
    small ones through the folded copy; both must give what the network itself gives: here the
    default ensemble (several networks, mirrored) on 70 faces (slices of 32, 32 and 6) and on one.
    Its members are frozen from one trace, each with its own weights: had they kept the first
    member's, the average would differ."""
    estimator = AgeEstimator.from_pretrained("default")
    faces = np.concatenate([reference["images"], reference["images"][:6]])
    members = estimator.runtime.bulk().members
    assert len(members) == 3 and all(isinstance(m, torch.jit.ScriptModule) for m in members)
    expected = predict_ages(estimator.net, faces, 256, estimator.card.max_age)
    np.testing.assert_allclose(estimator.predict(faces), expected, atol=1e-4)
    np.testing.assert_allclose(estimator.predict(faces[:1], batch_size=1), expected[:1], atol=1e-4)


def test_a_frozen_copy_that_differs_from_the_network_is_not_used(reference, monkeypatch):
    """The tracer's own check is off (it costs most of a trace), so the runtime compares the
    frozen copy's ages with the network's itself: a copy a year off is refused with a warning,
    and the ages stay the network's."""
    from minorage.model import runtime

    made = runtime.frozen

    def a_year_off(net, example):
        copy = made(net, example)
        return lambda x: copy(x) + 1.0

    monkeypatch.setattr(runtime, "frozen", a_year_off)
    estimator = AgeEstimator.from_pretrained("imdb")
    with pytest.warns(UserWarning, match="other ages than the network"):
        assert estimator.runtime.bulk() is estimator.runtime.folded
    np.testing.assert_allclose(estimator.predict(reference["images"]), reference["age_imdb"], atol=1e-3)


def test_predict_rejects_wrong_input(reference):
    estimator = AgeEstimator.from_pretrained("imdb")
    with pytest.raises(ValueError, match="uint8"):
        estimator.predict(reference["images"].astype(np.float32))
    with pytest.raises(ValueError, match="64, 64, 3"):
        estimator.predict(reference["images"][:, :32])


def test_age_range_is_a_parameter():
    torch.manual_seed(0)
    net = SSRNet(SSRNetConfig(V=26)).eval()
    x = torch.rand(8, 3, 64, 64) * 255
    ages = net(x)
    # every term of the merge is bounded: the age stays inside [0, V) up to the eta shift
    assert ages.shape == (8,) and torch.all(ages >= -1) and torch.all(ages < 26 * 1.5)


def test_checkpoint_round_trip(tmp_path, reference):
    pretrained = AgeEstimator.from_pretrained("morph2")
    card = ModelCard(name="copy-of-morph2", data={"note": "test"}, metrics={"mae": 1.0})
    path = save_checkpoint(pretrained.net, card, tmp_path / "m")
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["architecture"]["V"] == 101 and meta["framing"]["margin"] == 0.4
    reloaded = AgeEstimator.from_pretrained(path)
    assert reloaded.card.metrics == {"mae": 1.0}
    np.testing.assert_allclose(reloaded.predict(reference["images"]), reference["age_morph2"], atol=1e-3)
    net, _ = load_checkpoint(tmp_path)  # a folder with one checkpoint also works
    assert isinstance(net, SSRNet)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="no model named 'nonsense'"):
        AgeEstimator.from_pretrained("nonsense")


def test_missing_shared_file_names_path_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv(config.SHARED_ENV, str(tmp_path))
    with pytest.raises(config.MissingResourceError) as info:
        AgeEstimator.from_pretrained("imdb")
    message = str(info.value)
    assert str(tmp_path / "weights" / "ssrnet" / "imdb.h5") in message and "SSR-Net repository" in message


def test_ensemble_averages_its_members(tmp_path, reference):
    from minorage.model.ensemble import combine_checkpoints

    paths = []
    for name in ("imdb", "morph2"):
        estimator = AgeEstimator.from_pretrained(name)
        paths.append(save_checkpoint(estimator.net, ModelCard(name=name), tmp_path / name))
    net, card = combine_checkpoints(paths, mirror=False, name="pair")
    path = save_checkpoint(net, card, tmp_path / "pair")
    ensemble = AgeEstimator.from_pretrained(path)
    expected = (reference["age_imdb"] + reference["age_morph2"]) / 2
    np.testing.assert_allclose(ensemble.predict(reference["images"]), expected, atol=1e-3)
    mirrored, card = combine_checkpoints(paths, mirror=True, name="pair-mirror")
    assert card.training["mirror"] and len(mirrored.members) == 2
    from minorage.paper.ensembles import make_ensemble

    made, card, held = make_ensemble(paths, True, "pair-mirror")  # `minorage combine` without a data set
    assert held == [str(p) for p in paths] and card.metrics == {} and len(made.members) == 2
    with pytest.raises(ValueError, match="--choose needs --data"):
        make_ensemble(paths, True, "pair", choose=2)


def test_residual_blocks_pad_the_smaller_side_at_its_end():
    """dlib adds a stride-2 block's shortcut (more rows, fewer channels) to its branch by
    zero-padding each at its trailing channels, rows and columns; the top-left values add up."""
    from minorage.model.resnet import add_padded

    shortcut = torch.arange(2 * 3 * 3, dtype=torch.float32).view(1, 2, 3, 3)
    branch = torch.ones(1, 4, 2, 2)
    total = add_padded(shortcut, branch)
    assert total.shape == (1, 4, 3, 3)
    assert total[0, 0, 0, 0] == 1 and total[0, 1, 1, 1] == shortcut[0, 1, 1, 1] + 1
    assert total[0, 0, 2, 2] == shortcut[0, 0, 2, 2]  # only the shortcut reaches the last row
    assert torch.equal(total[0, 2:, :2, :2], torch.ones(2, 2, 2)) and total[0, 2:, 2].abs().sum() == 0


def test_residual_network_checkpoint_round_trip(tmp_path, reference):
    """The residual network's card names its architecture; reloaded (alone and as a mirrored
    ensemble) it gives the same ages, within its 81 ages' range, capped at the card's max_age."""
    from minorage.config import ResNetConfig
    from minorage.model.ensemble import combine_checkpoints
    from minorage.model.resnet import AgeResNet

    torch.manual_seed(0)
    net = AgeResNet(ResNetConfig()).eval()
    path = save_checkpoint(net, ModelCard(name="resnet", max_age=25), tmp_path / "r")
    assert json.loads(path.with_suffix(".json").read_text())["architecture"]["name"] == "resnet"
    estimator = AgeEstimator.from_pretrained(path)
    assert isinstance(estimator.net, AgeResNet) and estimator.age_range == (0, 25)
    ages = estimator.predict(reference["images"])
    expected = predict_ages(net, reference["images"], 256, 25)
    np.testing.assert_allclose(ages, expected, atol=1e-4)
    assert np.all((ages >= 0.25) & (ages <= 25))
    mirrored, card = combine_checkpoints([path], mirror=True, name="resnet-m")
    both = predict_ages(mirrored, reference["images"], 256)
    flipped = predict_ages(net, np.ascontiguousarray(reference["images"][:, :, ::-1]), 256)
    np.testing.assert_allclose(both, (predict_ages(net, reference["images"], 256) + flipped) / 2, atol=1e-4)


def test_black_and_white_faces_go_to_the_grayscale_specialist(tmp_path, reference, utkface_files, capsys):
    """A model with a grayscale specialist (`combine --grayscale`): real colour faces get the
    colour model's ages, the same faces in black and white (and saved again as colour JPEGs)
    the specialist's, in one mixed batch, through the fast runtime and after a checkpoint round
    trip; the colour model's card (its flag, calibration) is kept whole."""
    import cv2

    from minorage.cli import main
    from minorage.model.network import ByLookNetwork, is_black_and_white
    from minorage.paper.evaluation import grayscale

    colour = save_checkpoint(AgeEstimator.from_pretrained("imdb").net, ModelCard(name="imdb", minor_below=16.0,
                                                                                   calibration={"kept": True}), tmp_path / "imdb")
    special = save_checkpoint(AgeEstimator.from_pretrained("morph2").net, ModelCard(name="morph2"), tmp_path / "morph2")
    main(["combine", str(colour), "--grayscale", str(special), "--out", str(tmp_path / "routed.safetensors")])
    routed = AgeEstimator.from_pretrained(tmp_path / "routed.safetensors")
    assert isinstance(routed.net, ByLookNetwork)
    assert routed.minor_below == 16.0 and routed.card.calibration == {"kept": True}
    assert routed.card.grayscale["name"] == "morph2" and routed.card.grayscale["members"] == 1

    faces = np.stack([cv2.resize(cv2.imread(str(f)), (64, 64)) for f in utkface_files[::700][:20]])
    colour_faces = faces[(faces.max(axis=3) - faces.min(axis=3)).mean(axis=(1, 2)) > 10][:8]  # real colour photos
    gray = grayscale(colour_faces)
    resaved = np.stack([cv2.imdecode(cv2.imencode(".jpg", g, [cv2.IMWRITE_JPEG_QUALITY, 40])[1], cv2.IMREAD_COLOR) for g in gray])
    mixed = np.concatenate([colour_faces, gray, resaved] * 2)  # 48 faces: the runtime's bulk path
    as_tensor = torch.from_numpy(mixed).permute(0, 3, 1, 2).float()
    assert is_black_and_white(as_tensor).tolist() == ([False] * len(colour_faces) + [True] * 2 * len(gray)) * 2
    imdb, morph2 = AgeEstimator.from_pretrained("imdb"), AgeEstimator.from_pretrained("morph2")
    expected = np.concatenate([imdb.predict(colour_faces), morph2.predict(gray), morph2.predict(resaved)] * 2)
    np.testing.assert_allclose(routed.predict(mixed), expected, atol=1e-3)  # bulk (48 faces)
    np.testing.assert_allclose(routed.predict(mixed[:3]), expected[:3], atol=1e-3)  # a photo's few faces
    assert main(["combine", str(tmp_path / "routed.safetensors"), "--grayscale", str(special), "--out", str(tmp_path / "twice")]) == 2
    assert main(["combine", str(tmp_path / "routed.safetensors"), str(colour), "--out", str(tmp_path / "mixed")]) == 2
    assert "already routes black-and-white faces" in capsys.readouterr().err
