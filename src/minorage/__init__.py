"""minorage: age estimation for minors and young adults, robust to eye occlusion.

`from minorage import AgeEstimator` is the Python entry point; it is imported on first use, so
that the command line's light commands (`--help`, `report`, `info` of a case) never load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from minorage.model.estimator import AgeEstimator

__all__ = ["AgeEstimator"]
__version__ = "0.6.9"


def __getattr__(name: str):
    if name == "AgeEstimator":
        from minorage.model.estimator import AgeEstimator

        return AgeEstimator
    raise AttributeError(f"module 'minorage' has no attribute {name!r}")
