"""How long `minorage scan` takes to replace workers that die: files that each crash their worker
(as a decoder that segfaults on a crafted file would), with the scan's own worker set-up (the
face detector loaded), workers forked from the fork server against workers spawned afresh, side
by side in turn.

    .venv/bin/python benchmarks/workers.py [--crashes 10] [--rounds 2]

Each file that crashes is retried once in a fresh worker, as `scan` does: two replacements a file.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time

from minorage.config import DetectorConfig, ScanConfig
from minorage.triage.workers import Supervisor


def set_up() -> None:
    """The scan's worker set-up: one thread, the face detector at scan's settings."""
    from minorage.triage.scan import _init_worker

    _init_worker(DetectorConfig(min_face_size=ScanConfig.min_face_size, factor=ScanConfig.pyramid_factor), None, ScanConfig())


def crash_on_poison(item: str) -> str:
    if item.startswith("poison"):
        os.kill(os.getpid(), signal.SIGSEGV)
    return item


def seconds(start_method: str, crashes: int) -> tuple[float, int]:
    """Wall seconds for 4 good items, `crashes` crashing ones and 4 good ones, and the workers replaced."""
    pool = Supervisor(ScanConfig.workers or 2, set_up, (), crash_on_poison, in_flight=1, timeout=60,
                      preload=(__name__, "minorage.triage.scan"), start_method=start_method)
    items = [f"good{i}" for i in range(4)] + [f"poison{i}" for i in range(crashes)] + [f"after{i}" for i in range(4)]
    started = time.perf_counter()
    results = dict(pool.imap(items))
    assert all(results[i] == i for i in items if not i.startswith("poison"))
    return time.perf_counter() - started, pool.replaced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crashes", type=int, default=10, help="files that crash their worker")
    parser.add_argument("--rounds", type=int, default=2, help="times each start method is timed, in turn")
    args = parser.parse_args()
    report: dict = {"crashes": args.crashes, "forkserver": [], "spawn": []}
    for _ in range(args.rounds):
        for method in ("forkserver", "spawn"):
            spent, replaced = seconds(method, args.crashes)
            report[method].append({"seconds": round(spent, 2), "workers_replaced": replaced})
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
