"""The experiment grid end to end on a miniature: run, resume, reuse, report; and DEX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from minorage import config
from minorage.cli import main
from minorage.config import DexConfig
from minorage.paper.dex import DexNet
from minorage.paper.experiments import caps, load_config


def _miniature(tmp_path, data) -> str:
    config = tmp_path / "mini.yaml"
    config.write_text(
        f"data: {data}\n"
        "sizes: [50, 100]\n"  # both caps exceed the ~12 photos per age the miniature holds
        "inits: [imdb]\n"
        "variants: [org]\n"
        "train: {epochs: 1, batch_size: 32}\n"
        "dex: {image_size: 32, fc_width: 32, epochs: 1, batch_size: 32}\n"
        "paper: experiments/paper_reference.json\n"
    )
    return str(config)


@pytest.mark.slow
def test_miniature_grid_runs_resumes_and_reports(small_dataset, tmp_path):
    _, data, _, _ = small_dataset
    config, run_dir, results = _miniature(tmp_path, data), tmp_path / "run", tmp_path / "results"
    assert main(["experiment", "run", config, "--out", str(run_dir)]) == 0
    cells = {p.parent.name: json.loads(p.read_text()) for p in (run_dir / "cells").glob("*/results.json")}
    assert set(cells) == {"pretrained-imdb--50", "pretrained-imdb--100", "finetune-imdb-org-50", "finetune-imdb-org-100", "dex-scratch-org-ocl-100"}
    small, large = cells["finetune-imdb-org-50"], cells["finetune-imdb-org-100"]
    # N = 100 holds the very same photos as N = 50 here: its model is reused, not retrained
    assert small["reused_from"] is None and large["reused_from"]["size"] == 50
    assert large["model_dir"] == small["model_dir"] and not (run_dir / "cells" / "finetune-imdb-org-100" / "model.safetensors").exists()
    assert (small["train_per_age"], small["test_per_age"]) == caps(50, load_config(config)) == (40, 10)
    for record in cells.values():
        for test in ("org", "ocl"):
            assert 0 < record["results"][test]["MAE"] < 30 and 0 <= record["results"][test]["Acc"] <= 1
    # the pretrained IMDB model is far off on children; one epoch of fine-tuning already helps
    assert small["results"]["org"]["MAE"] < cells["pretrained-imdb--50"]["results"]["org"]["MAE"]

    stamp = (run_dir / "cells" / "finetune-imdb-org-50" / "results.json").stat().st_mtime_ns
    assert main(["experiment", "run", config, "--out", str(run_dir)]) == 0  # finished cells are skipped
    assert (run_dir / "cells" / "finetune-imdb-org-50" / "results.json").stat().st_mtime_ns == stamp

    assert main(["experiment", "report", str(run_dir), "--out", str(results)]) == 0
    for name in ("table2.md", "table3.md", "figure3.png", "figure5.png", "figure6.png", "summary.md"):
        assert (results / name).stat().st_size > 0
    table2 = (results / "table2.md").read_text()
    row = next(line for line in table2.splitlines() if line.startswith("| Fine-tuned Org | 80 |"))
    assert f"{large['results']['org']['MAE']:.2f}" in row and "| 0.00 |" in row  # Impv against N = 50: same model, same test
    table3 = (results / "table3.md").read_text()
    assert f"{small['results']['ocl']['Acc'] * 100:.2f}" in table3
    summary = (results / "summary.md").read_text()
    assert "4.07" in summary and "DEX" in summary and "| Fine-tuned Org | IMDB | 50 |" in summary
    assert "/ –" in summary  # the paper has no cell at N = 50: nothing is made up


def test_dex_gives_the_expected_age_of_its_softmax():
    torch.manual_seed(0)
    net = DexNet(DexConfig(image_size=32, fc_width=16)).eval()
    faces = torch.rand(3, 3, 64, 64) * 255
    with torch.no_grad():
        probabilities = net.logits(faces).softmax(1)
        ages = net(faces)
    np.testing.assert_allclose(ages.numpy(), (probabilities * torch.arange(26.0)).sum(1).numpy(), rtol=1e-5)
    assert torch.all((ages >= 0) & (ages <= 25))
    assert sum(p.numel() for n, p in net.named_parameters() if n.startswith("features")) == 14_714_688 + 8_448  # VGG-16 convs + BN


def test_the_paper_grid_reads_into_typed_sections(tmp_path):
    """experiments/paper.yaml becomes typed configs (the data set's sources with `{shared}`
    filled in, the training recipe, DEX); the saved form reads back the same; an unknown key or
    training option is refused with the file's name."""
    from dataclasses import asdict

    from minorage.config import DatasetConfig, TrainConfig
    from minorage.paper.experiments import ExperimentConfig, load_config

    cfg = load_config(Path("experiments/paper.yaml"))
    assert isinstance(cfg.dataset, DatasetConfig) and cfg.dataset.per_age == 5000
    assert cfg.dataset.sources == (("utkface", str(config.utkface_dir())),) or Path(cfg.dataset.sources[0][1]) == config.utkface_dir()
    assert isinstance(cfg.train, TrainConfig) and cfg.train.epochs == 10 and cfg.dex.image_size == 32
    assert ExperimentConfig.from_dict(json.loads(json.dumps(asdict(cfg)))) == cfg
    for bad in ("colour: red\n", "data: x\ntrain:\n  epoch: 3\n"):
        (tmp_path / "bad.yaml").write_text(bad)
        with pytest.raises(ValueError, match="bad.yaml"):
            load_config(tmp_path / "bad.yaml")
