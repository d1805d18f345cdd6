"""The networks' ONNX exports: current, the same faces and ages as the networks, never stale,
and what lets `scan` and `predict` run without importing PyTorch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest

from minorage.cli import main
from minorage.config import DetectorConfig
from minorage.exported import ExportedNetwork
from minorage.faces import detection
from minorage.faces.detection import FaceDetector, shipped_weights_dir, stock_weights_dir, weights_files
from minorage.model.card import packaged_model_path
from minorage.model.estimator import AgeEstimator


def _without_exports(monkeypatch) -> None:
    """Every MTCNN network in PyTorch, as for a weights folder with no export."""
    monkeypatch.setattr(detection.ExportedNetwork, "of", classmethod(lambda cls, *args, **kwargs: None))


def _scenes(paths: list, seed: int = 0) -> list[np.ndarray]:
    """Photos as they are, and pasted three to a 640x480 picture at random sizes and places."""
    rng = np.random.default_rng(seed)
    chips = [cv2.imread(str(p)) for p in paths]
    scenes = []
    for k in range(0, len(chips) - 2, 3):
        canvas = rng.integers(60, 200, (480, 640, 3), dtype=np.uint8)
        for chip in chips[k : k + 3]:
            side = int(rng.integers(50, 170))
            x, y = int(rng.integers(0, 640 - side)), int(rng.integers(0, 480 - side))
            canvas[y : y + side, x : x + side] = cv2.resize(chip, (side, side), interpolation=cv2.INTER_AREA)
        scenes.append(canvas)
    return chips + scenes


def test_every_shipped_network_runs_from_a_current_export():
    """A network retrained without a new export would silently run in PyTorch: the shipped ones may not."""
    for weights in ("stock", "occlusion"):
        for path in weights_files(weights).values():
            assert ExportedNetwork.of(path) is not None, f"{path}: no current export (scripts/export_onnx.py)"
    for model in ("default", "blend"):
        assert AgeEstimator.from_pretrained(model).runs_exported, f"{model}: no current export (scripts/export_onnx.py)"


@pytest.mark.parametrize("weights", ["stock", "occlusion", "union+yunet"])
def test_detection_finds_the_same_faces_from_the_exports_as_in_pytorch(weights, utkface_files, monkeypatch):
    images = _scenes(utkface_files[5::150][:30])
    exported = FaceDetector(DetectorConfig(weights=weights))
    assert all(isinstance(n, ExportedNetwork) for n in [exported.pnet, *(n for pair in exported.pairs for n in pair)])
    _without_exports(monkeypatch)
    torch_detector = FaceDetector(DetectorConfig(weights=weights))
    found = 0
    for image in images:
        ours, theirs = exported.detect(image), torch_detector.detect(image)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a.box, b.box, atol=1e-3)
            np.testing.assert_allclose(a.points, b.points, atol=1e-3)
            assert a.score == pytest.approx(b.score, abs=1e-5)
        found += len(ours)
    assert found >= len(images)  # most chips hold a face, every scene three


def test_the_age_model_reads_the_same_ages_from_its_exports(utkface_files):
    """The exports hold the networks folded and averaged over the mirrored face, as the PyTorch
    runtime runs them: real faces, routed to both parts."""
    from minorage.model.runtime import predict_ages

    faces = np.stack([cv2.resize(cv2.imread(str(p)), (64, 64), interpolation=cv2.INTER_AREA) for p in utkface_files[::90][:80]])
    filled = np.arange(len(faces)) % 3 == 0
    model = AgeEstimator.from_pretrained("default")
    ages = model.predict(faces, edge_filled=filled)
    expected = np.empty(len(faces), np.float32)
    expected[~filled] = predict_ages(model.runtime, faces[~filled], 256, model.card.max_age)
    expected[filled] = predict_ages(model.edge.runtime, faces[filled], 256, model.edge.card.max_age)
    np.testing.assert_allclose(ages, expected, atol=1e-3)
    assert np.ptp(ages) > 5  # real faces of many ages, not one answer


def test_the_blend_reads_the_same_ages_from_its_exports(utkface_files):
    """The shipped blend's second network (dlib's, fine-tuned) from its export gives its PyTorch
    ages on real faces; its own parts are the default model's, read as the default reads them."""
    from minorage.model.runtime import predict_ages

    faces = np.stack([cv2.resize(cv2.imread(str(p)), (64, 64), interpolation=cv2.INTER_AREA) for p in utkface_files[7::90][:60]])
    blend, default = AgeEstimator.from_pretrained("blend"), AgeEstimator.from_pretrained("default")
    ages = blend.opinion.predict(faces)
    np.testing.assert_allclose(ages, predict_ages(blend.opinion.runtime, faces, 256, None), atol=1e-3)
    assert np.ptp(ages) > 10 and ages.max() > 25  # real faces of many ages, read over the network's whole range
    filled = np.arange(len(faces)) % 3 == 0
    np.testing.assert_array_equal(blend.predict(faces, edge_filled=filled), default.predict(faces, edge_filled=filled))
    assert type(blend.net) is type(default.net)  # its own networks, loaded on demand, without the second one


def test_a_network_changed_after_its_export_runs_in_pytorch(tmp_path, some_faces):
    """An export records the hash of the weights it came from: weights replaced since (a retrained
    O-Net copied over the shipped one) must not be read through the old export."""
    import torch

    from minorage.faces.mtcnn import TorchNetwork

    folder = tmp_path / "tuned"
    shutil.copytree(shipped_weights_dir(), folder)
    stock_onet = torch.load(stock_weights_dir() / "onet.pt", weights_only=True)
    torch.save(stock_onet, folder / "onet.pt")
    with pytest.warns(UserWarning, match="exported from other weights"):
        detector = FaceDetector(DetectorConfig(weights=str(folder)))
    rnet, onet = detector.pairs[0]
    assert isinstance(onet, TorchNetwork) and isinstance(rnet, ExportedNetwork)
    patches = detection.normalise(np.stack([cv2.resize(cv2.imread(str(p)), (48, 48)) for p in some_faces[:4]])[..., ::-1])
    stock = ExportedNetwork.of(stock_weights_dir() / "onet.pt")
    np.testing.assert_allclose(onet(patches)[0], stock(patches)[0], atol=1e-4)  # it reads the weights now there


def test_a_damaged_export_is_left_for_the_network_in_pytorch(tmp_path, some_faces):
    """An installation whose export file is damaged still detects, with the weights beside it."""
    from minorage.faces.mtcnn import TorchNetwork

    folder = tmp_path / "tuned"
    shutil.copytree(shipped_weights_dir(), folder)
    (folder / "rnet.onnx").write_bytes((folder / "rnet.onnx").read_bytes()[:5000])
    with pytest.warns(UserWarning, match="cannot be loaded"):
        detector = FaceDetector(DetectorConfig(weights=str(folder)))
    assert isinstance(detector.pairs[0][0], TorchNetwork)
    assert detector.detect(cv2.imread(str(some_faces[2])))


def test_an_age_model_changed_after_its_export_runs_in_pytorch(tmp_path, capsys):
    from minorage.model.checkpoint import load_checkpoint, save_checkpoint

    source = packaged_model_path()
    for name in ("default.safetensors", "default.json", "default.onnx", "default.edge.onnx"):
        shutil.copy(source.with_name(name), tmp_path / name)
    copied = AgeEstimator.from_pretrained(tmp_path / "default.safetensors")
    assert copied.runs_exported
    net, card = load_checkpoint(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p in net.edge.parameters():
            p.data.add_(0.01)
    save_checkpoint(net, card, tmp_path / "default.safetensors")
    with pytest.warns(UserWarning, match="exported from other weights"):
        changed = AgeEstimator.from_pretrained(tmp_path / "default.safetensors")
    assert not changed.runs_exported
    with pytest.warns(UserWarning, match="exported from other weights"):
        assert main(["info", str(tmp_path / "default.safetensors")]) == 0
    assert json.loads(capsys.readouterr().out)["predict_runs_in"] == "PyTorch"  # what an examiner is told
    faces = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    assert not np.allclose(changed.predict(faces, edge_filled=np.ones(6, bool)), copied.predict(faces, edge_filled=np.ones(6, bool)), atol=1e-3)


def test_predict_and_the_scan_workers_never_import_pytorch(tmp_path, some_faces):
    """What makes them start fast: the default detector and model in ONNX Runtime. The command runs
    in a fresh interpreter; the scan's workers load what `_init_worker` loads."""
    photo = some_faces[3]
    code = f"""
import sys
from minorage.cli import main
assert main(["predict", {str(photo)!r}, "--format", "csv", "-o", {str(tmp_path / "out.csv")!r}]) == 0
assert main(["predict", {str(photo)!r}, "--model", "blend", "--format", "csv", "-o", {str(tmp_path / "blend.csv")!r}]) == 0
from minorage.config import DetectorConfig, ScanConfig
from minorage.model.estimator import AgeEstimator
from minorage.triage import scan
scan._init_worker(DetectorConfig(), AgeEstimator.from_pretrained("default").framings, ScanConfig())
assert scan.examine({str(photo)!r}).faces
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert (tmp_path / "out.csv").read_text().count("\n") >= 2
    assert (tmp_path / "blend.csv").read_text().count("\n") >= 2
