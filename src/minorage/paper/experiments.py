"""The paper's experiment grid (§4, §5), run cell by cell and reported as its Tables 2 and 3 and
Figures 3, 5 and 6.

A grid is a YAML file (`experiments/paper.yaml`): the data set, the training sizes N (photos per
age: the paper trains on 80 % of them and tests on 20 %, so both sets grow with N), the
initialisations, the training variants, the test variants, the unchanged pretrained models as
baselines, and the DEX baseline. `run` trains and evaluates every cell once: a cell whose
results.json exists is skipped, an interrupted training resumes. A cell whose capped training
set is the very same photos as an earlier cell's (N above what the data holds) reuses that
model instead of training the same thing twice, and says so. `report` turns the cells into
results/paper/.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from minorage import config, groups
from minorage.config import DatasetConfig, DetectorConfig, DexConfig, TrainConfig
from minorage.model.estimator import AgeEstimator
from minorage.model.runtime import predict_ages
from minorage.paper import metrics
from minorage.paper.evaluation import evaluate_predictor

TEST_VARIANTS = ("org", "ocl")
VARIANT_NAMES = {"org": "Org", "ocl": "Ocl", "org+ocl": "Org+Ocl"}
INIT_NAMES = {"imdb": "IMDB", "morph2": "MORPH", "wiki": "WIKI", "megaface_asian": "MegaAge-Asian"}


@dataclass(frozen=True)
class ExperimentConfig:
    """A grid, as read from YAML (every field documented in experiments/paper.yaml)."""

    data: str
    dataset: DatasetConfig | None = None  # how to build `data` if it is not built yet
    sizes: tuple[int, ...] = (250, 500, 1000, 5000)
    inits: tuple[str, ...] = ("morph2", "imdb")
    variants: tuple[str, ...] = ("org", "ocl", "org+ocl")
    train_fraction: float = 0.8
    train: TrainConfig = TrainConfig()  # each cell's variant, init and per_age replace these
    dex: DexConfig | None = None
    paper: str | None = None

    @classmethod
    def from_dict(cls, raw: dict) -> "ExperimentConfig":
        """A grid from its YAML (or its saved experiment.json): every section typed, unknown
        keys refused; `{shared}` in a source folder is $MINORAGE_SHARED."""
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown keys {', '.join(sorted(unknown))}")
        typed = {k: tuple(v) if k in ("sizes", "inits", "variants") else v for k, v in raw.items()}
        typed["dataset"] = _dataset_config(raw["dataset"]) if raw.get("dataset") else None
        typed["train"] = TrainConfig.from_dict(raw.get("train") or {})
        typed["dex"] = DexConfig(**raw["dex"]) if raw.get("dex") is not None else None
        return cls(**typed)


def _dataset_config(spec: dict) -> DatasetConfig | None:
    spec = dict(spec)
    sources = spec.pop("sources", {})
    pairs = sources.items() if isinstance(sources, dict) else sources
    sources = tuple((name, str(folder).format(shared=config.shared_root())) for name, folder in pairs)
    if not sources:
        return None
    framing = config.Framing.from_dict(spec.pop("framing")) if "framing" in spec else config.Framing()
    detector = spec.pop("detector", {"weights": "stock"})
    detector = DetectorConfig(**{**detector, "thresholds": tuple(detector.get("thresholds", DetectorConfig.thresholds))})
    return DatasetConfig(sources=sources, framing=framing, detector=detector, **spec)


def load_config(path: Path) -> ExperimentConfig:
    """Read a grid; relative paths in it are relative to the working directory."""
    import yaml

    try:
        return ExperimentConfig.from_dict(yaml.safe_load(Path(path).read_text()) or {})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


@dataclass(frozen=True)
class Cell:
    """One model of the grid: fine-tuned, pretrained (unchanged) or DEX, at one size N."""

    kind: str  # finetune | pretrained | dex
    init: str
    variant: str
    size: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.init}-{self.variant.replace('+', '-')}-{self.size}"


def grid(cfg: ExperimentConfig) -> list[Cell]:
    """Every cell, the cheap baselines first, then training from the smallest size up."""
    cells = [Cell("pretrained", init, "", size) for init in cfg.inits for size in cfg.sizes]
    cells += [Cell("finetune", init, variant, size) for size in cfg.sizes for init in cfg.inits for variant in cfg.variants]
    if cfg.dex is not None:
        cells.append(Cell("dex", "scratch", "org+ocl", max(cfg.sizes)))
    return cells


def caps(size: int, cfg: ExperimentConfig) -> tuple[int, int]:
    """Photos per age for training and for testing at size N (the paper: 200/50 of 250)."""
    train = int(round(size * cfg.train_fraction))
    return train, size - train


# ---------------------------------------------------------------------------------------------
# Running


def ensure_dataset(cfg: ExperimentConfig, progress: bool) -> Path:
    """The grid's data set, built (or resumed) from `dataset` unless already built alike."""
    from minorage.paper.build import build_dataset

    data = Path(cfg.data)
    built = data / "dataset.json"
    if built.is_file() and (cfg.dataset is None or _same_build(json.loads(built.read_text())["config"], cfg.dataset)):
        return data
    if cfg.dataset is None:
        raise FileNotFoundError(f"{data} is not a built data set and the grid names no sources to build it from")
    build_dataset(cfg.dataset, data, progress=progress)
    return data


def _same_build(built: dict, wanted: DatasetConfig) -> bool:
    """Whether a data set was built as asked (options it predates are not held against it)."""
    def folders(sources):
        return [(n, str(Path(f).resolve())) for n, f in sources]
    spec = wanted.to_dict()
    return folders(built["sources"]) == folders(spec.pop("sources")) and all(built[k] == v for k, v in spec.items() if k in built)


def run(cfg: ExperimentConfig, out_dir: Path, progress: bool = True) -> list[dict]:
    """Run every unfinished cell; returns all cells' results."""
    data = ensure_dataset(cfg, progress)
    out_dir = Path(out_dir)
    (out_dir / "cells").mkdir(parents=True, exist_ok=True)
    (out_dir / "experiment.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    results, cells = [], grid(cfg)
    for n, cell in enumerate(cells, 1):
        path = out_dir / "cells" / cell.name / "results.json"
        if not path.is_file():
            if progress:
                print(f"[{n}/{len(cells)}] {cell.name}", flush=True)
            started = time.time()
            record = {"cell": asdict(cell), **_run_cell(cell, cfg, data, out_dir, progress)}
            record["seconds"] = round(time.time() - started, 1)
            _write_json(path, record)
        results.append(json.loads(path.read_text()))
    return results


def _run_cell(cell: Cell, cfg: ExperimentConfig, data: Path, out_dir: Path, progress: bool) -> dict:
    train_cap, test_cap = caps(cell.size, cfg)
    cell_dir = out_dir / "cells" / cell.name
    if cell.kind == "pretrained":
        estimator = AgeEstimator.from_pretrained(cell.init)
        return {"test_per_age": test_cap, **_evaluate(estimator.predict, data, test_cap, estimator)}
    if cell.kind == "dex":
        from minorage.paper.dex import train_dex

        net, card = train_dex(data, cell_dir, replace(cfg.dex, per_age=train_cap), progress)
        evaluated = _evaluate(lambda faces: predict_ages(net, faces, 256), data, test_cap, None)
        return {"train_per_age": train_cap, "test_per_age": test_cap, "model": {k: card[k] for k in ("parameters", "size_bytes", "faces_fit", "faces_val", "best", "note")}, **evaluated}
    return _finetune(cell, cfg, data, out_dir, train_cap, test_cap, progress)


def _finetune(cell: Cell, cfg: ExperimentConfig, data: Path, out_dir: Path, train_cap: int, test_cap: int, progress: bool) -> dict:
    """Train the cell (or reuse an earlier cell trained on the very same photos) and test it."""
    from minorage.paper.training import train, training_faces

    train_cfg = replace(cfg.train, variant=cell.variant, init=cell.init, per_age=train_cap)
    faces = training_faces(data, train_cfg)
    key = hashlib.sha256(json.dumps([sorted(set(faces.ids.tolist())), {**asdict(train_cfg), "per_age": 0}]).encode()).hexdigest()[:16]
    same = [r for r in _finished(out_dir) if r.get("training_key") == key]
    model_dir = Path(same[0]["model_dir"]) if same else out_dir / "cells" / cell.name
    if not same:
        train(data, model_dir, train_cfg, progress=progress)
    estimator = AgeEstimator.from_pretrained(model_dir / "model.safetensors")
    card = estimator.card
    return {
        "train_per_age": train_cap, "test_per_age": test_cap, "training_key": key, "model_dir": str(model_dir),
        "reused_from": same[0]["cell"] if same else None,
        "train_photos": len(set(faces.ids.tolist())), "train_faces": card.data.get("faces_fit", 0) + card.data.get("faces_val", 0),
        "best_epoch": card.training.get("best_epoch"), "val_mae": card.metrics.get("val_mae"),
        "model": {"parameters": sum(p.numel() for p in estimator.net.parameters()), "size_bytes": (model_dir / "model.safetensors").stat().st_size},
        **_evaluate(estimator.predict, data, test_cap, estimator),
    }


def _evaluate(predict, data: Path, test_cap: int, estimator: AgeEstimator | None) -> dict:
    """Test results per variant, with the test photos counted and the speed measured."""
    seconds = [0.0]

    def timed(faces: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        ages = predict(faces)
        seconds[0] += time.perf_counter() - started
        return ages

    results = evaluate_predictor(timed, data, TEST_VARIANTS, per_age=test_cap,
                                 minor_below=estimator.minor_below if estimator else groups.MINOR_BELOW)
    faces = sum(r["n"] for r in results.values())
    return {"results": results, "test_faces": faces, "faces_per_second": round(faces / seconds[0], 1)}


def _finished(out_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out_dir / "cells").glob("*/results.json"))]


def _write_json(path: Path, record: dict) -> None:
    """Atomically: a results.json is there whole or not at all (what makes a cell finished)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# Reporting: results/paper/


def report(run_dir: Path, out_dir: Path) -> list[Path]:
    """Tables 2 and 3, Figures 3, 5 and 6 and the summary from a finished (or partial) run."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg = ExperimentConfig.from_dict(json.loads((run_dir / "experiment.json").read_text()))
    cells = {tuple(r["cell"].values()): r for r in _finished(run_dir)}
    if not cells:
        raise FileNotFoundError(f"{run_dir}: no finished cells (run `minorage experiment run` first)")
    paper = json.loads(Path(cfg.paper).read_text()) if cfg.paper and Path(cfg.paper).is_file() else None
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, measure, title in (("table2.md", "MAE", "MAE and Impv (%)"), ("table3.md", "Acc", "Acc (%) and Impv (%)")):
        written.append(out_dir / name)
        written[-1].write_text(table(cells, cfg, measure, title))
    written += [figure3(cells, cfg, out_dir / "figure3.png"), figure5(cells, cfg, out_dir / "figure5.png")]
    if cfg.dex is not None:
        written.append(figure6(cells, cfg, out_dir / "figure6.png"))
    written.append(out_dir / "summary.md")
    written[-1].write_text(summary(cells, cfg, paper))
    return written


def _value(record: dict | None, test: str, measure: str) -> float | None:
    """A measure of a cell on a test variant; Acc in percent, as the paper prints it."""
    if record is None:
        return None
    value = record["results"][test][measure]
    return value * 100 if measure == "Acc" else value


def _blocks(cfg: ExperimentConfig) -> list[tuple[str, str, str]]:
    """(label, kind, variant) of each block of rows, in the paper's order."""
    return [("Pre-trained", "pretrained", "")] + [(f"Fine-tuned {VARIANT_NAMES[v]}", "finetune", v) for v in cfg.variants]


def table(cells: dict, cfg: ExperimentConfig, measure: str, title: str) -> str:
    """The paper's Table 2 (MAE) or 3 (Acc): per block and size, per initialisation, the measure
    on Org and Ocl tests and its Impv against the block's smallest size."""
    head = ["Model", "Train / age", "Test / age"]
    for init in cfg.inits:
        name = INIT_NAMES.get(init, init)
        head += [f"{name} {measure} Org", f"{name} {measure} Ocl", f"{name} Impv Org", f"{name} Impv Ocl"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for label, kind, variant in _blocks(cfg):
        for size in cfg.sizes:
            train_cap, test_cap = caps(size, cfg)
            row = [label, "–" if kind == "pretrained" else str(train_cap), str(test_cap)]
            for init in cfg.inits:
                record, base = cells.get((kind, init, variant, size)), cells.get((kind, init, variant, min(cfg.sizes)))
                values = [_value(record, t, measure) for t in TEST_VARIANTS]
                bases = [_value(base, t, measure) for t in TEST_VARIANTS]
                row += [_fmt(v) for v in values]
                row += ["–" if size == min(cfg.sizes) or kind == "pretrained" or v is None or b is None else f"{metrics.impv(b, v):.2f}"
                        for v, b in zip(values, bases)]
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", _counts_note(cells, cfg)]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _counts_note(cells: dict, cfg: ExperimentConfig) -> str:
    """What the caps mean in photos actually used (the data holds fewer than N for most ages)."""
    parts = []
    for size in cfg.sizes:
        record = next((r for k, r in cells.items() if k[0] == "finetune" and k[3] == size and k[2] == "org"), None)
        if record:
            parts.append(f"N = {size}: {record['train_photos']:,} training photos, {record['results']['org']['n']:,} test photos")
    reused = sorted(r["cell"]["kind"] + "-" + r["cell"]["init"] + "-" + r["cell"]["variant"] + f"-{r['cell']['size']}" for r in cells.values() if r.get("reused_from"))
    note = "Photos actually used (caps per age, fewer where the data holds fewer): " + "; ".join(parts) + "."
    if reused:
        note += f" Cells with exactly the training photos of a smaller N reuse its model: {', '.join(reused)}."
    return note


def _series(cells: dict, cfg: ExperimentConfig, kind: str, init: str, variant: str, test: str, measure: str) -> tuple[list, list]:
    points = [(s, _value(cells.get((kind, init, variant, s)), test, measure)) for s in cfg.sizes]
    points = [(s, v) for s, v in points if v is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure3(cells: dict, cfg: ExperimentConfig, path: Path) -> Path:
    """MAE and Acc against the training size, one row per initialisation; a line per training
    variant and test variant, the pretrained model dotted."""
    plt = _plt()
    fig, axes = plt.subplots(len(cfg.inits), 2, figsize=(11, 4 * len(cfg.inits)), squeeze=False)
    for row, init in zip(axes, cfg.inits):
        for ax, measure in zip(row, ("MAE", "Acc")):
            for test, style in zip(TEST_VARIANTS, ("-", "--")):
                for variant in cfg.variants:
                    ax.plot(*_series(cells, cfg, "finetune", init, variant, test, measure), style, marker="o", label=f"train {VARIANT_NAMES[variant]}, test {VARIANT_NAMES[test]}")
                ax.plot(*_series(cells, cfg, "pretrained", init, "", test, measure), ":", color="grey", marker="x", label=f"pretrained, test {VARIANT_NAMES[test]}")
            ax.set(xscale="log", xlabel="photos per age N", ylabel=measure + (" (%)" if measure == "Acc" else " (years)"),
                   title=f"{measure}, SSR-Net fine-tuned from {INIT_NAMES.get(init, init)}")
            ax.minorticks_off()
            ax.set_xticks(list(cfg.sizes), [str(s) for s in cfg.sizes])
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    return _save(fig, path)


def _bars(ax, labels: list[str], groups: dict[str, list[float | None]], ylabel: str, title: str) -> None:
    width = 0.8 / len(groups)
    for i, (name, values) in enumerate(groups.items()):
        xs = [j + i * width for j in range(len(labels))]
        heights = [v if v is not None else 0 for v in values]
        ax.bar(xs, heights, width, label=name)
        for x, v in zip(xs, values):
            if v is not None:
                ax.text(x, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks([j + width * (len(groups) - 1) / 2 for j in range(len(labels))], labels, fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize=7)


def figure5(cells: dict, cfg: ExperimentConfig, path: Path) -> Path:
    """IMDB-initialised models at the largest size (and the pretrained IMDB model) on the Org
    and on the Ocl test: (a) MAE, (b) Acc."""
    plt = _plt()
    init, size = ("imdb" if "imdb" in cfg.inits else cfg.inits[0]), max(cfg.sizes)
    keys = [("pretrained", init, "", size)] + [("finetune", init, v, size) for v in cfg.variants]
    labels = ["pretrained"] + [f"train {VARIANT_NAMES[v]}" for v in cfg.variants]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, measure in zip(axes, ("MAE", "Acc")):
        groups = {f"test {VARIANT_NAMES[t]}": [_value(cells.get(k), t, measure) for k in keys] for t in TEST_VARIANTS}
        _bars(ax, labels, groups, measure + (" (%)" if measure == "Acc" else " (years)"), f"{measure}, {INIT_NAMES.get(init, init)} init, N = {size}")
    return _save(fig, path)


def best_ssrnet(cells: dict, cfg: ExperimentConfig) -> dict | None:
    """The fine-tuned cell with the lowest MAE averaged over the Org and Ocl tests."""
    tuned = [r for k, r in cells.items() if k[0] == "finetune"]
    return min(tuned, key=lambda r: np.mean([r["results"][t]["MAE"] for t in TEST_VARIANTS]), default=None)


def figure6(cells: dict, cfg: ExperimentConfig, path: Path) -> Path:
    """The best SSR-Net against DEX on the Org and Ocl tests."""
    plt = _plt()
    best = best_ssrnet(cells, cfg)
    dex = next((r for k, r in cells.items() if k[0] == "dex"), None)
    labels = [f"test {VARIANT_NAMES[t]}" for t in TEST_VARIANTS]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, measure in zip(axes, ("MAE", "Acc")):
        groups = {"SSR-Net (best cell)": [_value(best, t, measure) for t in TEST_VARIANTS], "DEX (VGG-16)": [_value(dex, t, measure) for t in TEST_VARIANTS]}
        _bars(ax, labels, groups, measure + (" (%)" if measure == "Acc" else " (years)"), f"{measure}: SSR-Net vs DEX")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def summary(cells: dict, cfg: ExperimentConfig, paper: dict | None) -> str:
    """Our numbers beside the paper's, cell by cell, and the headline comparisons."""
    lines = ["# The paper's grid on our data: summary", ""]
    best = best_ssrnet(cells, cfg)
    if best:
        cell = best["cell"]
        mae_avg = np.mean([best["results"][t]["MAE"] for t in TEST_VARIANTS])
        acc_avg = np.mean([best["results"][t]["Acc"] for t in TEST_VARIANTS]) * 100
        lines += [f"Best fine-tuned SSR-Net: {INIT_NAMES.get(cell['init'], cell['init'])} init, {VARIANT_NAMES[cell['variant']]} faces, N = {cell['size']}: "
                  f"MAE {mae_avg:.2f} and Acc {acc_avg:.1f} % averaged over the Org and Ocl tests"
                  + (f" (the paper's best: MAE {paper['best']['MAE']} and Acc {paper['best']['Acc']} %)." if paper else "."), ""]
    dex = next((r for k, r in cells.items() if k[0] == "dex"), None)
    if dex and best:
        lines += ["| model | parameters | size (MB) | faces/s (test set, 2 threads) | MAE Org | MAE Ocl | Acc Org | Acc Ocl |", "|---|---|---|---|---|---|---|---|"]
        for name, r in (("SSR-Net (best cell)", best), ("DEX: " + dex["model"]["note"], dex)):
            lines.append(f"| {name} | {r['model']['parameters']:,} | {r['model']['size_bytes'] / 1e6:.2f} | {r['faces_per_second']:,.0f} | "
                         + " | ".join(f"{_value(r, t, 'MAE'):.2f}" for t in TEST_VARIANTS) + " | "
                         + " | ".join(f"{_value(r, t, 'Acc'):.1f}" for t in TEST_VARIANTS) + " |")
        if paper:
            lines += ["", f"The paper's DEX: MAE {paper['dex']['MAE']}, Acc {paper['dex']['Acc']} % (averaged over Org and Ocl), over 500 MB."]
        lines.append("")
    lines += ["## Cell by cell", "", "MAE (ours / paper's) and Acc % (ours / paper's) on the Org and Ocl tests.", "",
              "| model | init | N | MAE Org | MAE Ocl | Acc Org | Acc Ocl |", "|---|---|---|---|---|---|---|"]
    for label, kind, variant in _blocks(cfg):
        for init in cfg.inits:
            for size in cfg.sizes:
                record = cells.get((kind, init, variant, size))
                cols = []
                for measure in ("MAE", "Acc"):
                    for t in TEST_VARIANTS:
                        theirs = paper["cells"].get(f"{kind}/{init}/{variant}/{size}", {}).get(f"{measure}_{t}") if paper else None
                        cols.append(f"{_fmt(_value(record, t, measure))} / {_fmt(theirs)}")
                lines.append(f"| {label} | {INIT_NAMES.get(init, init)} | {size} | " + " | ".join(cols) + " |")
    if paper:
        lines += ["", "## Where our data differs from the paper's", "", paper["data_note"]]
    return "\n".join(lines) + "\n"
